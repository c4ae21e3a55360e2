use crate::support::*;
use confab_server::Limits;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn a_retried_send_with_the_same_client_id_is_committed_once() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    let id = client_id();
    let req = json!({"type": "send", "conversation": conv, "client_id": id, "text": "once"});
    let first = alice.ok(req.clone()).await;
    let second = alice.ok(req.clone()).await;
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!((first["seq"].clone(), first["pos"].clone()), (second["seq"].clone(), second["pos"].clone()));
    let history = bob.ok(json!({"type": "history", "conversation": conv, "limit": 10})).await;
    assert_eq!(history["messages"].as_array().expect("messages").len(), 1);
    // A retry after the sender lost access is still acknowledged, not
    // reported as a failure: the message was delivered.
    let g = alice.ok(json!({"type": "create_group", "name": "g", "members": ["bob"]})).await;
    let group = g["conversation"]["id"].as_str().expect("id").to_owned();
    let bobs = client_id();
    let req = json!({"type": "send", "conversation": group, "client_id": bobs, "text": "bye"});
    let first = bob.ok(req.clone()).await;
    alice.ok(json!({"type": "remove_member", "conversation": group, "username": "bob"})).await;
    let retry = bob.ok(req).await;
    assert_eq!((retry["duplicate"].clone(), retry["seq"].clone()), (json!(true), first["seq"].clone()));
    let fresh = json!({"type": "send", "conversation": group, "client_id": client_id(), "text": "again"});
    assert_eq!(bob.err(fresh).await, "not_member");
    // Reusing the id in another conversation is refused, not merged.
    s.register("carol").await;
    let other = dm(&mut alice, "carol").await;
    let code = alice.err(json!({"type": "send", "conversation": other, "client_id": id, "text": "x"})).await;
    assert_eq!(code, "invalid_request");
}

#[tokio::test]
async fn send_many_takes_each_message_as_send_would_in_order_with_one_result_each() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    let early = client_id();
    let first = alice.ok(json!({"type": "send", "conversation": conv, "client_id": early, "text": "zero"})).await;
    let ids: Vec<String> = (0..5).map(|_| client_id()).collect();
    let messages = json!([
        {"client_id": ids[0], "text": "one"},
        {"client_id": early, "text": "zero"},
        {"client_id": ids[1], "text": "x".repeat(confab_protocol::MAX_MESSAGE_CHARS + 1)},
        {"client_id": ids[2], "text": "two"},
        {"client_id": ids[0], "text": "one"},
        {"client_id": ids[3], "text": "three"},
    ]);
    let r = alice.ok(json!({"type": "send_many", "conversation": conv, "messages": messages})).await;
    let results = r["results"].as_array().expect("results");
    let status: Vec<(&str, bool)> =
        results.iter().map(|r| (r["status"].as_str().unwrap(), r["duplicate"].as_bool().unwrap_or(false))).collect();
    assert_eq!(
        status,
        [("sent", false), ("sent", true), ("refused", false), ("sent", false), ("sent", true), ("sent", false)],
        "{r}"
    );
    assert_eq!(results[1]["seq"], first["seq"], "a repeat of an earlier send is that message");
    assert_eq!(results[2]["code"], "message_too_long");
    assert_eq!(results[4]["seq"], results[0]["seq"], "a repeat inside the batch is one message");
    let seqs: Vec<i64> = [0, 3, 5].iter().map(|&i| results[i]["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [2, 3, 4], "in order, right after the earlier message");
    // Bob gets the earlier message, then the batch's three, in order.
    for want in ["zero", "one", "two", "three"] {
        let e = bob.event("message").await;
        assert_eq!(e["body"]["text"], want);
    }
    // Foreign, empty and oversized batches are refused whole.
    let mut carol = s.user("carol").await;
    let r = carol
        .ok(json!({"type": "send_many", "conversation": conv, "messages": [{"client_id": client_id(), "text": "hi"}]}))
        .await;
    assert_eq!(r["results"][0]["code"], "not_member", "{r}");
    assert_eq!(alice.err(json!({"type": "send_many", "conversation": conv, "messages": []})).await, "invalid_request");
    let too_many: Vec<_> =
        (0..=confab_protocol::MAX_BATCH).map(|_| json!({"client_id": client_id(), "text": "m"})).collect();
    let code = alice.err(json!({"type": "send_many", "conversation": conv, "messages": too_many})).await;
    assert_eq!(code, "invalid_request");
    let history = bob.ok(json!({"type": "history", "conversation": conv, "limit": 50})).await;
    assert_eq!(history["messages"].as_array().expect("messages").len(), 4);
}

#[tokio::test]
async fn messages_get_gap_free_seqs_and_reach_every_member_in_order() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let mut carol = s.user("carol").await;
    let g = alice.ok(json!({"type": "create_group", "name": "trio", "members": ["bob", "carol"]})).await;
    let conv = g["conversation"]["id"].as_str().expect("id").to_owned();
    assert_eq!(g["conversation"]["members"].as_array().expect("members").len(), 3);
    for i in 1..=20 {
        let sender = if i % 2 == 0 { &mut alice } else { &mut bob };
        let r = send(sender, &conv, &format!("m{i}")).await;
        assert_eq!(r["seq"], i);
    }
    for ws in [&mut alice, &mut bob, &mut carol] {
        for i in 1..=20 {
            let ev = ws.event("message").await;
            assert_eq!(ev["body"]["seq"], i);
            assert_eq!(ev["body"]["text"], format!("m{i}"));
            // pos 1 is the group's creation.
            assert_eq!(ev["pos"], i + 1);
        }
    }
}

