//! Waking from a push: the server pushes a device that has no socket (to
//! the stand-in providers the server's tests use), and
//! `Client::catch_up` brings the device up to date from a cold start.

use crate::providers::Providers;
use crate::support::*;
use confab_core::notify::NotifySettings;
use confab_core::{CallPhase, Client, ClientEvent};
use confab_protocol::{PushTarget, Wake, WakeKind};
use std::time::Duration;

/// The wake-up FCM delivered to `token`, the `n`th (1-based).
async fn fcm_wake(p: &Providers, token: &str, n: usize) -> Wake {
    let got = p.wait_for("fcm", token, n).await;
    let data = got[n - 1].body["message"]["data"]["confab"].as_str().expect("data.confab").to_owned();
    serde_json::from_str(&data).expect("a wake-up")
}

/// Registers `token` for `client`'s session, then stops it (the phone
/// sleeps) and waits until the server sees it gone.
async fn sleep_with_push(w: &World, client: Client, token: &str) -> uuid::Uuid {
    client.set_push(PushTarget::Fcm { token: token.into() }).await.expect("set_push");
    let me = client.session().await.expect("session").expect("signed in").user;
    client.stop().await;
    drop(client);
    let hub = &w.server.as_ref().expect("server").state.service.hub;
    tokio::time::timeout(T, async {
        while hub.connections(me) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server sees the device go");
    me
}

#[tokio::test]
async fn a_cold_start_from_a_push_syncs_sends_the_outbox_and_shows_what_the_policy_allows() {
    let p = Providers::start().await;
    let w = World::with_push(p.config()).await;
    let alice = w.user("alice").await;
    let carol = w.user("carol").await;
    let bob = w.user("bob").await;
    let dm = alice.open_direct("bob").await.expect("dm");
    let group = alice.create_group("climbers", &["bob".into(), "carol".into()]).await.expect("group");
    let noisy = carol.open_direct("bob").await.expect("dm");
    carol.send(noisy, "first").await.expect("queued");
    texts_when(&bob, noisy, 1).await;
    sleep_with_push(&w, bob, "bob-phone").await;

    // Asleep: bob's phone wrote two replies that never left (no signal),
    // and the others write to him.
    let bob = w.client("bob").await;
    let unsent = [bob.send(dm, "on my way").await.expect("queued"), bob.send(dm, "10 min").await.expect("queued")];
    assert_eq!(bob.outbox_len().await.expect("outbox"), 2);
    let mut sent = vec![alice.send(dm, "are you up?").await.expect("queued")];
    for i in 0..3 {
        sent.push(alice.send(group, &format!("rope at {}", 6 + i)).await.expect("queued"));
    }
    alice.wait_sent(&sent).await.expect("sent");
    let chatter = carol.send(noisy, "muted chatter").await.expect("queued");
    carol.wait_sent(&[chatter]).await.expect("sent");
    let wake = fcm_wake(&p, "bob-phone", 1).await;
    assert_eq!(wake.kind, WakeKind::Message);

    // The push callback: a cold client catches up within its budget.
    let settings = NotifySettings { muted: [noisy].into(), ..NotifySettings::default() };
    let caught = bob.catch_up(Duration::from_secs(20), Some(&wake), &settings).await.expect("catch up");
    assert!(caught.synced, "{caught:?}");
    assert_eq!(caught.unsent, 0, "the outbox went out during the catch-up");
    let mut notices: Vec<(String, String)> = caught.notices.iter().map(|n| (n.title.clone(), n.body.clone())).collect();
    notices.sort();
    assert_eq!(
        notices,
        [
            ("alice".to_owned(), "1 new message from alice".to_owned()),
            ("alice in climbers".to_owned(), "3 new messages from alice".to_owned()),
        ],
        "one notice per conversation, none for the muted one or for bob's own: {caught:#?}"
    );
    assert!(caught.notices.iter().all(|n| n.sound));
    // What the notices summarise is on the device, for the tap that opens it.
    let group_texts = texts_when(&bob, group, 3).await;
    assert_eq!(group_texts, ["rope at 6", "rope at 7", "rope at 8"]);
    // Bob's replies reached alice once, in order.
    for id in unsent {
        assert!(bob.own_message(id).await.expect("cache").expect("own").seq.is_some());
    }
    assert_eq!(texts_when(&alice, dm, 3).await, ["are you up?", "on my way", "10 min"]);

    // A second push while the client still runs: nothing new, done at once.
    let again = bob.catch_up(Duration::from_secs(20), None, &settings).await.expect("catch up");
    assert!(again.synced && again.unsent == 0 && again.notices.is_empty(), "{again:?}");
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test]
async fn a_catch_up_that_cannot_reach_the_server_returns_within_its_budget_and_keeps_the_outbox() {
    let p = Providers::start().await;
    let mut w = World::with_push(p.config()).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let dm = bob.open_direct("alice").await.expect("dm");
    sleep_with_push(&w, bob, "bob-phone").await;
    w.stop_server().await;
    let bob = w.client("bob").await;
    bob.send(dm, "written in a tunnel").await.expect("queued");
    let caught = bob.catch_up(Duration::from_millis(1500), None, &NotifySettings::default()).await.expect("catch up");
    assert!(!caught.synced && caught.unsent == 1, "{caught:?}");
    // The next chance finishes the job.
    w.restart_server().await;
    let caught = bob.catch_up(Duration::from_secs(20), None, &NotifySettings::default()).await.expect("catch up");
    assert!(caught.synced && caught.unsent == 0, "{caught:?}");
    assert_eq!(texts_when(&alice, dm, 1).await, ["written in a tunnel"]);
}

#[tokio::test]
async fn a_call_to_a_sleeping_device_pushes_at_once_and_rings_when_it_catches_up() {
    let p = Providers::start().await;
    let w = World::with_push(p.config()).await;
    // Alice calls from a device whose webview runs WebRTC (media never
    // starts here: the call is declined while it rings).
    let (to_ui, _ui) = tokio::sync::mpsc::channel(16);
    let engine = std::sync::Arc::new(confab_core::call::ExternalEngine::new(to_ui));
    let alice = w.client("alice").await.with_media_engine(engine);
    alice.register(&w.url, "alice", PASSWORD).await.expect("register");
    start_synced(&alice).await;
    let bob = w.user("bob").await;
    let dm = alice.open_direct("bob").await.expect("dm");
    sleep_with_push(&w, bob, "bob-phone").await;

    let mut alice_events = alice.subscribe();
    let call = alice.call(dm, false).await.expect("dial");
    let wake = fcm_wake(&p, "bob-phone", 1).await;
    assert_eq!((wake.kind, wake.call, wake.video), (WakeKind::Call, Some(call), Some(false)));

    let bob = w.client("bob").await;
    let caught =
        bob.catch_up(Duration::from_secs(20), Some(&wake), &NotifySettings::default()).await.expect("catch up");
    let ringing = caught.ringing.expect("the call rings after the catch-up");
    assert_eq!((ringing.call, ringing.phase.clone(), ringing.peer_name.as_str()), (call, CallPhase::Ringing, "alice"));
    // The user declines from the lock screen; alice hears it.
    bob.decline_call(call).await.expect("decline");
    let ended = wait_for(
        &mut alice_events,
        |e| matches!(e, ClientEvent::Call { call: v } if v.call == call && matches!(v.phase, CallPhase::Ended { .. })),
    )
    .await;
    let ClientEvent::Call { call: view } = ended else { unreachable!() };
    assert!(matches!(view.phase, CallPhase::Ended { reason: confab_core::CallEndReason::Declined, .. }), "{view:?}");
}
