//! The store itself (SQLite, or Postgres with CONFAB_TEST_STORE=postgres), under concurrent appends: group commit keeps
//! positions and message numbers gap-free and in order, deduplication holds
//! inside one group, and a refused change rolls back alone.

use confab_protocol::{ErrorCode, EventBody, Member};
use confab_server::store::{AppendOutcome, Store};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// A store in a temporary directory with alice and bob, their direct
/// conversation and a group of the two.
struct Pair {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    a: Uuid,
    b: Uuid,
    direct: Uuid,
    group: Uuid,
}

async fn pair() -> Pair {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = crate::support::store(dir.path()).await;
    let a = store.create_user("alice", "x").await.expect("alice");
    let b = store.create_user("bob", "x").await.expect("bob");
    let member = |user, name: &str| Member { user, username: name.into(), admin: false };
    let (direct, _) = store.open_direct(Uuid::now_v7(), member(a, "alice"), member(b, "bob")).await.expect("direct");
    let group = Uuid::now_v7();
    store.create_group(group, "g", vec![member(a, "alice"), member(b, "bob")], a).await.expect("group");
    Pair { _dir: dir, store, a, b, direct, group }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_group_commit_with_gap_free_positions_deduplication_and_lone_refusals() {
    let Pair { _dir, store, a, b, direct, group } = pair().await;
    let convs = [direct, group];

    // 400 sends from both users to both conversations, 60 repeats of some
    // of them (as a retry after a lost reply), and 30 edits of messages
    // that do not exist, all at once.
    let sends: Vec<(Uuid, Uuid, Uuid)> =
        (0..400).map(|i| (convs[i % 2], if i % 3 == 0 { a } else { b }, Uuid::now_v7())).collect();
    let mut jobs = Vec::new();
    for (i, &(conv, actor, client_id)) in sends.iter().enumerate() {
        let body = EventBody::Message { seq: 0, client_id, text: format!("m{i}"), attachments: vec![] };
        jobs.push((conv, actor, body));
        if i % 7 == 0 {
            jobs.push((
                conv,
                actor,
                EventBody::Message { seq: 0, client_id, text: format!("m{i}"), attachments: vec![] },
            ));
        }
        if i % 13 == 0 {
            jobs.push((conv, actor, EventBody::Edited { seq: 1_000_000 + i as i64, text: "no".into() }));
        }
        if i % 17 == 0 {
            // To a conversation that does not exist: refused, alone.
            let body =
                EventBody::Message { seq: 0, client_id: Uuid::now_v7(), text: "nowhere".into(), attachments: vec![] };
            jobs.push((Uuid::now_v7(), actor, body));
        }
    }
    let total = jobs.len();
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|(conv, actor, body)| {
            let store = store.clone();
            let client_id = match &body {
                EventBody::Message { client_id, .. } => Some(*client_id),
                _ => None,
            };
            tokio::spawn(async move { (conv, client_id, store.append(conv, actor, body).await) })
        })
        .collect();

    let mut seq_of: HashMap<Uuid, i64> = HashMap::new();
    let mut appended_seqs: HashMap<Uuid, Vec<i64>> = HashMap::new();
    let (mut refused, mut duplicates, mut nowhere) = (0, 0, 0);
    for t in tasks {
        let (conv, client_id, result) = t.await.unwrap();
        match (client_id, result) {
            (Some(id), Ok(AppendOutcome::Appended { event, .. })) => {
                let EventBody::Message { seq, .. } = event.body else { panic!("not a message: {event:?}") };
                assert!(seq_of.insert(id, seq).is_none_or(|earlier| earlier == seq), "one client id, two messages");
                appended_seqs.entry(conv).or_default().push(seq);
            }
            (Some(id), Ok(AppendOutcome::Duplicate { seq, .. })) => {
                duplicates += 1;
                assert!(seq_of.insert(id, seq).is_none_or(|earlier| earlier == seq), "a repeat got another number");
            }
            (None, Err(_)) => refused += 1,
            (Some(_), Err(e)) if !convs.contains(&conv) => {
                assert_eq!(e.code, confab_protocol::ErrorCode::NotMember);
                nowhere += 1;
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(seq_of.len(), 400, "every send is stored once");
    assert_eq!(duplicates, 58, "every repeat is recognised"); // i % 7 == 0 for i < 400
    assert_eq!(refused, 31, "every edit of a missing message is refused"); // i % 13 == 0
    assert_eq!(nowhere, 24, "every send to a missing conversation is refused"); // i % 17 == 0
    for conv in convs {
        // Message numbers 1..=n, each once; positions 1..=last, each once.
        let mut seqs = appended_seqs.remove(&conv).unwrap_or_default();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "message numbers of {conv}");
        let page = store.events_after(conv, 0, 500, usize::MAX).await.unwrap();
        let positions: Vec<i64> = page.events.iter().map(|e| e.pos).collect();
        assert_eq!(positions, (1..=page.last_pos).collect::<Vec<_>>());
        // The log orders messages by their numbers, and holds nothing refused.
        let logged: Vec<i64> = page
            .events
            .iter()
            .filter_map(|e| match e.body {
                EventBody::Message { seq, .. } => Some(seq),
                _ => None,
            })
            .collect();
        assert_eq!(logged, (1..=200).collect::<Vec<_>>());
        assert!(page.events.iter().all(|e| matches!(e.body, EventBody::Message { .. } | EventBody::Created { .. })));
    }
    // Grouped: far fewer transactions than appends.
    let commits = store.append_commits();
    assert!(commits < total as u64 / 2, "{commits} transactions for {total} appends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_id_sent_to_two_conversations_at_once_is_stored_once_and_fails_nothing_else() {
    // Both sends can land in one group transaction; the second must be
    // refused alone, not break the unique index and fail everyone's group.
    let Pair { _dir, store, a, b, direct, group } = pair().await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let client_id = Uuid::now_v7();
        for conv in [direct, group] {
            let store = store.clone();
            let body = EventBody::Message { seq: 0, client_id, text: format!("twin {i}"), attachments: vec![] };
            tasks.push(tokio::spawn(async move { (client_id, store.append(conv, a, body).await) }));
        }
        // The same sender's id to a conversation that does not exist and
        // to the group at once: whichever is refused, no position is lost.
        let ghost = Uuid::now_v7();
        for conv in [Uuid::now_v7(), group] {
            let store = store.clone();
            let body = EventBody::Message { seq: 0, client_id: ghost, text: format!("ghost {i}"), attachments: vec![] };
            tasks.push(tokio::spawn(async move { (Uuid::max(), store.append(conv, b, body).await) }));
        }
        // Bob's ordinary sends share the groups.
        let store = store.clone();
        let body =
            EventBody::Message { seq: 0, client_id: Uuid::now_v7(), text: format!("bob {i}"), attachments: vec![] };
        tasks.push(tokio::spawn(async move { (Uuid::nil(), store.append(group, b, body).await) }));
    }
    let mut stored: HashMap<Uuid, usize> = HashMap::new();
    let (mut refused, mut bobs, mut ghosts) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (id, Ok(AppendOutcome::Appended { .. })) if id.is_nil() => bobs += 1,
            (id, Ok(AppendOutcome::Appended { .. })) if id.is_max() => ghosts += 1,
            (id, Err(e)) if id.is_max() => {
                assert!(matches!(e.code, ErrorCode::NotMember | ErrorCode::InvalidRequest), "{e:?}")
            }
            (id, Ok(AppendOutcome::Appended { .. })) => *stored.entry(id).or_default() += 1,
            (id, Err(e)) if !id.is_nil() => {
                assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
                refused += 1;
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(bobs, 100, "nobody else's send failed");
    assert_eq!(stored.len(), 100);
    assert!(stored.values().all(|n| *n == 1), "each client id stored once");
    assert_eq!(refused, 100);
    let logged = |conv| {
        let store = store.clone();
        async move { store.events_after(conv, 0, 500, usize::MAX).await.unwrap().events.len() }
    };
    // Created + every stored message, in the conversation it was stored in.
    assert_eq!(logged(direct).await + logged(group).await, 2 + 200 + ghosts);
    let page = store.events_after(group, 0, 1000, usize::MAX).await.unwrap();
    let positions: Vec<i64> = page.events.iter().map(|e| e.pos).collect();
    assert_eq!(positions, (1..=page.last_pos).collect::<Vec<_>>(), "gap-free, nothing reserved twice");
    let seqs: Vec<i64> = page
        .events
        .iter()
        .filter_map(|e| match e.body {
            EventBody::Message { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert!(store.append_commits() < 300, "the sends were grouped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_commit_together_move_only_forward_and_number_their_versions_without_gaps() {
    use confab_server::store::Mark;
    let dir = tempfile::tempdir().unwrap();
    let store = crate::support::store(dir.path()).await;
    let mut members = Vec::new();
    for i in 0..30 {
        let user = store.create_user(&format!("u{i:02}"), "x").await.unwrap();
        members.push(Member { user, username: format!("u{i:02}"), admin: i == 0 });
    }
    let group = Uuid::now_v7();
    let owner = members[0].user;
    store.create_group(group, "g", members.clone(), owner).await.unwrap();
    for i in 0..10 {
        let body = EventBody::Message { seq: 0, client_id: Uuid::now_v7(), text: format!("m{i}"), attachments: vec![] };
        store.append(group, owner, body).await.unwrap();
    }
    let stranger = store.create_user("stranger", "x").await.unwrap();

    // Every member acknowledges 1..=12 (beyond the newest: clamped) at
    // once, some twice and out of order; a stranger's receipt moves nothing.
    let mut tasks = Vec::new();
    for m in &members {
        for seq in [3, 1, 12, 7] {
            let (store, user) = (store.clone(), m.user);
            tasks.push(tokio::spawn(async move {
                store.mark(vec![Mark { conversation: group, user, delivered: seq, read: 0 }]).await.unwrap()
            }));
        }
    }
    let moved: Vec<_> = futures_util::future::join_all(tasks).await.into_iter().flat_map(|r| r.unwrap()).collect();
    let outsider = store.mark(vec![Mark { conversation: group, user: stranger, delivered: 5, read: 5 }]).await.unwrap();
    assert_eq!(outsider, [None]);

    let mut versions: Vec<i64> = moved.iter().flatten().map(|m| m.version).collect();
    versions.sort();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>(), "one version per change, no gaps");
    assert!(store.append_commits() < 10 + moved.len() as u64, "receipts shared commits");
    for m in moved.iter().flatten() {
        assert!(m.mark.delivered_seq <= 10, "clamped to the newest message");
    }

    // Paged by member with a tiny budget: each member once, in id order.
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = store.watermarks(group, after, 700).await.unwrap();
        assert_eq!(page.version, versions.len() as i64);
        assert!(!page.marks.is_empty() && page.marks.len() <= 7);
        seen.extend(page.marks.iter().copied());
        after = page.marks.last().map(|m| m.user);
        if !page.has_more {
            break;
        }
    }
    let users: Vec<Uuid> = seen.iter().map(|m| m.user).collect();
    let mut sorted: Vec<Uuid> = members.iter().map(|m| m.user).collect();
    sorted.sort();
    assert_eq!(users, sorted);
    assert!(seen.iter().all(|m| m.delivered_seq == 10 && m.read_seq == 0), "{seen:?}");
    // Reading implies delivery.
    let r = store.mark(vec![Mark { conversation: group, user: owner, delivered: 0, read: 4 }]).await.unwrap();
    assert_eq!(r[0].map(|m| (m.mark.delivered_seq, m.mark.read_seq)), Some((10, 4)));
}

#[tokio::test]
async fn a_run_of_messages_in_one_call_repeats_and_foreign_ids_included_gets_one_outcome_each() {
    let Pair { _dir, store, a, b: _, direct, group } = pair().await;
    let msg = |client_id, text: &str| EventBody::Message { seq: 0, client_id, text: text.into(), attachments: vec![] };
    let (before, elsewhere, x, y) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store.append(direct, a, msg(before, "earlier")).await.unwrap();
    store.append(group, a, msg(elsewhere, "in the group")).await.unwrap();
    let bodies = vec![msg(x, "x"), msg(before, "again"), msg(y, "y"), msg(x, "x again"), msg(elsewhere, "moved?")];
    let out = store.append_all(direct, a, bodies).await.unwrap();
    let brief: Vec<String> = out
        .iter()
        .map(|o| match o {
            Ok(AppendOutcome::Appended { event, recipients }) => {
                assert_eq!(recipients.len(), 2);
                format!("new {}", event.pos)
            }
            Ok(AppendOutcome::Duplicate { seq, pos, .. }) => format!("dup {seq}@{pos}"),
            Ok(AppendOutcome::Unchanged) => "unchanged".into(),
            Err(e) => e.code.to_string(),
        })
        .collect();
    // Positions: 1 created, 2 "earlier"; the run takes 3 and 4.
    assert_eq!(brief, ["new 3", "dup 1@2", "new 4", "dup 2@3", "invalid_request"]);
    let page = store.events_after(direct, 0, 100, 1 << 20).await.unwrap();
    let seqs: Vec<i64> = page
        .events
        .iter()
        .filter_map(|e| match e.body {
            EventBody::Message { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!((page.last_pos, seqs), (4, vec![1, 2, 3]));
    // To a conversation that does not exist: refused as one that is not
    // yours (a non-member learns nothing), nothing written.
    let out = store.append_all(Uuid::now_v7(), a, vec![msg(Uuid::now_v7(), "void")]).await.unwrap();
    assert!(matches!(&out[0], Err(e) if e.code == confab_protocol::ErrorCode::NotMember));
    // From someone who is not (or no longer) a member: refused at commit,
    // whatever a node checked before.
    let mallory = store.create_user("mallory", "x").await.unwrap();
    let out = store.append_all(direct, mallory, vec![msg(Uuid::now_v7(), "let me in")]).await.unwrap();
    assert!(matches!(&out[0], Err(e) if e.code == confab_protocol::ErrorCode::NotMember), "{out:?}");
    assert_eq!(store.events_after(direct, 0, 100, 1 << 20).await.unwrap().last_pos, 4, "nothing written");
    // Nor may a non-member change anything else.
    let rename = store.append(group, mallory, EventBody::Renamed { name: "mine now".into() }).await;
    assert!(matches!(&rename, Err(e) if e.code == confab_protocol::ErrorCode::NotMember), "{rename:?}");
    let react = EventBody::Reaction { seq: 1, emoji: "👍".into(), added: true };
    let react = store.append(direct, mallory, react).await;
    assert!(matches!(&react, Err(e) if e.code == confab_protocol::ErrorCode::NotMember), "{react:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_appending_to_one_conversation_at_once_leave_no_gap_and_store_each_send_once() {
    // Two stores on one database, as two server nodes have: each with its
    // own connections and its own group commit. (SQLite allows one writing
    // process; there both "nodes" are the one store.)
    let dir = tempfile::tempdir().expect("temp dir");
    let db = crate::support::database(dir.path()).await;
    let db = db.to_string_lossy();
    let one = confab_server::store::open(&db).await.expect("node 1");
    let two = if crate::support::on_postgres() {
        confab_server::store::open(&db).await.expect("node 2")
    } else {
        one.clone()
    };
    let a = one.create_user("alice", "x").await.expect("alice");
    let b = one.create_user("bob", "x").await.expect("bob");
    let member = |user, name: &str| Member { user, username: name.into(), admin: false };
    let (direct, _) = one.open_direct(Uuid::now_v7(), member(a, "alice"), member(b, "bob")).await.expect("direct");
    let group = Uuid::now_v7();
    two.create_group(group, "g", vec![member(a, "alice"), member(b, "bob")], a).await.expect("group");
    let nodes = [one.clone(), two.clone()];

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Kind {
        Send,
        Twin,
    }
    let msg = |client_id, text: String| EventBody::Message { seq: 0, client_id, text, attachments: vec![] };
    let mut tasks = Vec::new();
    for i in 0..600usize {
        let actor = if i % 3 == 0 { b } else { a };
        let client_id = Uuid::now_v7();
        // Every send goes to one node; every fifth is also retried on the
        // other at once (a client that reconnected elsewhere).
        let copies: &[usize] = if i % 5 == 0 { &[0, 1] } else { &[i % 2] };
        for &n in copies {
            let (store, body) = (nodes[n].clone(), msg(client_id, format!("m{i}")));
            tasks.push(tokio::spawn(async move { (Kind::Send, client_id, store.append(group, actor, body).await) }));
        }
        // Every 25th: one client id sent to two conversations on the two
        // nodes at once; one is stored, the other refused, nobody else fails.
        if i % 25 == 0 {
            let twin = Uuid::now_v7();
            for (n, conv) in [(0, direct), (1, group)] {
                let (store, body) = (nodes[n].clone(), msg(twin, format!("twin {i}")));
                tasks.push(tokio::spawn(async move { (Kind::Twin, twin, store.append(conv, a, body).await) }));
            }
        }
    }
    let mut sends: HashMap<Uuid, (usize, usize)> = HashMap::new();
    let mut twins: HashMap<Uuid, (usize, usize)> = HashMap::new();
    for t in tasks {
        let (kind, id, outcome) = t.await.expect("task");
        let counts = if kind == Kind::Send { &mut sends } else { &mut twins };
        let entry = counts.entry(id).or_default();
        match outcome {
            Ok(AppendOutcome::Appended { .. }) => entry.0 += 1,
            Ok(AppendOutcome::Duplicate { .. }) => entry.1 += 1,
            Err(e) if kind == Kind::Twin && e.code == ErrorCode::InvalidRequest => entry.1 += 1,
            other => panic!("{kind:?} {id}: {other:?}"),
        }
    }
    assert_eq!(sends.len(), 600);
    assert!(sends.values().all(|&(stored, _)| stored == 1), "each send stored exactly once");
    assert_eq!(sends.values().map(|c| c.1).sum::<usize>(), 120, "each retry answered as a duplicate");
    assert!(twins.values().all(|&c| c == (1, 1)), "each twin stored once, refused once: {twins:?}");

    for (conv, node) in [(group, &one), (direct, &two)] {
        let page = node.events_after(conv, 0, 10_000, usize::MAX).await.expect("log");
        let positions: Vec<i64> = page.events.iter().map(|e| e.pos).collect();
        assert_eq!(positions, (1..=page.last_pos).collect::<Vec<_>>(), "gap-free positions");
        let mut ids = Vec::new();
        let mut seqs = Vec::new();
        for e in &page.events {
            if let EventBody::Message { seq, client_id, .. } = &e.body {
                seqs.push(*seq);
                ids.push(*client_id);
            }
        }
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gap-free message numbers");
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "no send logged twice");
        if conv == group {
            let twins_here = ids.iter().filter(|id| twins.contains_key(id)).count();
            assert_eq!(seqs.len(), 600 + twins_here);
        }
    }
}
