//! Call signaling: who rings, who may answer, signal and end a call, and
//! what the conversation's log keeps.

use crate::support::*;
use confab_server::Limits;
use serde_json::{json, Value};
use std::time::Duration;

fn call_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The next call update of `kind` for `call`.
async fn update(ws: &mut Ws, call: &str, kind: &str) -> Value {
    let (call, kind) = (call.to_owned(), kind.to_owned());
    ws.expect(move |f| f["type"] == "call" && f["call"] == call.as_str() && f["update"]["type"] == kind).await
}

async fn logged(ws: &mut Ws, conv: &str) -> Value {
    let r = ws.ok(json!({"type": "events", "conversation": conv, "after": 0, "limit": 500})).await;
    let events = r["events"].as_array().expect("events").clone();
    events.into_iter().rev().find(|e| e["body"]["type"] == "call").expect("a call entry")["body"].clone()
}

#[tokio::test]
async fn the_first_device_to_answer_takes_the_call_and_only_the_two_devices_signal() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let bob_token = s.register("bob").await;
    let mut bob_phone = s.connect(&bob_token).await;
    let mut bob_laptop = s.connect(&bob_token).await;
    let mut carol = s.user("carol").await;
    let conv = dm(&mut alice, "bob").await;
    let call = call_id();
    let r = alice.ok(json!({"type": "call_invite", "conversation": conv, "call": call, "video": true})).await;
    assert_eq!(r["call"], call.as_str());
    assert!(r["ice_servers"].is_array());
    // Every device of bob's rings.
    for ws in [&mut bob_phone, &mut bob_laptop] {
        let ring = update(ws, &call, "incoming").await;
        assert_eq!(ring["update"]["video"], true);
        assert_eq!(ring["conversation"], conv.as_str());
    }
    // A third party can neither answer, signal nor end it.
    for req in [
        json!({"type": "call_accept", "call": call}),
        json!({"type": "call_decline", "call": call}),
        json!({"type": "call_hangup", "call": call}),
        json!({"type": "call_signal", "call": call, "signal": {"type": "offer", "sdp": "v=0"}}),
    ] {
        assert_eq!(carol.err(req).await, "not_found");
    }
    // The laptop answers; the phone stops ringing.
    bob_laptop.ok(json!({"type": "call_accept", "call": call})).await;
    update(&mut alice, &call, "accepted").await;
    update(&mut bob_phone, &call, "answered_elsewhere").await;
    assert_eq!(bob_phone.err(json!({"type": "call_accept", "call": call})).await, "not_found");
    // Signals go between alice and the laptop only.
    alice.ok(json!({"type": "call_signal", "call": call, "signal": {"type": "offer", "sdp": "v=0 offer"}})).await;
    let offer = update(&mut bob_laptop, &call, "signal").await;
    assert_eq!(offer["update"]["signal"]["sdp"], "v=0 offer");
    let signal = json!({"type": "candidate", "candidate": "candidate:1", "sdp_mid": "0", "sdp_m_line_index": 0});
    bob_laptop.ok(json!({"type": "call_signal", "call": call, "signal": signal})).await;
    assert_eq!(update(&mut alice, &call, "signal").await["update"]["signal"]["candidate"], "candidate:1");
    assert_eq!(
        bob_phone.err(json!({"type": "call_signal", "call": call, "signal": {"type": "answer", "sdp": "x"}})).await,
        "not_found"
    );
    bob_phone.quiet(Duration::from_millis(200), |f| f["update"]["type"] == "signal").await;
    // Busy while in the call.
    let dm_carol = dm(&mut carol, "bob").await;
    let other = json!({"type": "call_invite", "conversation": dm_carol, "call": call_id(), "video": false});
    assert_eq!(carol.err(other).await, "busy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.ok(json!({"type": "call_hangup", "call": call})).await;
    assert_eq!(update(&mut bob_laptop, &call, "ended").await["update"]["reason"], "hung_up");
    assert_eq!(update(&mut alice, &call, "ended").await["update"]["reason"], "hung_up");
    let entry = logged(&mut alice, &conv).await;
    assert_eq!(entry["outcome"]["type"], "completed");
    assert!(entry["outcome"]["duration_ms"].as_i64().is_some_and(|d| d >= 250), "{entry}");
    assert_eq!(entry["video"], true);
}

