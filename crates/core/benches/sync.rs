//! What syncing costs a device, by number of conversations, under the
//! server's default rate limits, on loopback with an in-process server:
//! a fresh device's first sync, a reconnect with nothing new, and — for
//! scale — the old way (one `events` request per conversation).
//!
//! Run with `cargo bench -p confab-core --bench sync`. Targets (issue 7): a
//! fresh device in 1,000 conversations syncs in under 5 s; a reconnect with
//! nothing new is one request.

use confab_core::{Client, ClientEvent};
use confab_protocol::Member;
use confab_server::{Config, Limits};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

async fn synced(client: &Client, events: &mut tokio::sync::broadcast::Receiver<ClientEvent>) {
    tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            if let Ok(ClientEvent::SyncCompleted) = events.recv().await {
                return;
            }
        }
    })
    .await
    .expect("sync completes");
    let _ = client;
}

struct Row {
    conversations: usize,
    first_sync: Duration,
    first_requests: u64,
    reconnect: Duration,
    reconnect_requests: u64,
    per_conversation: Duration,
    list: Duration,
}

async fn measure(n: usize) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("server.db");
    let server =
        confab_server::start(Config::new("127.0.0.1:0".parse().expect("addr"), db.clone())).await.expect("server");
    let url = format!("http://{}", server.addr);
    let alice = Client::open(&dir.path().join("alice")).await.expect("profile");
    alice.register(&url, "alice", PASSWORD).await.expect("register");
    let bob = Client::open(&dir.path().join("bob")).await.expect("profile");
    bob.register(&url, "bob", PASSWORD).await.expect("register");
    // Setup straight in the store: n groups of alice and bob.
    let store = &server.state.service.store;
    let a = alice.session().await.expect("s").expect("s").user;
    let b = bob.session().await.expect("s").expect("s").user;
    for i in 0..n {
        let members = vec![
            Member { user: a, username: "alice".into(), admin: true },
            Member { user: b, username: "bob".into(), admin: false },
        ];
        store.create_group(uuid::Uuid::now_v7(), &format!("g{i}"), members, a).await.expect("group");
    }

    let mut events = bob.subscribe();
    let started = Instant::now();
    bob.start().await.expect("start");
    synced(&bob, &mut events).await;
    let first_sync = started.elapsed();
    let first_requests = bob.requests_sent().await.expect("count");
    let started = Instant::now();
    assert_eq!(bob.conversations().await.expect("list").len(), n);
    let list = started.elapsed();

    // Reconnect with nothing new: stop and start the client.
    bob.stop().await;
    let mut events = bob.subscribe();
    let started = Instant::now();
    bob.start().await.expect("start");
    synced(&bob, &mut events).await;
    let reconnect = started.elapsed();
    let reconnect_requests = bob.requests_sent().await.expect("count");

    // The old way: one `events` request per conversation, sequentially,
    // honouring rate_limited.
    let fresh = Client::open(&dir.path().join("alice2")).await.expect("profile");
    fresh.login(&url, "alice", PASSWORD).await.expect("login");
    let token = fresh.session().await.expect("s").expect("s").token;
    let per_conversation = old_way(&url, &token, store, a).await;
    server.shutdown().await;
    Row { conversations: n, first_sync, first_requests, reconnect, reconnect_requests, per_conversation, list }
}

async fn old_way(
    url: &str,
    token: &str,
    store: &std::sync::Arc<dyn confab_server::store::Store>,
    user: uuid::Uuid,
) -> Duration {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let heads = store.heads(user).await.expect("heads");
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/v1/ws", url.replace("http", "ws"))).await.expect("ws");
    let hello = serde_json::json!({"id": 0, "type": "hello", "token": token, "protocol": 1});
    ws.send(Message::text(hello.to_string())).await.expect("hello");
    let started = Instant::now();
    let mut id = 0u64;
    for head in heads {
        loop {
            id += 1;
            let req =
                serde_json::json!({"id": id, "type": "events", "conversation": head.id, "after": 0, "limit": 500});
            ws.send(Message::text(req.to_string())).await.expect("send");
            let reply = loop {
                let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("socket closed") };
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                if v["id"] == id {
                    break v;
                }
            };
            if reply["code"] == "rate_limited" {
                let ms = reply["retry_after_ms"].as_u64().unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
            break;
        }
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let defaults = Limits::default();
    println!(
        "sync cost under default limits ({} requests/s, burst {}), loopback, in-process server\n",
        defaults.requests_per_sec, defaults.request_burst
    );
    println!(
        "{:>13} | {:>14} | {:>8} | {:>13} | {:>8} | {:>26} | {:>6} | {:>12}",
        "conversations",
        "first sync",
        "requests",
        "reconnect",
        "requests",
        "old way: 1 request/conv",
        "ratio",
        "list view"
    );
    for n in [100, 300, 1000] {
        let r = measure(n).await;
        println!(
            "{:>13} | {:>11.0} ms | {:>8} | {:>10.1} ms | {:>8} | {:>23.0} ms | {:>5.1}x | {:>9.1} ms",
            r.conversations,
            r.first_sync.as_secs_f64() * 1000.0,
            r.first_requests,
            r.reconnect.as_secs_f64() * 1000.0,
            r.reconnect_requests,
            r.per_conversation.as_secs_f64() * 1000.0,
            r.per_conversation.as_secs_f64() / r.first_sync.as_secs_f64(),
            r.list.as_secs_f64() * 1000.0,
        );
    }
}
