//! What a hostile member, a large history, a stalled link and a busy user
//! must not break, seen from the devices that show the messages.

use crate::support::*;
use confab_core::{Client, ClientEvent, LinkConfig};
use confab_server::Limits;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A raw WebSocket speaking frames as a hostile client would.
struct Raw {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
}

impl Raw {
    async fn connect(url: &str, username: &str) -> Raw {
        let body = json!({"username": username, "password": PASSWORD});
        let resp: Value = reqwest::Client::new()
            .post(format!("{url}/v1/register"))
            .json(&body)
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("json");
        let token = resp["token"].as_str().expect("token").to_owned();
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("{}/v1/ws", url.replace("http", "ws"))).await.expect("connect");
        let mut raw = Raw { ws, next: 0 };
        raw.req(json!({"type": "hello", "token": token, "protocol": 1})).await;
        raw
    }

    async fn req(&mut self, mut body: Value) -> Value {
        self.next += 1;
        body["id"] = json!(self.next);
        self.ws.send(WsMessage::text(body.to_string())).await.expect("send");
        loop {
            let msg = tokio::time::timeout(T, self.ws.next()).await.expect("reply").expect("open").expect("frame");
            if let WsMessage::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                if v["id"] == self.next {
                    assert_eq!(v["type"], "result", "{v}");
                    return v["result"].clone();
                }
            }
        }
    }
}

#[tokio::test]
async fn another_member_cannot_rewrite_or_hide_your_messages_with_your_client_ids() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let mut mallory = Raw::connect(&w.url, "mallory").await;
    let group = alice.create_group("g", &["bob".into(), "mallory".into()]).await.expect("group");
    let ids = vec![
        alice.send(group, "lunch at noon").await.expect("q"),
        alice.send(group, "see you there").await.expect("q"),
    ];
    alice.wait_sent(&ids).await.expect("sent");
    assert_eq!(texts_when(&bob, group, 2).await, ["lunch at noon", "see you there"]);

    // Mallory reads alice's client ids (they travel in every event) and
    // sends under them: one into the group, one into her DM with bob.
    let dm = mallory.req(json!({"type": "open_direct", "username": "bob"})).await;
    let dm = dm["conversation"]["id"].as_str().expect("dm").to_owned();
    let group_s = group.to_string();
    mallory.req(json!({"type": "send", "conversation": group_s, "client_id": ids[0], "text": "pay IBAN X"})).await;
    mallory.req(json!({"type": "send", "conversation": dm, "client_id": ids[1], "text": "psst"})).await;
    let dm: uuid::Uuid = dm.parse().expect("uuid");

    let check = |c: Arc<Client>| async move {
        let group_view = c.history(group, None, 50).await.expect("history");
        let shown: Vec<(String, String)> = group_view.iter().map(|m| (m.sender_name.clone(), m.text.clone())).collect();
        assert_eq!(
            shown,
            [
                ("alice".to_owned(), "lunch at noon".to_owned()),
                ("alice".to_owned(), "see you there".to_owned()),
                ("mallory".to_owned(), "pay IBAN X".to_owned()),
            ],
            "each message under its real sender, none replaced"
        );
        let dm_view = c.history(dm, None, 50).await.expect("history");
        assert_eq!(dm_view.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["psst"]);
        // Views key on the local id, which stays unique.
        let mut keys: Vec<i64> = group_view.iter().chain(&dm_view).map(|m| m.id).collect();
        keys.dedup();
        assert_eq!(keys.len(), 4);
        assert!(group_view.iter().filter(|m| m.sender_name != "bob").all(|m| m.client_id.is_none()));
    };
    // Bob's device, live.
    let bob = Arc::new(bob);
    texts_when(&bob, dm, 1).await;
    texts_when(&bob, group, 3).await;
    check(bob.clone()).await;
    // A freshly signed-in device of bob's, from the server's log.
    let fresh = w.client("bob-fresh").await;
    fresh.login(&w.url, "bob", PASSWORD).await.expect("login");
    start_synced(&fresh).await;
    let fresh = Arc::new(fresh);
    check(fresh.clone()).await;
    // And alice's own messages are still hers, sent, with their ids.
    let own = alice.history(group, None, 50).await.expect("history");
    assert_eq!(own.iter().filter(|m| m.client_id.is_some()).count(), 2);
}

