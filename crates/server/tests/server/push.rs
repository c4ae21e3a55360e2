//! Push wake-ups: which devices are woken, how often, with what, and what
//! happens when a provider refuses — against the stand-in providers of
//! [`crate::providers`], which check each provider's contract.

use crate::providers::Providers;
use crate::support::*;
use confab_protocol::{Wake, WakeKind};
use serde_json::{json, Value};
use std::time::Duration;

/// Longer than the test config's collapse window (300 ms) several times
/// over: what has not been pushed by then is not going to be.
const SETTLE: Duration = Duration::from_millis(1500);

async fn server(providers: &Providers) -> TestServer {
    let config = providers.config();
    TestServer::with_config(move |c| c.push = config).await
}

fn apns_token() -> String {
    rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect()
}

/// `user`'s user id, from the `welcome` of a socket.
fn user_id(ws: &Ws) -> uuid::Uuid {
    ws.welcome["user"].as_str().and_then(|u| u.parse().ok()).expect("user id in welcome")
}

/// Waits until the server has no socket of `user` left (a socket's end
/// reaches the server a moment after the client drops it).
async fn until_away(s: &TestServer, user: uuid::Uuid) {
    let deadline = tokio::time::Instant::now() + T;
    while s.server.state.service.hub.connections(user) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the server still has a socket of {user}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Registers a push target on a fresh socket of `token`, then closes it:
/// the device is asleep.
async fn asleep(s: &TestServer, token: &str, target: Value) -> uuid::Uuid {
    let mut ws = s.connect(token).await;
    let user = user_id(&ws);
    ws.ok(json!({"type": "set_push", "target": target})).await;
    drop(ws);
    until_away(s, user).await;
    user
}

async fn targets_of(s: &TestServer, user: uuid::Uuid) -> usize {
    s.server.state.service.store.push_targets(&[user]).await.expect("push targets").len()
}

async fn until_no_target(s: &TestServer, user: uuid::Uuid) {
    let deadline = tokio::time::Instant::now() + T;
    while targets_of(s, user).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the refused target was not forgotten");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The wake-up a stand-in received: FCM's `data.confab`, APNs' `confab`,
/// or the decrypted WebPush body.
fn wake_of(got: &crate::providers::Got) -> Wake {
    let value = match got.provider {
        "fcm" => serde_json::from_str(got.body["message"]["data"]["confab"].as_str().expect("data.confab string"))
            .expect("wake JSON"),
        "apns" => got.body["confab"].clone(),
        _ => got.body.clone(),
    };
    serde_json::from_value(value).expect("a wake-up")
}

#[tokio::test]
async fn a_burst_of_50_messages_wakes_an_away_android_device_once_without_content() {
    let p = Providers::start().await;
    let s = server(&p).await;
    let mut alice = s.user("alice").await;
    let bob_token = s.register("bob").await;
    let fcm = "fcm-token:bob_1";
    let bob = asleep(&s, &bob_token, json!({"kind": "fcm", "token": fcm})).await;
    let conv = dm(&mut alice, "bob").await;
    let secret = "the launch code is 0000";
    for i in 0..50 {
        send(&mut alice, &conv, &format!("{secret} #{i}")).await;
    }
    let got = p.wait_for("fcm", fcm, 1).await;
    tokio::time::sleep(SETTLE).await;
    let got_all = p.got_for("fcm", fcm);
    assert_eq!(got_all.len(), 1, "one wake-up for the burst, got {got_all:#?}");
    let wake = wake_of(&got[0]);
    assert_eq!(wake.kind, WakeKind::Message);
    assert_eq!(wake.conversation.map(|c| c.to_string()), Some(conv.clone()));
    // At most the conversation's creation and the 50 messages.
    assert!((1..=51).contains(&wake.count), "{wake:?}");
    // High priority, data-only, and nothing of the message or its sender.
    assert_eq!(got[0].body["message"]["android"]["priority"], "HIGH");
    let raw = String::from_utf8_lossy(&got[0].raw);
    assert!(!raw.contains("launch") && !raw.contains("alice"), "content leaked into the push: {raw}");
    assert_eq!(p.token_exchanges(), 1);
    assert!(p.violations().is_empty(), "{:?}", p.violations());
    // Nobody else was pushed, and bob has his target still.
    assert_eq!(p.got().len(), 1);
    assert_eq!(targets_of(&s, bob).await, 1);
}

#[tokio::test]
async fn a_device_with_a_live_socket_is_not_woken_until_it_goes_away() {
    let p = Providers::start().await;
    let s = server(&p).await;
    let mut alice = s.user("alice").await;
    let bob_token = s.register("bob").await;
    let fcm = "fcm-token:bob_live";
    let mut bob = s.connect(&bob_token).await;
    let bob_id = user_id(&bob);
    bob.ok(json!({"type": "set_push", "target": {"kind": "fcm", "token": fcm}})).await;
    let conv = dm(&mut alice, "bob").await;
    for i in 0..5 {
        send(&mut alice, &conv, &format!("live {i}")).await;
    }
    bob.event("message").await;
    tokio::time::sleep(SETTLE).await;
    assert!(p.got_for("fcm", fcm).is_empty(), "a connected device was pushed: {:#?}", p.got());
    // Once away, the next message wakes it.
    drop(bob);
    until_away(&s, bob_id).await;
    send(&mut alice, &conv, "now you are away").await;
    let got = p.wait_for("fcm", fcm, 1).await;
    assert_eq!(wake_of(&got[0]).kind, WakeKind::Message);
    // Woken and not back yet: later messages do not push again...
    send(&mut alice, &conv, "still away").await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(p.got_for("fcm", fcm).len(), 1);
    // ...until it has connected (caught up) and gone away again.
    let bob = s.connect(&bob_token).await;
    drop(bob);
    until_away(&s, bob_id).await;
    send(&mut alice, &conv, "away again").await;
    p.wait_for("fcm", fcm, 2).await;
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test]
async fn a_logged_out_or_revoked_device_is_never_woken_and_its_target_is_gone() {
    let p = Providers::start().await;
    let s = server(&p).await;
    let mut alice = s.user("alice").await;
    let phone = s.register("bob").await;
    let (st, body) = s.post("/v1/login", &json!({"username": "bob", "password": PASSWORD}).to_string(), None).await;
    assert_eq!(st, 200, "{body}");
    let tablet = body["token"].as_str().expect("token").to_owned();
    let (st, body) = s.post("/v1/login", &json!({"username": "bob", "password": PASSWORD}).to_string(), None).await;
    assert_eq!(st, 200, "{body}");
    let laptop = body["token"].as_str().expect("token").to_owned();
    let bob = asleep(&s, &phone, json!({"kind": "fcm", "token": "phone"})).await;
    asleep(&s, &tablet, json!({"kind": "fcm", "token": "tablet"})).await;
    asleep(&s, &laptop, json!({"kind": "fcm", "token": "laptop"})).await;
    assert_eq!(targets_of(&s, bob).await, 3);
    // The tablet signs out; the laptop is revoked from the phone.
    let (st, _) = s.post("/v1/logout", "", Some(&tablet)).await;
    assert_eq!(st, 204);
    {
        let mut ws = s.connect(&phone).await;
        let sessions = ws.ok(json!({"type": "sessions"})).await;
        let laptop_session = sessions["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .filter(|d| d["current"] == false)
            .map(|d| d["id"].as_str().expect("id").to_owned())
            .collect::<Vec<_>>();
        assert_eq!(laptop_session.len(), 1, "{sessions}");
        ws.ok(json!({"type": "revoke_session", "session": laptop_session[0]})).await;
    }
    until_away(&s, bob).await;
    assert_eq!(targets_of(&s, bob).await, 1, "logout and revocation delete the session's target");
    let conv = dm(&mut alice, "bob").await;
    send(&mut alice, &conv, "hello bob").await;
    p.wait_for("fcm", "phone", 1).await;
    tokio::time::sleep(SETTLE).await;
    assert!(p.got_for("fcm", "tablet").is_empty() && p.got_for("fcm", "laptop").is_empty(), "{:#?}", p.got());
    // clear_push: the phone asks not to be woken any more.
    let mut ws = s.connect(&phone).await;
    ws.ok(json!({"type": "clear_push"})).await;
    drop(ws);
    until_away(&s, bob).await;
    send(&mut alice, &conv, "are you there").await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(p.got_for("fcm", "phone").len(), 1);
}

#[tokio::test]
async fn fcm_retries_throttling_and_outages_with_backoff_and_forgets_an_unregistered_token() {
    let p = Providers::start().await;
    let s = server(&p).await;
    let mut alice = s.user("alice").await;
    let bob_token = s.register("bob").await;
    let carol_token = s.register("carol").await;
    // 429, then 503: retried until it goes through, one access token.
    p.script("fcm", &[(429, r#"{"error":{"status":"RESOURCE_EXHAUSTED"}}"#), (503, "{}")]);
    let bob = asleep(&s, &bob_token, json!({"kind": "fcm", "token": "bob-device"})).await;
    let conv = dm(&mut alice, "bob").await;
    send(&mut alice, &conv, "hi").await;
    let got = p.wait_for("fcm", "bob-device", 3).await;
    assert_eq!(got.iter().map(|g| g.status).collect::<Vec<_>>(), [429, 503, 200]);
    assert_eq!(p.token_exchanges(), 1, "the access token is cached");
    assert_eq!(targets_of(&s, bob).await, 1, "a transient failure keeps the target");
    // UNREGISTERED (404): the app is gone from that phone; forget it.
    p.script(
        "fcm",
        &[(404, r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"errorCode":"UNREGISTERED"}]}}"#)],
    );
    let carol = asleep(&s, &carol_token, json!({"kind": "fcm", "token": "carol-device"})).await;
    let conv = dm(&mut alice, "carol").await;
    send(&mut alice, &conv, "hi carol").await;
    p.wait_for("fcm", "carol-device", 1).await;
    until_no_target(&s, carol).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(p.got_for("fcm", "carol-device").len(), 1, "a gone token is not retried");
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test]
async fn apns_gets_alert_background_and_voip_pushes_as_apple_specifies() {
    let p = Providers::start().await;
    let s = server(&p).await;
    let mut alice = s.user("alice").await;
    let bob_token = s.register("bob").await;
    let (token, voip) = (apns_token(), apns_token());
    asleep(&s, &bob_token, json!({"kind": "apns", "token": token, "voip_token": voip, "environment": "sandbox"})).await;
    let conv = dm(&mut alice, "bob").await;
    let sent = send(&mut alice, &conv, "for the extension to read").await;
    let got = p.wait_for("apns", &token, 1).await;
    let h = |name: &str| got[0].headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!((h("apns-push-type").as_str(), h("apns-priority").as_str()), ("alert", "10"));
    assert_eq!(h("apns-topic"), crate::providers::TOPIC);
    assert_eq!(got[0].body["aps"]["mutable-content"], 1, "the Notification Service Extension runs");
    assert!(!String::from_utf8_lossy(&got[0].raw).contains("extension"), "no message text in the push");
    assert_eq!(wake_of(&got[0]).kind, WakeKind::Message);

    // Bob catches up, goes away; an edit is a background push, priority 5.
    let bob = s.connect(&bob_token).await;
    let bob_id = user_id(&bob);
    drop(bob);
    until_away(&s, bob_id).await;
    let seq = sent["seq"].as_i64().expect("seq");
    alice.ok(json!({"type": "edit", "conversation": conv, "seq": seq, "text": "edited"})).await;
    let got = p.wait_for("apns", &token, 2).await;
    let h = |name: &str| got[1].headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!((h("apns-push-type").as_str(), h("apns-priority").as_str()), ("background", "5"));
    assert_eq!(wake_of(&got[1]).kind, WakeKind::Update);

    // A call goes at once, as a VoIP push to the PushKit token, even though
    // the device was just woken (a call is never held back).
    let call = uuid::Uuid::now_v7().to_string();
    alice.ok(json!({"type": "call_invite", "conversation": conv, "call": call, "video": false})).await;
    let got = p.wait_for("apns", &voip, 1).await;
    let h = |name: &str| got[0].headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!(h("apns-push-type"), "voip");
    assert_eq!(h("apns-topic"), format!("{}.voip", crate::providers::TOPIC));
    let wake = wake_of(&got[0]);
    assert_eq!((wake.kind, wake.call.map(|c| c.to_string())), (WakeKind::Call, Some(call.clone())));
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test]
async fn apns_retries_server_errors_and_forgets_bad_and_unregistered_tokens() {
    let p = Providers::start().await;
    let s = server(&p).await;
    let mut alice = s.user("alice").await;
    let bob_token = s.register("bob").await;
    let carol_token = s.register("carol").await;
    let (bob_apns, carol_apns) = (apns_token(), apns_token());
    p.script("apns", &[(500, r#"{"reason":"InternalServerError"}"#), (429, r#"{"reason":"TooManyRequests"}"#)]);
    let bob = asleep(&s, &bob_token, json!({"kind": "apns", "token": bob_apns, "environment": "production"})).await;
    let conv = dm(&mut alice, "bob").await;
    send(&mut alice, &conv, "hi").await;
    let got = p.wait_for("apns", &bob_apns, 3).await;
    assert_eq!(got.iter().map(|g| g.status).collect::<Vec<_>>(), [500, 429, 200]);
    assert_eq!(targets_of(&s, bob).await, 1);
    // 410 Unregistered: forgotten.
    p.script("apns", &[(410, r#"{"reason":"Unregistered","timestamp":1}"#)]);
    let carol =
        asleep(&s, &carol_token, json!({"kind": "apns", "token": carol_apns, "environment": "production"})).await;
    let conv = dm(&mut alice, "carol").await;
    send(&mut alice, &conv, "hi").await;
    p.wait_for("apns", &carol_apns, 1).await;
    until_no_target(&s, carol).await;
    // 400 BadDeviceToken: forgotten too.
    let carol_again = apns_token();
    p.script("apns", &[(400, r#"{"reason":"BadDeviceToken"}"#)]);
    asleep(&s, &carol_token, json!({"kind": "apns", "token": carol_again, "environment": "production"})).await;
    // Carol connected (caught up) above, so she may be woken again.
    until_away(&s, carol).await;
    send(&mut alice, &conv, "again").await;
    p.wait_for("apns", &carol_again, 1).await;
    until_no_target(&s, carol).await;
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test]
async fn unifiedpush_is_encrypted_for_the_device_signed_with_vapid_and_carries_no_text() {
    let p = Providers::start().await;
    let s = server(&p).await;
    let mut alice = s.user("alice").await;
    let bob_token = s.register("bob").await;
    let carol_token = s.register("carol").await;
    let (endpoint, p256dh, auth) = p.unifiedpush_device();
    let id = endpoint.rsplit('/').next().expect("id").to_owned();
    p.script("up", &[(429, ""), (502, "")]);
    asleep(&s, &bob_token, json!({"kind": "unified_push", "endpoint": endpoint, "p256dh": p256dh, "auth": auth})).await;
    let conv = dm(&mut alice, "bob").await;
    for i in 0..10 {
        send(&mut alice, &conv, &format!("private words {i}")).await;
    }
    // The stand-in decrypted it with the device's keys (RFC 8291) and
    // checked the VAPID JWT; throttling and a bad gateway were retried.
    let got = p.wait_for("up", &id, 3).await;
    assert_eq!(got.iter().map(|g| g.status).collect::<Vec<_>>(), [429, 502, 201]);
    let wake = wake_of(&got[2]);
    assert_eq!((wake.kind, wake.conversation.map(|c| c.to_string())), (WakeKind::Message, Some(conv.clone())));
    let plain = got[2].body.to_string();
    assert!(!plain.contains("private") && !plain.contains("alice"), "{plain}");
    assert!(got[2].raw.len() <= 4096);
    assert_eq!(got[2].headers.get("urgency").and_then(|v| v.to_str().ok()), Some("high"));
    tokio::time::sleep(SETTLE).await;
    assert_eq!(p.got_for("up", &id).len(), 3, "one wake-up for the burst");

    // An endpoint that answers 404 is gone: forgotten.
    let (endpoint, p256dh, auth) = p.unifiedpush_device();
    let carol = asleep(
        &s,
        &carol_token,
        json!({"kind": "unified_push", "endpoint": format!("{endpoint}-gone"), "p256dh": p256dh, "auth": auth}),
    )
    .await;
    let conv = dm(&mut alice, "carol").await;
    send(&mut alice, &conv, "hi").await;
    until_no_target(&s, carol).await;
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test]
async fn bad_or_unconfigured_push_targets_are_refused_with_stable_codes() {
    let p = Providers::start().await;
    let s = server(&p).await;
    let mut bob = s.user("bob").await;
    let (endpoint, p256dh, auth) = p.unifiedpush_device();
    for (target, code) in [
        (json!({"kind": "fcm", "token": ""}), "invalid_request"),
        (json!({"kind": "fcm", "token": "has spaces"}), "invalid_request"),
        (json!({"kind": "fcm", "token": "x".repeat(5000)}), "invalid_request"),
        (json!({"kind": "apns", "token": "not-hex", "environment": "sandbox"}), "invalid_request"),
        (json!({"kind": "apns", "token": apns_token(), "environment": "moon"}), "invalid_request"),
        (json!({"kind": "carrier_pigeon", "token": "x"}), "invalid_request"),
        (json!({"kind": "unified_push", "endpoint": "ftp://x/y", "p256dh": p256dh, "auth": auth}), "invalid_request"),
        (json!({"kind": "unified_push", "endpoint": endpoint, "p256dh": "AAAA", "auth": auth}), "invalid_request"),
        (json!({"kind": "unified_push", "endpoint": endpoint, "p256dh": p256dh, "auth": "AAAA"}), "invalid_request"),
        (
            json!({"kind": "unified_push", "endpoint": "https://user:pw@push.example/x", "p256dh": p256dh, "auth": auth}),
            "invalid_request",
        ),
    ] {
        assert_eq!(bob.err(json!({"type": "set_push", "target": target})).await, code, "{target}");
    }
    // The socket is still fine, and a good target is taken.
    bob.ok(json!({"type": "set_push", "target": {"kind": "fcm", "token": "good"}})).await;

    // A server with no providers refuses every kind.
    let plain = TestServer::start().await;
    let mut dave = plain.user("dave").await;
    for target in [
        json!({"kind": "fcm", "token": "abc"}),
        json!({"kind": "apns", "token": apns_token(), "environment": "sandbox"}),
    ] {
        assert_eq!(dave.err(json!({"type": "set_push", "target": target})).await, "push_unavailable");
    }
    dave.ok(json!({"type": "clear_push"})).await;

    // Without allow_private, a UnifiedPush endpoint on a private or
    // loopback address is refused (the server would post wherever told).
    let mut config = p.config();
    config.fcm = None;
    config.apns = None;
    if let Some(w) = config.webpush.as_mut() {
        w.allow_private = false;
    }
    let strict = TestServer::with_config(move |c| c.push = config).await;
    let mut erin = strict.user("erin").await;
    for endpoint in ["https://127.0.0.1/up/x", "https://10.0.0.8/up", "https://[::1]/x", "https://localhost/x"] {
        let target = json!({"kind": "unified_push", "endpoint": endpoint, "p256dh": p256dh, "auth": auth});
        assert_eq!(erin.err(json!({"type": "set_push", "target": target})).await, "invalid_request", "{endpoint}");
    }
    let fcm = json!({"kind": "fcm", "token": "abc"});
    assert_eq!(erin.err(json!({"type": "set_push", "target": fcm})).await, "push_unavailable");
}

#[tokio::test]
async fn one_device_is_woken_for_one_account_only() {
    let p = Providers::start().await;
    let s = server(&p).await;
    let mut alice = s.user("alice").await;
    let bob_token = s.register("bob").await;
    let carol_token = s.register("carol").await;
    // The same phone, first signed in as bob, then as carol.
    let bob = asleep(&s, &bob_token, json!({"kind": "fcm", "token": "shared-phone"})).await;
    let carol = asleep(&s, &carol_token, json!({"kind": "fcm", "token": "shared-phone"})).await;
    assert_eq!((targets_of(&s, bob).await, targets_of(&s, carol).await), (0, 1));
    let conv = dm(&mut alice, "bob").await;
    send(&mut alice, &conv, "for bob").await;
    tokio::time::sleep(SETTLE).await;
    assert!(p.got().is_empty(), "bob's messages woke carol's phone: {:#?}", p.got());
    let conv = dm(&mut alice, "carol").await;
    send(&mut alice, &conv, "for carol").await;
    p.wait_for("fcm", "shared-phone", 1).await;
}

#[tokio::test]
async fn an_incoming_call_pushes_at_once_and_rings_when_the_device_connects_in_time() {
    let p = Providers::start().await;
    // Messages are gathered for a minute here: a call push that arrives
    // (wait_for gives up after 15 s) was not held with them.
    let mut config = p.config();
    config.collapse = Duration::from_secs(60);
    let s = TestServer::with_config(move |c| c.push = config).await;
    let mut alice = s.user("alice").await;
    let bob_token = s.register("bob").await;
    asleep(&s, &bob_token, json!({"kind": "fcm", "token": "bob-phone"})).await;
    let conv = dm(&mut alice, "bob").await;
    send(&mut alice, &conv, "call me").await;
    let call = uuid::Uuid::now_v7().to_string();
    alice.ok(json!({"type": "call_invite", "conversation": conv, "call": call, "video": true})).await;
    let got = p.wait_for("fcm", "bob-phone", 1).await;
    assert_eq!(got.len(), 1);
    let wake = wake_of(&got[0]);
    assert_eq!(
        (wake.kind, wake.call.map(|c| c.to_string()), wake.video),
        (WakeKind::Call, Some(call.clone()), Some(true))
    );
    assert_eq!(got[0].body["message"]["android"]["priority"], "HIGH");
    assert!(got[0].body["message"]["android"].get("collapse_key").is_none(), "a call is never collapsed away");
    // The phone wakes and connects while it rings: it rings there too.
    let mut bob = s.connect(&bob_token).await;
    let ring =
        bob.expect(|f| f["type"] == "call" && f["call"] == call.as_str() && f["update"]["type"] == "incoming").await;
    assert_eq!(ring["update"]["video"], true);
    bob.ok(json!({"type": "call_accept", "call": call})).await;
    let call_id = call.clone();
    alice
        .expect(move |f| f["type"] == "call" && f["call"] == call_id.as_str() && f["update"]["type"] == "accepted")
        .await;
}
