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
    let _turn = heavy_turn();
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
    // About 20 s of sending each, so the failures below land mid-stream
    // however loaded the machine is (they are timed from the start of
    // sending, not from what has arrived).
    let begin = std::time::Instant::now();
    let mut a = alice.send_lines_paced(&group, &from_alice, 250);
    let mut c = carol.send_lines_paced(&group, &from_carol, 250);

    // At 5 s node 2 dies: carol's client moves to node 3.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(begin.elapsed()));
    let got = receivers[0].messages().len();
    assert!(got > 0 && got < 10_000, "mid-stream: {got}");
    nodes[1].kill();
    // At 10 s NATS restarts: while it is gone, nodes learn of each other's
    // events from the log.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(begin.elapsed()));
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

/// A raw WebSocket client of one node, speaking the protocol's frames.
struct Ws {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
    seen: Vec<serde_json::Value>,
}

enum Hello {
    Welcome(Box<Ws>),
    Refused(String),
}

impl Ws {
    async fn connect(url: &str, token: &str) -> Hello {
        use futures_util::SinkExt;
        let ws_url = format!("{}/v1/ws", url.replace("http://", "ws://"));
        let (socket, _) = tokio_tungstenite::connect_async(ws_url).await.expect("connect");
        let mut ws = Ws { socket, next: 0, seen: Vec::new() };
        let hello = serde_json::json!({"id": 0, "type": "hello", "token": token, "protocol": 1});
        ws.socket.send(hello.to_string().into()).await.expect("hello");
        let reply = ws.frame(|f| f["id"] == 0).await.expect("a reply to hello");
        if reply["type"] == "result" {
            Hello::Welcome(Box::new(ws))
        } else {
            Hello::Refused(reply["code"].as_str().unwrap_or_default().to_owned())
        }
    }

    async fn welcome(url: &str, token: &str) -> Ws {
        match Ws::connect(url, token).await {
            Hello::Welcome(ws) => *ws,
            Hello::Refused(code) => panic!("refused: {code}"),
        }
    }

    /// The next frame (seen before, or arriving within 15 s) that `pick`
    /// wants; `None` if the socket closes first.
    async fn frame(&mut self, pick: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
        use futures_util::StreamExt;
        if let Some(i) = self.seen.iter().position(&pick) {
            return Some(self.seen.remove(i));
        }
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(15), self.socket.next()).await.expect("a frame in time");
            match msg {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    let f: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON frame");
                    if pick(&f) {
                        return Some(f);
                    }
                    self.seen.push(f);
                }
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c))) => {
                    self.seen.push(serde_json::json!({"type": "closed", "code": c.map(|c| u16::from(c.code))}));
                    return None;
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    }

    async fn ok(&mut self, mut req: serde_json::Value) -> serde_json::Value {
        use futures_util::SinkExt;
        self.next += 1;
        let id = self.next;
        req["id"] = id.into();
        self.socket.send(req.to_string().into()).await.expect("send");
        let reply = self.frame(|f| f["id"] == id).await.expect("a reply");
        assert_eq!(reply["type"], "result", "{reply}");
        reply["result"].clone()
    }
}