#[tokio::test]
async fn a_fresh_device_syncs_150_maximum_size_emoji_messages() {
    let mut w = World::new().await;
    let alice = w.user("alice").await;
    let _bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    let text = "😀".repeat(confab_protocol::MAX_MESSAGE_CHARS);
    let mut ids = Vec::new();
    for _ in 0..150 {
        ids.push(alice.send(conv, &text).await.expect("q"));
    }
    alice.wait_sent(&ids).await.expect("sent");
    let fresh = w.client("bob-fresh").await;
    fresh.login(&w.url, "bob", PASSWORD).await.expect("login");
    start_synced(&fresh).await;
    // Offline: what the first sync put in the cache, nothing fetched later.
    w.stop_server().await;
    let cached = fresh.history(conv, None, 500).await.expect("history");
    assert_eq!(cached.len(), 150);
    assert!(cached.iter().all(|m| m.text == text && m.sender_name == "alice"));
}

/// A loopback TCP proxy whose server-to-client direction can be shut: while
/// shut it reads nothing from the server, so the server's writes back up
/// and stall, as on a mobile link that stops draining.
struct Valve {
    addr: std::net::SocketAddr,
    open: tokio::sync::watch::Sender<bool>,
}

impl Valve {
    async fn start(target: std::net::SocketAddr) -> Valve {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (open, _) = tokio::sync::watch::channel(true);
        let gate = open.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                // A small window, so a few megabytes stall the server.
                let _ = socket.set_recv_buffer_size(4096);
                let Ok(outbound) = socket.connect(target).await else { continue };
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut ri, &mut wo).await;
                });
                let mut gate = gate.subscribe();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 4096];
                    loop {
                        if gate.wait_for(|open| *open).await.is_err() {
                            return;
                        }
                        let n = match ro.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if wi.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Valve { addr, open }
    }

    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }
}

#[tokio::test]
async fn a_stalled_writer_ends_the_connection_and_the_device_reconnects_and_gets_everything() {
    let w = World::with_limits(Limits {
        requests_per_sec: 100_000,
        request_burst: 100_000,
        write_timeout: Duration::from_millis(500),
        ..Limits::default()
    })
    .await;
    let alice = w.user("alice").await;
    let bob_plain = w.user("bob").await;
    bob_plain.stop().await;
    let conv = alice.open_direct("bob").await.expect("dm");
    // Bob's device reaches the server through the valve.
    let valve = Valve::start(w.server.as_ref().expect("server").addr).await;
    // Slow to give up on its own, so what is checked is the server.
    let config = LinkConfig {
        ping_interval: Duration::from_millis(500),
        dead_after: Duration::from_secs(10),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        ..LinkConfig::default()
    };
    let bob = Client::open(&w.profile("bob-valve")).await.expect("profile").with_link_config(config);
    bob.login(&format!("http://{}", valve.addr), "bob", PASSWORD).await.expect("login");
    start_synced(&bob).await;

    valve.set(false);
    let text = "😀".repeat(confab_protocol::MAX_MESSAGE_CHARS);
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(alice.send(conv, &text).await.expect("q"));
    }
    alice.wait_sent(&ids).await.expect("sent");
    // The server's write times out; it must then drop the connection at
    // once (not keep a deaf one registered, dropping events into a queue
    // nobody drains).
    let me = bob.session().await.expect("session").expect("signed in").user;
    let hub = &w.server.as_ref().expect("server").state.service.hub;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.is_online(me) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!hub.is_online(me), "the stalled connection was closed and unregistered");
    valve.set(true);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(alice.send(conv, &format!("after {i}")).await.expect("q"));
    }
    alice.wait_sent(&ids).await.expect("sent");
    let got = texts_when(&bob, conv, 205).await;
    assert_eq!(got.len(), 205);
    assert_eq!(got[200..], ["after 0", "after 1", "after 2", "after 3", "after 4"]);
}

/// Creates `n` groups of `owner` and `member` straight in the server's
/// store (setup, not the behaviour under test).
async fn groups(w: &World, owner: &str, member: &str, n: usize) {
    let store = &w.server.as_ref().expect("server").state.service.store;
    let owner_id = store.user_by_name(owner).await.expect("store").expect("owner");
    let member_id = store.user_by_name(member).await.expect("store").expect("member");
    for i in 0..n {
        let members = vec![
            confab_protocol::Member { user: owner_id, username: owner.into(), admin: true },
            confab_protocol::Member { user: member_id, username: member.into(), admin: false },
        ];
        store.create_group(uuid::Uuid::now_v7(), &format!("group {i}"), members, owner_id).await.expect("group");
    }
}