#[tokio::test]
async fn resume_replays_every_kind_of_change_in_order_and_paged() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    for t in ["one", "two", "three"] {
        send(&mut alice, &conv, t).await;
    }
    alice.ok(json!({"type": "edit", "conversation": conv, "seq": 1, "text": "one!"})).await;
    bob.ok(json!({"type": "react", "conversation": conv, "seq": 2, "emoji": "🎉", "add": true})).await;
    bob.ok(json!({"type": "pin", "conversation": conv, "seq": 3, "pinned": true})).await;
    alice.ok(json!({"type": "delete", "conversation": conv, "seq": 2})).await;
    bob.ok(json!({"type": "delivered", "conversation": conv, "seq": 3})).await;
    bob.ok(json!({"type": "read", "conversation": conv, "seq": 2})).await;

    // A reconnecting client at position 0 gets everything, paged.
    let mut after = 0;
    let mut kinds = Vec::new();
    loop {
        let r = bob.ok(json!({"type": "events", "conversation": conv, "after": after, "limit": 3})).await;
        for ev in r["events"].as_array().expect("events") {
            assert_eq!(ev["pos"], after + 1, "gap-free");
            after += 1;
            kinds.push(ev["body"]["type"].as_str().expect("type").to_owned());
        }
        if r["has_more"] == false {
            assert_eq!(r["last_pos"], after);
            break;
        }
    }
    assert_eq!(
        kinds,
        ["created", "message", "message", "message", "edited", "reaction", "pinned", "deleted"],
        "receipts are watermarks beside the log, not events in it"
    );

    // The current state agrees.
    let h = bob.ok(json!({"type": "history", "conversation": conv, "limit": 10})).await;
    let msgs = h["messages"].as_array().expect("messages");
    assert_eq!(msgs[0]["seq"], 3);
    assert_eq!(msgs[0]["pinned"], true);
    assert_eq!(msgs[1]["deleted"], true);
    assert_eq!(msgs[1]["text"], "");
    assert_eq!(msgs[2]["text"], "one!");
    assert!(msgs[2]["edited_at"].is_i64());

    // Asking from beyond the end is answered explicitly, never silently.
    let code = bob.err(json!({"type": "events", "conversation": conv, "after": after + 5, "limit": 3})).await;
    assert_eq!(code, "replay_unavailable");
    let code = bob.err(json!({"type": "events", "conversation": conv, "after": -1, "limit": 3})).await;
    assert_eq!(code, "invalid_request");
}

fn is_receipts(f: &Value) -> bool {
    f["type"] == "receipts"
}

