//! What a hostile member, a large history and a busy group must not break:
//! identity, byte-bounded replies, linear presence, the store epoch.

use crate::support::*;
use confab_protocol::{MAX_SERVER_FRAME_BYTES, REPLY_BUDGET_BYTES};
use confab_server::Limits;
use serde_json::{json, Value};

#[tokio::test]
async fn a_client_id_identifies_nothing_beyond_its_senders_own_sends() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let mut mallory = s.user("mallory").await;
    let group = alice.ok(json!({"type": "create_group", "name": "g", "members": ["bob", "mallory"]})).await;
    let group = group["conversation"]["id"].as_str().expect("id").to_owned();
    let (cid, cid2) = (client_id(), client_id());
    let sent = alice.ok(json!({"type": "send", "conversation": group, "client_id": cid, "text": "hi all"})).await;
    alice.ok(json!({"type": "send", "conversation": group, "client_id": cid2, "text": "and more"})).await;
    // Mallory reuses alice's client ids, in the group and in her DM with bob.
    let dm_bob = dm(&mut mallory, "bob").await;
    let m1 = mallory.ok(json!({"type": "send", "conversation": group, "client_id": cid, "text": "pay IBAN X"})).await;
    let m2 = mallory.ok(json!({"type": "send", "conversation": dm_bob, "client_id": cid2, "text": "psst"})).await;
    // Three distinct messages, each with its own (conversation, seq), none a
    // "duplicate" of alice's.
    assert_eq!(m1["duplicate"], false);
    assert_eq!(m2["duplicate"], false);
    assert_ne!(m1["seq"], sent["seq"]);
    let h = bob.ok(json!({"type": "history", "conversation": group, "limit": 10})).await;
    let msgs = h["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 3);
    let by_seq = |seq: &Value| msgs.iter().find(|m| m["seq"] == *seq).expect("seq").clone();
    assert_eq!(by_seq(&sent["seq"])["text"], "hi all");
    assert_eq!(by_seq(&m1["seq"])["text"], "pay IBAN X");
    assert_ne!(by_seq(&sent["seq"])["sender"], by_seq(&m1["seq"])["sender"]);
}

/// Reads every event of `conv` after 0, with a raw reader that records the
/// size of each reply frame.
async fn read_all_events(ws: &mut Ws, conv: &str) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut after = 0;
    let mut largest = 0;
    loop {
        let reply = ws.ok(json!({"type": "events", "conversation": conv, "after": after, "limit": 500})).await;
        largest = largest.max(reply.to_string().len());
        let page = reply["events"].as_array().expect("events").clone();
        assert!(!page.is_empty(), "a page always makes progress");
        after = page.last().expect("last")["pos"].as_i64().expect("pos");
        events.extend(page);
        if reply["has_more"] == false {
            return (events, largest);
        }
    }
}

#[tokio::test]
async fn replies_are_bounded_in_bytes_and_the_largest_messages_all_arrive() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    // 150 messages of 8000 emoji (32 KB each, the maximum) and a few of
    // 8000 control characters, which JSON sends as six-byte escapes.
    let emoji = "😀".repeat(confab_protocol::MAX_MESSAGE_CHARS);
    let controls = "\u{1}".repeat(confab_protocol::MAX_MESSAGE_CHARS);
    for i in 0..150 {
        let text = if i % 50 == 0 { format!("a{controls}") } else { emoji.clone() };
        let text: String = text.chars().take(confab_protocol::MAX_MESSAGE_CHARS).collect();
        send(&mut alice, &conv, &text).await;
    }
    let (events, largest) = read_all_events(&mut bob, &conv).await;
    let messages = events.iter().filter(|e| e["body"]["type"] == "message").count();
    assert_eq!(messages, 150);
    assert!(largest < 2 * REPLY_BUDGET_BYTES, "an events reply of {largest} bytes");

    // The same through catch_up and history.
    let mut after = 0;
    let mut seen = 0;
    loop {
        let r = bob.ok(json!({"type": "catch_up", "from": [{"conversation": conv, "after": after}]})).await;
        assert!(r.to_string().len() < 2 * REPLY_BUDGET_BYTES);
        let page = &r["pages"][0];
        let evs = page["events"].as_array().expect("events");
        seen += evs.iter().filter(|e| e["body"]["type"] == "message").count();
        after = evs.last().expect("progress")["pos"].as_i64().expect("pos");
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(seen, 150);
    let mut before: Option<i64> = None;
    let mut got = 0;
    loop {
        let r = bob.ok(json!({"type": "history", "conversation": conv, "before": before, "limit": 500})).await;
        let size = r.to_string().len();
        assert!(size < MAX_SERVER_FRAME_BYTES / 2, "a history reply of {size} bytes");
        let msgs = r["messages"].as_array().expect("messages");
        got += msgs.len();
        before = msgs.last().and_then(|m| m["seq"].as_i64());
        if r["has_more"] == false {
            break;
        }
    }
    assert_eq!(got, 150);
}