fn account(url: &str, path: &str, name: &str) -> String {
    let body = serde_json::json!({"username": name, "password": PASSWORD}).to_string();
    let (status, reply) = http_post(url, path, &body, &["Content-Type: application/json".into()]);
    assert!(status == 200 || status == 201, "{path}: {status} {reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).expect("JSON");
    reply["token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_nodes_presence_typing_the_connection_cap_revocation_and_a_message_sent_while_nats_was_down() {
    if skip_postgres("across_nodes") {
        return;
    }
    let tmp = temp_dir("cluster-ephemeral");
    let db = postgres_database();
    let mut nats = Nats::start();
    let nats_url = nats.url();
    let media = tmp.path().join("media").to_string_lossy().into_owned();
    let args = ["--nats", &nats_url, "--media-dir", &media, "--max-connections", "2", "--drain-seconds", "0"];
    let one = Server::start_on(&tmp.path().join("one"), 0, &db, &args);
    let two = Server::start_on(&tmp.path().join("two"), 0, &db, &args);

    let alice_here = account(&one.url, "/v1/register", "alice");
    let alice_there = account(&two.url, "/v1/login", "alice");
    let bob_token = account(&two.url, "/v1/register", "bob");
    let mut alice = Ws::welcome(&one.url, &alice_here).await;
    let mut bob = Ws::welcome(&two.url, &bob_token).await;
    let conv = alice.ok(serde_json::json!({"type": "open_direct", "username": "bob"})).await;
    let conv = conv["conversation"]["id"].as_str().expect("conversation id").to_owned();

    // Presence: bob, connecting to node 2, sees alice (on node 1) online
    // (nodes tell each other who is connected as it changes).
    let mut online = false;
    for _ in 0..30 {
        let mut bob2 = Ws::welcome(&two.url, &bob_token).await;
        let snapshot = bob2.frame(|f| f["type"] == "presence_list" && f["snapshot"] == true).await.expect("snapshot");
        if snapshot["presence"].as_array().is_some_and(|p| p.len() == 1 && p[0]["online"] == true) {
            online = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(online, "bob never saw alice online across nodes");

    // Typing crosses nodes.
    alice.ok(serde_json::json!({"type": "typing", "conversation": conv})).await;
    let typing = bob.frame(|f| f["type"] == "typing").await.expect("typing");
    assert_eq!(typing["conversation"], conv.as_str());

    // The cap counts connections on every node: alice has one on node 1,
    // so node 2 takes one more and then refuses.
    let mut alice_two = Ws::welcome(&two.url, &alice_there).await;
    let refused = wait_refusal(&two.url, &alice_there).await;
    assert_eq!(refused, "too_many_connections");

    // Revoking her other sessions on node 1 closes her socket on node 2.
    alice.ok(serde_json::json!({"type": "revoke_other_sessions"})).await;
    assert!(alice_two.frame(|f| f["type"] == "never").await.is_none(), "closed");
    assert_eq!(alice_two.seen.last().map(|f| f["code"].clone()), Some(serde_json::json!(4001)));

    // A lone message sent while NATS is down, with nothing after it, and
    // its doorbell gone with the node that wrote it (killed before NATS came
    // back), still reaches bob on node 2 once NATS is back: node 2 reads
    // the log.
    nats.kill();
    // Her new device on node 2 is signed out from node 1 meanwhile: the
    // kick cannot travel, but node 2 finds the session gone in the
    // database within seconds and closes the socket.
    let third = account(&two.url, "/v1/login", "alice");
    let mut alice_three = Ws::welcome(&two.url, &third).await;
    alice.ok(serde_json::json!({"type": "revoke_other_sessions"})).await;
    let sent = alice
        .ok(serde_json::json!({"type": "send", "conversation": conv, "client_id": uuid::Uuid::now_v7(), "text": "while the bus was down"}))
        .await;
    let seq = sent["seq"].clone();
    let mut one = one;
    one.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart();
    let event = bob
        .frame(|f| f["type"] == "event" && f["event"]["body"]["type"] == "message" && f["event"]["body"]["seq"] == seq)
        .await
        .expect("the message arrives");
    assert_eq!(event["event"]["body"]["text"], "while the bus was down");
    let closed = tokio::time::timeout(Duration::from_secs(20), alice_three.frame(|f| f["type"] == "never")).await;
    assert!(matches!(closed, Ok(None)), "the revoked device's socket closed");
    assert_eq!(alice_three.seen.last().map(|f| f["code"].clone()), Some(serde_json::json!(4001)));
}

/// Connects until the node refuses (it learns of connections elsewhere
/// within moments); the code it refuses with.
async fn wait_refusal(url: &str, token: &str) -> String {
    for _ in 0..50 {
        match Ws::connect(url, token).await {
            Hello::Refused(code) => return code,
            Hello::Welcome(ws) => {
                drop(ws);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("never refused");
}

#[test]
fn a_node_told_to_stop_drains_and_its_clients_carry_on_on_another_node() {
    if skip_postgres("a_node_told_to_stop_drains") {
        return;
    }
    let tmp = temp_dir("cluster-drain");
    let db = postgres_database();
    let nats = Nats::start();
    let nats_url = nats.url();
    let media = tmp.path().join("media").to_string_lossy().into_owned();
    let args = |drain: &'static str| {
        vec![
            "--nats".to_owned(),
            nats_url.clone(),
            "--media-dir".into(),
            media.clone(),
            "--drain-seconds".into(),
            drain.into(),
        ]
    };
    let start = |name: &str, drain| {
        let a = args(drain);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        Server::start_on(&tmp.path().join(name), 0, &db, &a)
    };
    let mut one = start("one", "2");
    let two = start("two", "0");
    let front = free_port();
    let _lb = Haproxy::start(tmp.path(), &haproxy_config(&[(front, one.port, two.port)]), &[front]);
    let via = format!("http://127.0.0.1:{front}");
    assert!(wait_until(Duration::from_secs(10), || get(&via, "/v1/ready").0 == 200));

    let alice = Profile::register(tmp.path(), &two.url, "alice");
    let bob = Profile::register(tmp.path(), &via, "bob");
    let conv = alice.ok(&["dm", "bob"]);
    let listener = bob.listen();
    alice.ok(&["send", &conv, "before"]);
    assert!(listener.wait_messages(1, LONG));

    // SIGTERM: node 1 stops being ready at once, stays up for its drain,
    // then closes bob's socket; bob comes back through node 2.
    let one_url = one.url.clone();
    let _ = std::process::Command::new("kill").arg("-TERM").arg(one.pid().to_string()).status();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(get(&one_url, "/v1/ready").0, 503, "a second into its drain: still up, not ready");
    assert!(one.terminate(), "exits 0 after draining");
    alice.ok(&["send", &conv, "after"]);
    assert!(listener.wait_messages(2, LONG), "bob moved to node 2: {:?}", listener.messages());
    let texts: Vec<_> = listener.messages().iter().map(|m| m["text"].clone()).collect();
    assert_eq!(texts, ["before", "after"]);
}