#[tokio::test]
async fn receipts_only_move_forward_and_reach_the_sender_live() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    for i in 0..5 {
        send(&mut alice, &conv, &format!("m{i}")).await;
    }
    let bob_id = bob.ok(json!({"type": "sync"})).await;
    let head = &bob_id["conversations"][0];
    assert_eq!(head["marks"], 0);
    let r = bob.ok(json!({"type": "delivered", "conversation": conv, "seq": 4})).await;
    assert!(r["pos"].is_null(), "no position: not an event");
    let f = alice.expect(is_receipts).await;
    assert_eq!(f["conversation"], conv.as_str());
    assert_eq!((f["since"].clone(), f["version"].clone()), (json!(0), json!(1)));
    assert_eq!((f["marks"][0]["delivered_seq"].clone(), f["marks"][0]["read_seq"].clone()), (json!(4), json!(0)));
    // Going back is a no-op: no frame, no new version.
    bob.ok(json!({"type": "delivered", "conversation": conv, "seq": 2})).await;
    alice.quiet(Duration::from_millis(200), is_receipts).await;
    // Read implies delivered, and is clamped to the newest message.
    bob.ok(json!({"type": "read", "conversation": conv, "seq": 99})).await;
    let f = alice.expect(is_receipts).await;
    assert_eq!((f["since"].clone(), f["version"].clone()), (json!(1), json!(2)));
    assert_eq!((f["marks"][0]["delivered_seq"].clone(), f["marks"][0]["read_seq"].clone()), (json!(5), json!(5)));
    // The log holds messages only, and sync names the watermarks' version.
    let r = alice.ok(json!({"type": "events", "conversation": conv, "after": 0, "limit": 100})).await;
    assert_eq!(r["last_pos"], 6);
    let heads = alice.ok(json!({"type": "sync"})).await;
    assert_eq!(heads["conversations"][0]["marks"], 2);
    let w = alice.ok(json!({"type": "watermarks", "from": [{"conversation": conv, "after": null}]})).await;
    let page = &w["pages"][0];
    assert_eq!(page["version"], 2);
    let marks: Vec<(i64, i64)> = page["marks"]
        .as_array()
        .expect("marks")
        .iter()
        .map(|m| (m["delivered_seq"].as_i64().expect("d"), m["read_seq"].as_i64().expect("r")))
        .collect();
    let mut sorted = marks.clone();
    sorted.sort();
    assert_eq!(sorted, [(0, 0), (5, 5)], "alice has acknowledged nothing, bob everything");
}