#[tokio::test]
async fn sync_lists_heads_and_a_matching_digest_is_one_tiny_reply() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let _bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    send(&mut alice, &conv, "hi").await;
    let full = alice.ok(json!({"type": "sync"})).await;
    let heads = full["conversations"].as_array().expect("heads");
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0]["last_pos"], 2);
    assert_eq!(heads[0]["last_seq"], 1);
    let digest = confab_protocol::sync_digest(vec![(conv.parse().expect("uuid"), 2, 0)]);
    assert_eq!(full["digest"], digest.as_str());
    let same = alice.ok(json!({"type": "sync", "digest": digest})).await;
    assert_eq!(same["unchanged"], true);
    assert_eq!(same["conversations"].as_array().expect("list").len(), 0);
    send(&mut alice, &conv, "more").await;
    let changed = alice.ok(json!({"type": "sync", "digest": digest})).await;
    assert_eq!(changed["unchanged"], false);
    assert_eq!(changed["conversations"][0]["last_pos"], 3);
    // Batched receipts: one request, a foreign conversation skipped.
    let foreign = uuid::Uuid::now_v7();
    let r = _bob_ack(&s, &conv, foreign).await;
    assert_eq!(r["type"], "result", "{r}");
}

async fn _bob_ack(s: &TestServer, conv: &str, foreign: uuid::Uuid) -> Value {
    let token = s.register("bobby").await;
    let mut b = s.connect(&token).await;
    b.req(json!({"type": "delivered_many", "receipts": [{"conversation": conv, "seq": 1}, {"conversation": foreign, "seq": 3}]}))
        .await
}

#[tokio::test]
async fn a_thousand_member_group_add_remove_loop_does_not_disconnect_bystanders() {
    let s = TestServer::with_limits(Limits { requests_per_sec: 100_000, request_burst: 100_000, ..Limits::default() })
        .await;
    let (_, admin_token) = s.quick_user("admin").await;
    let mut admin = s.connect(&admin_token).await;
    let mut names = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..998 {
        let name = format!("member{i:04}");
        let (_, token) = s.quick_user(&name).await;
        names.push(name);
        tokens.push(token);
    }
    let (_, joiner_token) = s.quick_user("joiner").await;
    let mut joiner = s.connect(&joiner_token).await;
    let created = admin.ok(json!({"type": "create_group", "name": "big", "members": names})).await;
    let group = created["conversation"]["id"].as_str().expect("id").to_owned();
    assert_eq!(created["conversation"]["members"].as_array().expect("members").len(), 999);
    // 300 members online (each is a real socket; the rest are offline).
    let mut online = Vec::new();
    for token in tokens.iter().take(300) {
        online.push(s.connect(token).await);
    }
    // Start counting from here.
    for ws in &mut online {
        ws.ok(json!({"type": "ping"})).await;
        ws.backlog.clear();
    }
    let rounds = 10;
    for _ in 0..rounds {
        // The joiner makes it 1000.
        admin.ok(json!({"type": "add_member", "conversation": group, "username": "joiner"})).await;
        // The newcomer gets one list of who is online.
        let list = joiner.expect(|f| f["type"] == "presence_list" && f["snapshot"] == false).await;
        assert_eq!(list["presence"].as_array().expect("list").len(), 301, "300 members and the admin");
        admin.ok(json!({"type": "remove_member", "conversation": group, "username": "joiner"})).await;
    }
    // Every bystander is still connected and got each change exactly once:
    // 2 events and 1 presence update per round, not hundreds.
    for ws in &mut online {
        // Replies share the queue with fan-out: once the pong is here, so
        // is everything published before it.
        let reply = ws.ok(json!({"type": "ping"})).await;
        assert_eq!(reply["type"], "pong");
        let events = ws.backlog.iter().filter(|f| f["type"] == "event").count();
        let presence =
            ws.backlog.iter().filter(|f| f["type"].as_str().is_some_and(|t| t.starts_with("presence"))).count();
        assert_eq!(events, 2 * rounds, "membership events");
        assert_eq!(presence, rounds, "one presence update per newcomer");
    }
}

#[tokio::test]
async fn welcome_carries_the_store_epoch_which_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = crate::support::database(dir.path()).await;
    let config = |db: &std::path::PathBuf| {
        let mut c = confab_server::Config::new("127.0.0.1:0".parse().expect("addr"), db.clone());
        c.media_dir = Some(dir.path().join("media"));
        c
    };
    let start = || async { confab_server::start(config(&db)).await.expect("start") };
    let first = start().await;
    let epoch = first.state.service.epoch.clone();
    assert!(!epoch.is_empty());
    first.shutdown().await;
    let again = start().await;
    assert_eq!(again.state.service.epoch, epoch, "a restart keeps the epoch");
    again.shutdown().await;
    let mut forced = config(&db);
    forced.new_epoch = true;
    let forced = confab_server::start(forced).await.expect("start");
    let forced_epoch = forced.state.service.epoch.clone();
    assert_ne!(forced_epoch, epoch, "--new-epoch starts a new one");
    forced.shutdown().await;
    if crate::support::on_postgres() {
        return; // A shared database has no sidecar.
    }
    // A database whose epoch is not the one the sidecar last saw (a copy
    // from before a rotation) gets a new one too.
    let sidecar = confab_server::epoch::sidecar_path(&db);
    std::fs::write(&sidecar, format!("{} 0\n", uuid::Uuid::now_v7())).expect("sidecar");
    let swapped = start().await;
    assert_ne!(swapped.state.service.epoch, forced_epoch);
    swapped.shutdown().await;
}