#[tokio::test]
async fn decline_cancel_and_no_answer_end_the_call_and_are_logged() {
    let s = TestServer::with_limits(Limits {
        requests_per_sec: 100_000,
        request_burst: 100_000,
        call_ring_timeout: Duration::from_millis(400),
        ..Limits::default()
    })
    .await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    let invite = |call: &str| json!({"type": "call_invite", "conversation": conv, "call": call, "video": false});

    let declined = call_id();
    alice.ok(invite(&declined)).await;
    update(&mut bob, &declined, "incoming").await;
    bob.ok(json!({"type": "call_decline", "call": declined})).await;
    assert_eq!(update(&mut alice, &declined, "ended").await["update"]["reason"], "declined");
    assert_eq!(logged(&mut bob, &conv).await["outcome"]["type"], "declined");

    let cancelled = call_id();
    alice.ok(invite(&cancelled)).await;
    update(&mut bob, &cancelled, "incoming").await;
    alice.ok(json!({"type": "call_hangup", "call": cancelled})).await;
    assert_eq!(update(&mut bob, &cancelled, "ended").await["update"]["reason"], "cancelled");
    assert_eq!(logged(&mut bob, &conv).await["outcome"]["type"], "cancelled");

    let missed = call_id();
    alice.ok(invite(&missed)).await;
    update(&mut bob, &missed, "incoming").await;
    assert_eq!(update(&mut bob, &missed, "ended").await["update"]["reason"], "missed");
    assert_eq!(update(&mut alice, &missed, "ended").await["update"]["reason"], "missed");
    assert_eq!(logged(&mut bob, &conv).await["outcome"]["type"], "missed");

    // The caller's device going away cancels a ringing call.
    let dropped = call_id();
    alice.ok(invite(&dropped)).await;
    update(&mut bob, &dropped, "incoming").await;
    drop(alice);
    assert_eq!(update(&mut bob, &dropped, "ended").await["update"]["reason"], "cancelled");
}

/// Alice calls bob and bob answers; returns the call.
async fn answered(alice: &mut Ws, bob: &mut Ws, conv: &str) -> String {
    let call = call_id();
    alice.ok(json!({"type": "call_invite", "conversation": conv, "call": call, "video": false})).await;
    update(bob, &call, "incoming").await;
    bob.ok(json!({"type": "call_accept", "call": call})).await;
    update(alice, &call, "accepted").await;
    call
}

#[tokio::test]
async fn a_device_that_drops_out_of_a_call_rejoins_it_and_only_that_device_can() {
    let s = TestServer::with_limits(Limits {
        requests_per_sec: 100_000,
        request_burst: 100_000,
        call_rejoin_grace: Duration::from_millis(800),
        ..Limits::default()
    })
    .await;
    let alice_token = s.register("alice").await;
    let mut alice = s.connect(&alice_token).await;
    let (_, other) = s.post("/v1/login", &json!({"username": "alice", "password": PASSWORD}).to_string(), None).await;
    let mut alice_laptop = s.connect(other["token"].as_str().expect("token")).await;
    let mut bob = s.user("bob").await;
    let mut carol = s.user("carol").await;
    let conv = dm(&mut alice, "bob").await;
    let call = answered(&mut alice, &mut bob, &conv).await;

    // Alice's socket drops. The call waits for her; nobody is told it ended.
    drop(alice);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Neither another device of hers nor a third party can take her place.
    assert_eq!(alice_laptop.err(json!({"type": "call_rejoin", "call": call})).await, "not_found");
    assert_eq!(carol.err(json!({"type": "call_rejoin", "call": call})).await, "not_found");
    assert_eq!(bob.err(json!({"type": "call_rejoin", "call": call_id()})).await, "not_found");
    // The same device, reconnected, rejoins; signaling flows both ways again.
    let mut alice = s.connect(&alice_token).await;
    let r = alice.ok(json!({"type": "call_rejoin", "call": call})).await;
    assert_eq!(r["call"], call.as_str());
    assert!(r["ice_servers"].is_array());
    alice.ok(json!({"type": "call_signal", "call": call, "signal": {"type": "offer", "sdp": "v=0 restart"}})).await;
    assert_eq!(update(&mut bob, &call, "signal").await["update"]["signal"]["sdp"], "v=0 restart");
    bob.ok(json!({"type": "call_signal", "call": call, "signal": {"type": "answer", "sdp": "v=0 ok"}})).await;
    assert_eq!(update(&mut alice, &call, "signal").await["update"]["signal"]["sdp"], "v=0 ok");
    // Past the grace the call is still up: the rejoin counted.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    bob.quiet(Duration::from_millis(100), |f| f["update"]["type"] == "ended").await;
    bob.ok(json!({"type": "call_hangup", "call": call})).await;
    assert_eq!(update(&mut alice, &call, "ended").await["update"]["reason"], "hung_up");
    let entry = logged(&mut bob, &conv).await;
    assert_eq!(entry["outcome"]["type"], "completed");
    assert!(entry["outcome"]["duration_ms"].as_i64().is_some_and(|d| d >= 1500), "{entry}");
}

