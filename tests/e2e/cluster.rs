//! Scale-out: three `confab-server` nodes on one Postgres database, fanning
//! out through one NATS, behind HAProxy, all real processes on loopback.

use confab_tests::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(240);

/// An HAProxy frontend per node, each sending its clients to that node
/// while it is ready and to `backup` otherwise (so the test knows who is
/// where, and a node's clients move when it dies). Settings as in
/// `docs/deploy.md`.
fn haproxy_config(fronts: &[(u16, u16, u16)]) -> String {
    let mut cfg = String::from(
        "global\n    maxconn 4096\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 90s\n    timeout server 90s\n\
         \x20   timeout tunnel 1h\n    default-server inter 200ms fall 2 rise 2\n",
    );
    for (i, (front, primary, backup)) in fronts.iter().enumerate() {
        cfg += &format!(
            "frontend f{i}\n    bind 127.0.0.1:{front}\n    http-request deny if {{ path /metrics }}\n    default_backend b{i}\n\
             backend b{i}\n    option httpchk GET /v1/ready\n\
             \x20   server primary 127.0.0.1:{primary} check\n    server backup 127.0.0.1:{backup} check backup\n"
        );
    }
    cfg
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i:05}")).collect()
}

fn get(url: &str, path: &str) -> (u16, String) {
    let url = url.trim_start_matches("http://");
    let (host, port) = url.split_once(':').expect("host:port");
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((host, port.parse::<u16>().expect("port"))).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, resp)
}

#[test]
fn three_nodes_deliver_10000_messages_once_and_in_order_through_a_node_kill_and_a_nats_restart() {
    if skip_postgres("three_nodes_deliver") {
        return;
    }
    let tmp = temp_dir("cluster");
    let db = postgres_database();
    let mut nats = Nats::start();
    let nats_url = nats.url();
    let media = tmp.path().join("media").to_string_lossy().into_owned();
    let args = [
        "--rate-limit",
        "1000000",
        "--rate-burst",
        "1000000",
        "--nats",
        &nats_url,
        "--media-dir",
        &media,
        "--drain-seconds",
        "0",
    ];
    let mut nodes: Vec<Server> =
        (1..=3).map(|i| Server::start_on(&tmp.path().join(format!("node{i}")), 0, &db, &args)).collect();
    let port = |i: usize| nodes[i].port;
    // Node i's clients come in through frontend i.
    let fronts: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _lb = Haproxy::start(
        tmp.path(),
        &haproxy_config(&[(fronts[0], port(0), port(1)), (fronts[1], port(1), port(2)), (fronts[2], port(2), port(0))]),
        &fronts,
    );
    let via = |i: usize| format!("http://127.0.0.1:{}", fronts[i]);
    for i in 0..3 {
        assert!(wait_until(Duration::from_secs(10), || get(&via(i), "/v1/ready").0 == 200), "node {i} ready");
    }

    // Senders on nodes 1 and 2, receivers on nodes 3 and 1.
    let alice = Profile::register(tmp.path(), &via(0), "alice");
    let carol = Profile::register(tmp.path(), &via(1), "carol");
    let bob = Profile::register(tmp.path(), &via(2), "bob");
    let dave = Profile::register(tmp.path(), &via(0), "dave");
    let group = alice.ok(&["group", "create", "many", "bob", "carol", "dave"]);
    let receivers = [bob.listen(), dave.listen()];

    let from_alice = texts("alice", 5000);
    let from_carol = texts("carol", 5000);
    // About 20 s of sending, so the failures below land mid-stream.
    let mut a = alice.send_lines_paced(&group, &from_alice, 250);
    let mut c = carol.send_lines_paced(&group, &from_carol, 250);

    // Mid-stream, node 2 dies: carol's client moves to node 3.
    assert!(receivers[0].wait_messages(3000, LONG), "stalled at {}", receivers[0].messages().len());
    nodes[1].kill();
    // Later, NATS restarts: while it is gone, nodes learn of each other's
    // events from the log.
    assert!(receivers[0].wait_messages(6000, LONG), "stalled at {}", receivers[0].messages().len());
    nats.kill();
    std::thread::sleep(Duration::from_millis(1500));
    nats.restart();

    assert!(wait_child(&mut a, LONG).success(), "alice's send exits 0 once all are accepted");
    assert!(wait_child(&mut c, LONG).success(), "carol's send exits 0 once all are accepted");
    for (name, r) in ["bob", "dave"].iter().zip(&receivers) {
        assert!(r.wait_messages(10_000, LONG), "{name} got {}", r.messages().len());
    }
    // A duplicate gets the chance to show up before judging.
    std::thread::sleep(Duration::from_secs(1));
    for (name, r) in ["bob", "dave"].iter().zip(&receivers) {
        let live = r.messages();
        assert_eq!(live.len(), 10_000, "{name}: each message exactly once");
        let of = |who: &str| -> Vec<String> {
            live.iter().filter(|m| m["sender"] == who).map(|m| m["text"].as_str().expect("text").to_owned()).collect()
        };
        assert_exactly_once_in_order(&of("alice"), &from_alice);
        assert_exactly_once_in_order(&of("carol"), &from_carol);
        let arrival: Vec<i64> = live.iter().map(|m| m["seq"].as_i64().expect("seq")).collect();
        assert_eq!(arrival, (1..=10_000).collect::<Vec<_>>(), "{name}: gap-free, in the conversation's order");
    }

    // The survivors report themselves ready and count what they did (node
    // 3 took carol's sends after node 2 died); the load balancer does not
    // hand out metrics.
    for i in [0, 2] {
        let url = format!("http://127.0.0.1:{}", nodes[i].port);
        assert_eq!(get(&url, "/v1/ready").0, 200);
        let (status, metrics) = get(&url, "/metrics");
        assert_eq!(status, 200);
        for name in ["confab_messages_total", "confab_connections", "confab_nats_connected 1", "confab_commit_seconds"]
        {
            assert!(metrics.contains(name), "node {i} /metrics lacks {name}");
        }
    }
    assert_eq!(get(&via(0), "/metrics").0, 403);
}