#[tokio::test]
async fn receipts_in_a_burst_go_out_coalesced_and_watermarks_page_by_member() {
    let s = TestServer::with_limits(Limits { requests_per_sec: 100_000, request_burst: 100_000, ..Limits::default() })
        .await;
    let mut owner = s.user("owner").await;
    let mut names = Vec::new();
    let mut members = Vec::new();
    for i in 0..60 {
        let name = format!("m{i:02}");
        let (_, token) = s.quick_user(&name).await;
        members.push(s.connect(&token).await);
        names.push(name);
    }
    let g = owner.ok(json!({"type": "create_group", "name": "big", "members": names})).await;
    let conv = g["conversation"]["id"].as_str().expect("id").to_owned();
    send(&mut owner, &conv, "hello all").await;
    // Every member acknowledges and reads at once.
    for m in &mut members {
        m.ok(json!({"type": "read", "conversation": conv, "seq": 1})).await;
    }
    // The owner learns of all 60 in far fewer frames than 60, and exactly.
    let mut frames = 0;
    let mut read = std::collections::HashSet::new();
    let mut version = 0;
    while read.len() < 60 {
        let f = owner.expect(is_receipts).await;
        frames += 1;
        assert!(f["since"].as_i64() <= Some(version), "contiguous claims: {f}");
        version = f["version"].as_i64().expect("version");
        for m in f["marks"].as_array().expect("marks") {
            assert_eq!(m["read_seq"], 1);
            read.insert(m["user"].as_str().expect("user").to_owned());
        }
    }
    assert_eq!(version, 60);
    assert!(frames < 30, "{frames} frames for 60 receipts: not coalesced");
    // Paged by member, in user-id order, with no one twice or missing.
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let w = owner.ok(json!({"type": "watermarks", "from": [{"conversation": conv, "after": after}]})).await;
        let page = &w["pages"][0];
        assert_eq!(page["version"], 60);
        for m in page["marks"].as_array().expect("marks") {
            seen.push(m["user"].as_str().expect("user").to_owned());
        }
        after = seen.last().cloned();
        if page["has_more"] == false {
            break;
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((seen.len(), sorted), (61, seen.clone()));
    // A stranger is refused per page, not for the whole request.
    let mut carol = s.user("carol").await;
    let w = carol.ok(json!({"type": "watermarks", "from": [{"conversation": conv, "after": null}]})).await;
    assert_eq!(w["pages"][0]["error"], "not_member");
    assert!(w["pages"][0]["marks"].as_array().expect("marks").is_empty());
}

#[tokio::test]
async fn non_members_are_refused_everything_and_nobody_acts_for_someone_else() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let mut carol = s.user("carol").await;
    let conv = dm(&mut alice, "bob").await;
    send(&mut alice, &conv, "private").await;

    for body in [
        json!({"type": "events", "conversation": conv, "after": 0, "limit": 10}),
        json!({"type": "history", "conversation": conv, "limit": 10}),
        json!({"type": "send", "conversation": conv, "client_id": client_id(), "text": "hi"}),
        json!({"type": "edit", "conversation": conv, "seq": 1, "text": "x"}),
        json!({"type": "delete", "conversation": conv, "seq": 1}),
        json!({"type": "react", "conversation": conv, "seq": 1, "emoji": "👀", "add": true}),
        json!({"type": "pin", "conversation": conv, "seq": 1, "pinned": true}),
        json!({"type": "delivered", "conversation": conv, "seq": 1}),
        json!({"type": "read", "conversation": conv, "seq": 1}),
        json!({"type": "typing", "conversation": conv}),
        json!({"type": "add_member", "conversation": conv, "username": "carol"}),
    ] {
        assert_eq!(carol.err(body.clone()).await, "not_member", "{body}");
    }
    // A conversation that does not exist looks the same as one you are not in.
    let missing = json!({"type": "history", "conversation": uuid::Uuid::now_v7(), "limit": 1});
    assert_eq!(carol.err(missing).await, "not_member");
    carol.quiet(Duration::from_millis(300), |f| f["type"] == "event").await;

    // Bob is a member, but not the sender.
    assert_eq!(bob.err(json!({"type": "edit", "conversation": conv, "seq": 1, "text": "mine now"})).await, "forbidden");
    assert_eq!(bob.err(json!({"type": "delete", "conversation": conv, "seq": 1})).await, "forbidden");

    // In a group, an admin may delete anyone's message; a member may not.
    let g = alice.ok(json!({"type": "create_group", "name": "g", "members": ["bob", "carol"]})).await;
    let group = g["conversation"]["id"].as_str().expect("id").to_owned();
    send(&mut bob, &group, "from bob").await;
    assert_eq!(carol.err(json!({"type": "delete", "conversation": group, "seq": 1})).await, "forbidden");
    assert_eq!(carol.err(json!({"type": "rename_group", "conversation": group, "name": "mine"})).await, "forbidden");
    assert_eq!(
        carol.err(json!({"type": "remove_member", "conversation": group, "username": "bob"})).await,
        "forbidden"
    );
    alice.ok(json!({"type": "delete", "conversation": group, "seq": 1})).await;
    // Admins can make admins, who can then manage the group.
    alice.ok(json!({"type": "set_admin", "conversation": group, "username": "carol", "admin": true})).await;
    carol.ok(json!({"type": "rename_group", "conversation": group, "name": "carol's"})).await;
    assert_eq!(bob.event("renamed").await["body"]["name"], "carol's");
    carol.ok(json!({"type": "set_admin", "conversation": group, "username": "carol", "admin": false})).await;
    assert_eq!(carol.err(json!({"type": "rename_group", "conversation": group, "name": "x"})).await, "forbidden");
    // Anyone may leave; then they are out.
    carol.ok(json!({"type": "remove_member", "conversation": group, "username": "carol"})).await;
    assert_eq!(carol.err(json!({"type": "history", "conversation": group, "limit": 1})).await, "not_member");
}

