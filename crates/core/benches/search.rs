//! Offline search over a big cache: 100,000 messages in 200 conversations,
//! searched with the FTS5 index (as `Client::search` does) and, for
//! scale, with a plain `LIKE` scan of the same table.
//!
//! Run with `cargo bench -p confab-core --bench search`. Target (issue 12):
//! under 50 ms per search over 100,000 cached messages.

use confab_core::cache::Cache;
use confab_protocol::Message;
use std::time::{Duration, Instant};

const MESSAGES: usize = 100_000;
const CONVERSATIONS: usize = 200;
const RUNS: usize = 40;

/// Words of everyday chat, and a few rare ones to find.
const COMMON: &[&str] = &[
    "the", "a", "to", "and", "you", "i", "is", "it", "that", "of", "in", "for", "on", "we", "are", "have", "be", "at",
    "with", "this", "so", "but", "can", "just", "what", "not", "do", "will", "get", "see", "now", "all", "going",
    "tomorrow", "tonight", "meeting", "lunch", "dinner", "later", "call", "home", "work", "today", "time", "good",
    "great", "thanks", "okay", "yes", "no", "maybe", "soon", "train", "coffee", "weekend", "photo", "movie", "party",
    "birthday", "office", "project", "deadline", "review", "budget", "plan", "trip", "ticket", "hotel",
];

fn sentence(rng: &mut u64, i: usize) -> String {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let n = 4 + (next() % 18) as usize;
    let mut words: Vec<String> = (0..n).map(|_| COMMON[(next() % COMMON.len() as u64) as usize].to_owned()).collect();
    // One message in a thousand mentions something rare.
    if i % 1000 == 7 {
        words.push("kumquat".into());
    }
    if i % 97 == 3 {
        words.push(format!("invoice{}", i % 500));
    }
    words.join(" ")
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 95 / 100])
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open(&dir.path().join("cache.db")).await.expect("cache");
    let me = uuid::Uuid::now_v7();
    let others: Vec<uuid::Uuid> = (0..20).map(|_| uuid::Uuid::now_v7()).collect();
    let convs: Vec<uuid::Uuid> = (0..CONVERSATIONS).map(|_| uuid::Uuid::now_v7()).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let started = Instant::now();
    let per = MESSAGES / CONVERSATIONS;
    for (c, conv) in convs.iter().enumerate() {
        let messages: Vec<Message> = (0..per)
            .map(|k| {
                let i = c * per + k;
                Message {
                    conversation: *conv,
                    seq: k as i64 + 1,
                    pos: k as i64 + 2,
                    client_id: uuid::Uuid::now_v7(),
                    sender: if k % 3 == 0 { me } else { others[i % others.len()] },
                    text: sentence(&mut rng, i),
                    attachments: vec![],
                    ts: 1_700_000_000_000 + i as i64 * 1000,
                    edited_at: None,
                    deleted: false,
                    pinned: false,
                    reactions: vec![],
                    call: None,
                }
            })
            .collect();
        cache.store_history(me, *conv, &messages).await.expect("store");
    }
    println!("cache of {MESSAGES} messages in {CONVERSATIONS} conversations built in {:.1?}", started.elapsed());
    println!();
    println!("{:<34} {:>7} {:>12} {:>12} {:>12} {:>8}", "query", "hits", "fts p50", "fts p95", "LIKE p50", "ratio");
    let queries: &[(&str, Option<uuid::Uuid>)] = &[
        ("kumquat", None),
        ("invoice42", None),
        ("coffee", None),
        ("coffee tomorrow", None),
        ("birth", None),
        ("the", None),
        ("coffee", Some(convs[17])),
    ];
    let mut worst = Duration::ZERO;
    for (q, conv) in queries {
        let mut fts = Vec::with_capacity(RUNS);
        let mut hits = 0;
        for _ in 0..RUNS {
            let t = Instant::now();
            hits = cache.search(q, *conv, None, 50).await.expect("search").len();
            fts.push(t.elapsed());
        }
        let mut like = Vec::with_capacity(RUNS / 4);
        for _ in 0..RUNS / 4 {
            let t = Instant::now();
            cache.search_by_scan(q, *conv, 50).await.expect("scan");
            like.push(t.elapsed());
        }
        let (p50, p95) = median(fts);
        let (l50, _) = median(like);
        worst = worst.max(p95);
        let label = if conv.is_some() { format!("{q:?} in one conversation") } else { format!("{q:?}") };
        println!(
            "{label:<34} {hits:>7} {:>12.2?} {:>12.2?} {:>12.2?} {:>7.0}×",
            p50,
            p95,
            l50,
            l50.as_secs_f64() / p50.as_secs_f64().max(1e-9)
        );
    }
    println!();
    println!(
        "worst p95 {worst:.2?} (target < 50 ms): {}",
        if worst < Duration::from_millis(50) { "met" } else { "NOT met" }
    );
}
