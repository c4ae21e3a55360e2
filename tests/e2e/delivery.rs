//! Exactly-once, in-order delivery through offline peers, a server killed
//! with SIGKILL, and a client killed with messages in its outbox.

use confab_tests::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(180);

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i:05}")).collect()
}

fn message_texts(messages: &[serde_json::Value]) -> Vec<String> {
    messages.iter().map(|m| m["text"].as_str().expect("text").to_owned()).collect()
}

/// Seqs of a conversation's messages must be exactly 1..=n.
fn assert_gap_free(messages: &[serde_json::Value]) {
    let seqs: Vec<i64> = messages.iter().map(|m| m["seq"].as_i64().expect("seq")).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "seqs are not 1..=n in order");
}

#[test]
fn recipient_offline_gets_all_500_messages_in_order_once() {
    let tmp = temp_dir("offline-recipient");
    let server = Server::start(&tmp.path().join("server"));
    let alice = Profile::register(tmp.path(), &server.url, "alice");
    let bob = Profile::register(tmp.path(), &server.url, "bob");
    let conv = alice.ok(&["dm", "bob"]);

    // Bob is online once (so his device knows the conversation), then leaves.
    let mut listener = bob.listen();
    alice.ok(&["send", &conv, "before"]);
    assert!(listener.wait_messages(1, LONG));
    listener.kill();

    let sent = texts("offline", 500);
    let mut send = alice.send_lines(&conv, &sent);
    assert!(wait_child(&mut send, LONG).success());

    let listener = bob.listen();
    assert!(listener.wait_messages(500, LONG), "got {}", listener.messages().len());
    // Give a duplicate the chance to show up before judging.
    std::thread::sleep(Duration::from_millis(500));
    let got = listener.messages();
    assert_eq!(got.len(), 500, "each message exactly once");
    assert_exactly_once_in_order(&message_texts(&got), &sent);
    assert!(got.iter().all(|m| m["sender"] == "alice" && m["conversation"] == conv.as_str()));
    let seqs: Vec<i64> = got.iter().map(|m| m["seq"].as_i64().expect("seq")).collect();
    assert_eq!(seqs, (2..=501).collect::<Vec<_>>());
}

#[test]
fn sender_offline_200_composed_while_server_down_arrive_in_order_once() {
    let tmp = temp_dir("offline-sender");
    let mut server = Server::start(&tmp.path().join("server"));
    let alice = Profile::register(tmp.path(), &server.url, "alice");
    let bob = Profile::register(tmp.path(), &server.url, "bob");
    let conv = alice.ok(&["dm", "bob"]);
    assert!(server.terminate(), "graceful stop exits 0");

    let sent = texts("composed-offline", 200);
    let mut send = alice.send_lines(&conv, &sent);
    // While the server is down, `send` keeps retrying rather than giving up.
    std::thread::sleep(Duration::from_secs(3));
    assert!(send.try_wait().expect("try_wait").is_none(), "send must wait for the server");

    server.restart();
    assert!(wait_child(&mut send, LONG).success());

    let history = bob.history(&conv, 1000);
    assert_exactly_once_in_order(&message_texts(&history), &sent);
    assert_eq!(history.len(), 200);
    assert_gap_free(&history);
}