#[tokio::test]
async fn typing_is_throttled_and_presence_follows_connections() {
    let s = TestServer::start().await;
    let token = s.register("alice").await;
    let mut alice = s.connect(&token).await;
    let mut bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    // New contacts learn each other's presence when the conversation starts:
    // one shared list of who is online.
    let on = bob.expect(|f| f["type"] == "presence_list" && f["snapshot"] == false).await;
    assert_eq!(on["presence"].as_array().expect("list").len(), 2, "{on}");
    alice.ok(json!({"type": "typing", "conversation": conv})).await;
    let t = bob.expect(|f| f["type"] == "typing").await;
    assert_eq!(t["conversation"], conv.as_str());
    assert!(t["ttl_ms"].as_u64().expect("ttl") > 0);
    alice.ok(json!({"type": "typing", "conversation": conv})).await;
    bob.quiet(Duration::from_millis(400), |f| f["type"] == "typing").await;

    // A second device neither flaps presence on arrival nor on the first
    // device leaving; the last one leaving makes alice offline.
    let alice2 = s.connect(&token).await;
    drop(alice);
    bob.quiet(Duration::from_millis(400), |f| f["type"] == "presence").await;
    drop(alice2);
    let off = bob.expect(|f| f["type"] == "presence" && f["online"] == false).await;
    assert!(off["last_seen"].is_i64());
    let info = bob.ok(json!({"type": "conversation", "conversation": conv})).await;
    let members = info["conversation"]["members"].as_array().expect("members").clone();
    let alice_state = members.iter().find(|m| m["username"] == "alice").expect("alice");
    assert_eq!(alice_state["online"], false);
    assert!(alice_state["last_seen"].is_i64());
}

#[tokio::test]
async fn pipelined_sends_are_answered_one_by_one_in_order_with_gap_free_seqs() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let _bob = s.user("bob").await;
    let _carol = s.user("carol").await;
    let conv = dm(&mut alice, "bob").await;
    let other = dm(&mut alice, "carol").await;
    // 60 frames written without waiting: sends to one conversation, a
    // repeat of an earlier client id, one too long, a send elsewhere and a
    // ping in the middle.
    let repeated = client_id();
    let mut expect = Vec::new();
    for i in 0..60u64 {
        let id = 1000 + i;
        let frame = match i {
            10 => json!({"id": id, "type": "send", "conversation": conv, "client_id": repeated, "text": "again"}),
            20 => json!({"id": id, "type": "ping"}),
            30 => json!({"id": id, "type": "send", "conversation": other, "client_id": client_id(), "text": "x"}),
            40 => {
                json!({"id": id, "type": "send", "conversation": conv, "client_id": client_id(), "text": "y".repeat(9000)})
            }
            5 => json!({"id": id, "type": "send", "conversation": conv, "client_id": repeated, "text": "first"}),
            _ => {
                json!({"id": id, "type": "send", "conversation": conv, "client_id": client_id(), "text": format!("m{i}")})
            }
        };
        expect.push(i);
        alice.send_text(frame.to_string()).await;
    }
    let mut seq = 0;
    let mut first_seq = None;
    for i in expect {
        let r = alice.reply_to(1000 + i).await;
        match i {
            20 => assert_eq!(r["result"]["type"], "pong"),
            30 => assert_eq!(
                (r["result"]["conversation"].as_str(), r["result"]["seq"].as_i64()),
                (Some(other.as_str()), Some(1))
            ),
            40 => assert_eq!(r["code"], "message_too_long", "{r}"),
            10 => {
                assert_eq!(r["result"]["duplicate"], true);
                assert_eq!(r["result"]["seq"].as_i64(), first_seq);
            }
            _ => {
                seq += 1;
                assert_eq!(r["result"]["seq"], seq, "in order, gap-free: {r}");
                assert_eq!(r["result"]["duplicate"], false);
                if i == 5 {
                    first_seq = Some(seq);
                }
            }
        }
    }
    // Bob's view agrees: every message once, in the order sent.
    let h = alice.ok(json!({"type": "history", "conversation": conv, "limit": 100})).await;
    let texts: Vec<&str> =
        h["messages"].as_array().expect("messages").iter().rev().map(|m| m["text"].as_str().expect("text")).collect();
    assert_eq!(texts.len(), 56);
    assert_eq!((texts[0], texts[5], texts[6]), ("m0", "first", "m6"));
}