#[tokio::test]
async fn a_device_that_does_not_come_back_in_time_ends_the_call_as_connection_lost() {
    let s = TestServer::with_limits(Limits {
        requests_per_sec: 100_000,
        request_burst: 100_000,
        call_rejoin_grace: Duration::from_millis(500),
        ..Limits::default()
    })
    .await;
    let alice_token = s.register("alice").await;
    let mut alice = s.connect(&alice_token).await;
    let mut bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    let call = answered(&mut alice, &mut bob, &conv).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(alice);
    assert_eq!(update(&mut bob, &call, "ended").await["update"]["reason"], "connection_lost");
    // The call lasted until alice left, not until the grace ran out.
    let entry = logged(&mut bob, &conv).await;
    assert_eq!(entry["outcome"]["type"], "completed");
    let duration = entry["outcome"]["duration_ms"].as_i64().expect("duration");
    assert!((250..500).contains(&duration), "{entry}");
    // Too late to rejoin; bob is free for a new call.
    let mut alice = s.connect(&alice_token).await;
    assert_eq!(alice.err(json!({"type": "call_rejoin", "call": call})).await, "not_found");
    answered(&mut alice, &mut bob, &conv).await;
}

#[tokio::test]
async fn when_both_call_at_once_the_lesser_call_id_survives() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    let (a, b) = (call_id(), call_id());
    // UUIDv7 ids made in this order compare a < b.
    assert!(a < b);
    // Bob calls first with the greater id; alice, calling back at the same
    // moment with the lesser one, supersedes it.
    bob.ok(json!({"type": "call_invite", "conversation": conv, "call": b, "video": false})).await;
    update(&mut alice, &b, "incoming").await;
    alice.ok(json!({"type": "call_invite", "conversation": conv, "call": a, "video": false})).await;
    assert_eq!(update(&mut bob, &b, "ended").await["update"]["reason"], "superseded");
    assert_eq!(update(&mut alice, &b, "ended").await["update"]["reason"], "superseded");
    update(&mut bob, &a, "incoming").await;
    // And a greater id against a ringing lesser one is refused.
    let c = call_id();
    assert_eq!(bob.err(json!({"type": "call_invite", "conversation": conv, "call": c, "video": false})).await, "busy");
    bob.ok(json!({"type": "call_accept", "call": a})).await;
    update(&mut alice, &a, "accepted").await;
}

#[tokio::test]
async fn calls_are_only_between_the_two_members_of_a_direct_conversation() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut mallory = s.user("mallory").await;
    let _bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    let invite = json!({"type": "call_invite", "conversation": conv, "call": call_id(), "video": false});
    assert_eq!(mallory.err(invite).await, "not_member");
    let group = alice.ok(json!({"type": "create_group", "name": "g", "members": ["bob"]})).await;
    let group = group["conversation"]["id"].as_str().expect("id").to_owned();
    let invite = json!({"type": "call_invite", "conversation": group, "call": call_id(), "video": false});
    assert_eq!(alice.err(invite).await, "invalid_request");
}

#[tokio::test]
async fn both_sides_get_short_lived_turn_credentials_when_turn_is_configured() {
    let s = TestServer::with_config(|c| {
        c.ice = confab_server::ice::IceConfig {
            stun: vec!["stun:127.0.0.1:3478".into()],
            turn: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            turn_secret: Some("north".into()),
            turn_ttl: Duration::from_secs(600),
        }
    })
    .await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let conv = dm(&mut alice, "bob").await;
    let call = call_id();
    let r = alice.ok(json!({"type": "call_invite", "conversation": conv, "call": call, "video": false})).await;
    let servers = r["ice_servers"].as_array().expect("servers");
    assert_eq!(servers[0]["urls"][0], "stun:127.0.0.1:3478");
    let username = servers[1]["username"].as_str().expect("username");
    let (expiry, user) = username.split_once(':').expect("expiry:user");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    let expiry: u64 = expiry.parse().expect("seconds");
    assert!(expiry > now && expiry <= now + 600);
    assert_eq!(user, alice.welcome["user"].as_str().expect("user id"));
    assert_eq!(servers[1]["credential"], confab_server::ice::turn_credential("north", username).as_str());
    update(&mut bob, &call, "incoming").await;
    let r = bob.ok(json!({"type": "call_accept", "call": call})).await;
    assert!(r["ice_servers"][1]["username"]
        .as_str()
        .is_some_and(|u| u.ends_with(bob.welcome["user"].as_str().unwrap_or("?"))));
}