#[test]
fn server_killed_twice_mid_stream_loses_and_duplicates_nothing() {
    let tmp = temp_dir("sigkill");
    let mut server = Server::start(&tmp.path().join("server"));
    let alice = Profile::register(tmp.path(), &server.url, "alice");
    let bob = Profile::register(tmp.path(), &server.url, "bob");
    let carol = Profile::register(tmp.path(), &server.url, "carol");
    let group = alice.ok(&["group", "create", "stream", "bob", "carol"]);
    let listener = bob.listen();

    let from_alice = texts("alice", 1500);
    let from_carol = texts("carol", 1500);
    let mut a = alice.send_lines(&group, &from_alice);
    let mut c = carol.send_lines(&group, &from_carol);

    for round in 1..=2 {
        let target = round * 600;
        assert!(listener.wait_messages(target, LONG), "round {round}: stream stalled at {}", listener.messages().len());
        server.kill();
        std::thread::sleep(Duration::from_millis(300));
        server.restart();
    }
    assert!(wait_child(&mut a, LONG).success(), "alice's send exits 0 once all are accepted");
    assert!(wait_child(&mut c, LONG).success(), "carol's send exits 0 once all are accepted");
    assert!(listener.wait_messages(3000, LONG), "bob got {}", listener.messages().len());
    std::thread::sleep(Duration::from_millis(500));

    // Live delivery: each message once, each sender's order kept.
    let live = listener.messages();
    assert_eq!(live.len(), 3000);
    let of = |who: &str| -> Vec<String> {
        message_texts(&live.iter().filter(|m| m["sender"] == who).cloned().collect::<Vec<_>>())
    };
    assert_exactly_once_in_order(&of("alice"), &from_alice);
    assert_exactly_once_in_order(&of("carol"), &from_carol);
    let mut seqs: Vec<i64> = live.iter().map(|m| m["seq"].as_i64().expect("seq")).collect();
    let arrival = seqs.clone();
    seqs.sort_unstable();
    assert_eq!(arrival, seqs, "delivered in seq order");
    assert_eq!(seqs, (1..=3000).collect::<Vec<_>>(), "gap-free");

    // Stored: the server's history agrees (fetched on a fresh device).
    let fresh = Profile::new(&tmp.path().join("fresh"), &server.url, "bob");
    fresh.ok(&["login", "bob"]);
    let stored = fresh.history(&group, 5000);
    assert_eq!(stored.len(), 3000);
    assert_gap_free(&stored);
}

#[test]
fn client_killed_with_a_full_outbox_sends_everything_once_on_the_next_run() {
    let tmp = temp_dir("client-kill");
    let mut server = Server::start(&tmp.path().join("server"));
    let alice = Profile::register(tmp.path(), &server.url, "alice");
    let bob = Profile::register(tmp.path(), &server.url, "bob");
    let conv = alice.ok(&["dm", "bob"]);
    assert!(server.terminate());

    // Queue 300 while offline, then kill the process outright.
    let sent = texts("queued", 300);
    let mut send = alice.send_lines(&conv, &sent);
    let outbox = |p: &Profile| -> i64 {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let cache = confab_core::cache::Cache::open(&p.dir.join("cache.db")).await.expect("cache");
            cache.outbox_len().await.expect("outbox")
        })
    };
    assert!(wait_until(LONG, || outbox(&alice) == 300), "all 300 persisted before the kill");
    send.kill().expect("kill");
    send.wait().expect("reap");

    // Server back; a new run starts sending the outbox. Kill that one too,
    // mid-stream, so some replies are surely lost.
    server.restart();
    let listener = bob.listen();
    let mut second = alice.send_lines(&conv, &["second run".to_owned()]);
    assert!(listener.wait_messages(100, LONG));
    second.kill().expect("kill");
    second.wait().expect("reap");

    let mut third = alice.send_lines(&conv, &["third run".to_owned()]);
    assert!(wait_child(&mut third, LONG).success());
    let mut expected = sent.clone();
    expected.push("second run".into());
    expected.push("third run".into());
    assert!(listener.wait_messages(302, LONG), "bob got {}", listener.messages().len());
    std::thread::sleep(Duration::from_millis(500));
    let got = listener.messages();
    assert_eq!(got.len(), 302);
    assert_exactly_once_in_order(&message_texts(&got), &expected);
    assert_eq!(outbox(&alice), 0);
}

/// The load benchmark's smoke run (CI runs only this; the benchmark itself
/// is `scripts/bench-load`): the real generator against the real server,
/// with every receiver dropping out for 0.3 s in turn and
/// resuming. Every message reaches every receiver once.
#[test]
fn the_load_generator_delivers_everything_under_churn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(
        dir.path(),
        0,
        &["--rate-limit", "1000", "--rate-burst", "2000", "--accounts-per-hour", "1000000"],
    );
    let out = std::process::Command::new(bin("confab-loadgen"))
        .args(["--target", "confab", "--url", &server.url, "--connections", "30", "--group", "10"])
        .args(["--rate", "60", "--seconds", "3", "--drain", "10", "--churn", "--churn-every", "1"])
        .args(["--churn-down-ms", "300", "--server-pid", &server.pid().to_string()])
        .output()
        .expect("run confab-loadgen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert!(report["sent"].as_u64() >= Some(150), "{report}");
    assert_eq!(report["delivered"], report["expected"], "{report}");
    assert_eq!(report["send_errors"], 0, "{report}");
    assert!(report["reconnects"].as_u64() >= Some(27), "every receiver dropped out at least once: {report}");
}