async fn fresh_device_syncs_conversations_under_default_limits(n: usize) {
    let mut w = World::with_limits(Limits::default()).await;
    let _alice = w.user("alice").await;
    let _bob = w.user("bob").await;
    groups(&w, "alice", "bob", n).await;

    let fresh = w.client("bob-fresh").await;
    fresh.login(&w.url, "bob", PASSWORD).await.expect("login");
    start_synced(&fresh).await;
    let listed = fresh.conversations().await.expect("list");
    assert_eq!(listed.len(), n, "every conversation after the first sync");
    assert!(listed.iter().all(|c| c.title.starts_with("group ") && c.members.len() == 2));
    let first_sync = fresh.requests_sent().await.expect("count");
    assert!(first_sync < 30, "{first_sync} requests for {n} conversations");

    // A reconnect with nothing new: one round trip.
    let mut events = fresh.subscribe();
    w.restart_server().await;
    wait_for(&mut events, |e| matches!(e, ClientEvent::SyncCompleted)).await;
    assert_eq!(fresh.requests_sent().await.expect("count") - first_sync, 1, "one sync request, nothing else");
}

#[tokio::test]
async fn a_fresh_device_in_300_conversations_syncs_under_default_rate_limits() {
    fresh_device_syncs_conversations_under_default_limits(300).await;
}

#[tokio::test]
async fn a_fresh_device_in_1000_conversations_syncs_under_default_rate_limits() {
    fresh_device_syncs_conversations_under_default_limits(1000).await;
}

#[tokio::test]
async fn coming_back_to_many_messages_is_one_summary_per_conversation() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let carol = w.user("carol").await;
    let bob = w.user("bob").await;
    let with_alice = alice.open_direct("bob").await.expect("dm");
    let with_carol = carol.open_direct("bob").await.expect("dm");
    bob.stop().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(alice.send(with_alice, &format!("a{i}")).await.expect("q"));
    }
    alice.wait_sent(&ids).await.expect("sent");
    let ids = vec![carol.send(with_carol, "c0").await.expect("q"), carol.send(with_carol, "c1").await.expect("q")];
    carol.wait_sent(&ids).await.expect("sent");

    let mut events = bob.subscribe();
    bob.start().await.expect("start");
    let mut live_added = 0;
    let mut caught_up = 0;
    let mut summaries = Vec::new();
    tokio::time::timeout(T, async {
        loop {
            match events.recv().await.expect("event") {
                ClientEvent::MessageAdded { live: true, .. } => live_added += 1,
                ClientEvent::MessageAdded { live: false, .. } => caught_up += 1,
                ClientEvent::MissedMessages { conversation, count, senders, latest } => {
                    summaries.push((conversation, count, senders, latest.text))
                }
                ClientEvent::SyncCompleted => return,
                _ => {}
            }
        }
    })
    .await
    .expect("sync completes");
    // The summaries follow the sync's last step.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(e) = events.try_recv() {
        if let ClientEvent::MissedMessages { conversation, count, senders, latest } = e {
            summaries.push((conversation, count, senders, latest.text));
        }
    }
    assert_eq!((live_added, caught_up), (0, 32));
    summaries.sort_by_key(|s| s.1);
    assert_eq!(
        summaries,
        [
            (with_carol, 2, vec!["carol".to_owned()], "c1".to_owned()),
            (with_alice, 30, vec!["alice".to_owned()], "a29".to_owned()),
        ]
    );
    // The list shows the same: unread counts and the newest message.
    let list = bob.conversations().await.expect("list");
    let row = |id| list.iter().find(|c| c.id == id).expect("listed");
    assert_eq!(
        (row(with_alice).unread, row(with_alice).last_message.as_ref().map(|m| m.text.as_str())),
        (30, Some("a29"))
    );
    assert_eq!((row(with_carol).unread, row(with_carol).title.as_str()), (2, "carol"));
    assert_eq!(list[0].id, with_carol, "most recent activity first");
    // Back to live: one message, one live event, no summary.
    let ids = vec![alice.send(with_alice, "live one").await.expect("q")];
    alice.wait_sent(&ids).await.expect("sent");
    let e = wait_for(&mut events, |e| matches!(e, ClientEvent::MessageAdded { .. })).await;
    assert!(matches!(e, ClientEvent::MessageAdded { live: true, .. }), "{e:?}");
}
