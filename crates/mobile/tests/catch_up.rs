//! The push handlers' entry point, called as native code calls it (the C
//! ABI), on a real profile against a real server on loopback.
#![allow(unsafe_code)]

use confab_core::Client;
use std::ffi::{CStr, CString};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

/// The app handler is process-wide: tests that call the entry point take
/// turns with the one that sets it.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Calls `confab_catch_up` as the iOS extension does and parses the reply.
fn catch_up_c(profile: &std::path::Path, wake: &str, budget_ms: u64) -> serde_json::Value {
    let profile = CString::new(profile.to_string_lossy().as_bytes()).expect("path");
    let wake = CString::new(wake).expect("wake");
    // SAFETY: valid NUL-terminated strings; the reply is freed once.
    unsafe {
        let reply = confab_mobile::ffi::confab_catch_up(profile.as_ptr(), wake.as_ptr(), budget_ms);
        assert!(!reply.is_null());
        let json = serde_json::from_str(&CStr::from_ptr(reply).to_string_lossy()).expect("JSON");
        confab_mobile::ffi::confab_string_free(reply);
        json
    }
}

#[test]
fn a_push_handler_catches_up_a_signed_in_profile_and_gets_what_to_show() {
    let _turn = turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (server, conv, bob_profile) = rt.block_on(async {
        let mut config = confab_server::Config::new("127.0.0.1:0".parse().expect("addr"), dir.path().join("server.db"));
        config.limits.requests_per_sec = 10_000;
        let server = confab_server::start(config).await.expect("server");
        let url = format!("http://{}", server.addr);
        let alice = Client::open(&dir.path().join("alice")).await.expect("open");
        alice.register(&url, "alice", PASSWORD).await.expect("register");
        // Bob's phone: the app keeps its profile in <data dir>/profile and
        // its settings beside it; he turned the sound off.
        let bob_profile = dir.path().join("bob-app").join("profile");
        let bob = Client::open(&bob_profile).await.expect("open");
        bob.register(&url, "bob", PASSWORD).await.expect("register");
        std::fs::write(
            dir.path().join("bob-app").join(confab_mobile::SETTINGS_FILE),
            r#"{"settings": {"server_url": "x", "sound": false, "theme": "dark"}}"#,
        )
        .expect("settings");
        alice.start().await.expect("start");
        let conv = alice.open_direct("bob").await.expect("dm");
        let ids = [alice.send(conv, "dinner at 8?").await.expect("queued")];
        alice.wait_sent(&ids).await.expect("sent");
        // Bob wrote a reply offline that never left.
        bob.send(conv, "yes!").await.expect("queued");
        alice.stop().await;
        (server, conv, bob_profile)
    });
    let wake = format!(r#"{{"kind":"message","conversation":"{conv}","count":1}}"#);
    // Off the runtime's threads, as a push handler's thread calls it.
    let reply = catch_up_c(&bob_profile, &wake, 20_000);
    assert_eq!(reply["synced"], true, "{reply}");
    assert_eq!(reply["unsent"], 0, "{reply}");
    let notices = reply["notices"].as_array().expect("notices");
    assert_eq!(notices.len(), 1, "{reply}");
    assert_eq!(
        (notices[0]["title"].as_str(), notices[0]["body"].as_str()),
        (Some("alice"), Some("1 new message from alice"))
    );
    assert_eq!(notices[0]["sound"], false, "the saved settings apply");
    assert!(reply["ringing"].is_null());
    // The reply went out: alice's side has it.
    rt.block_on(async {
        let alice = Client::open(&dir.path().join("alice")).await.expect("open");
        alice.start().await.expect("start");
        let texts = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let page = alice.history(conv, None, 10).await.expect("history");
                if page.len() == 2 && page.iter().all(|m| m.seq.is_some()) {
                    return page.into_iter().map(|m| m.text).collect::<Vec<_>>();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("alice gets the reply");
        assert_eq!(texts, ["dinner at 8?", "yes!"]);
        server.shutdown().await;
    });
}

#[test]
fn bad_input_gets_an_error_reply_never_a_crash() {
    let _turn = turn();
    let dir = tempfile::tempdir().expect("tempdir");
    // A profile that never signed in.
    let reply = catch_up_c(&dir.path().join("profile"), "not json at all", 1_000);
    assert_eq!(reply["error"]["kind"], "not_signed_in", "{reply}");
    // Null arguments.
    // SAFETY: null is allowed and answered with an error.
    let reply = unsafe { confab_mobile::ffi::confab_catch_up(std::ptr::null(), std::ptr::null(), 0) };
    // SAFETY: a reply of confab_catch_up, freed once.
    let json: serde_json::Value = unsafe {
        let v = serde_json::from_str(&CStr::from_ptr(reply).to_string_lossy()).expect("JSON");
        confab_mobile::ffi::confab_string_free(reply);
        v
    };
    assert_eq!(json["error"]["kind"], "invalid_input");
    // SAFETY: freeing null is a no-op.
    unsafe { confab_mobile::ffi::confab_string_free(std::ptr::null_mut()) };
}

#[test]
fn while_the_app_runs_in_the_process_the_push_goes_to_its_client() {
    let _turn = turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    confab_mobile::set_app_handler(Some(Box::new(move |wake, budget| {
        let _ = tx.lock().expect("lock").send((wake, budget));
    })));
    let reply = catch_up_c(&dir.path().join("profile"), r#"{"kind":"update","conversation":null,"count":2}"#, 60_000);
    confab_mobile::set_app_handler(None);
    assert_eq!(reply["handled_by_app"], true, "{reply}");
    let (wake, budget) = rx.recv_timeout(Duration::from_secs(5)).expect("the app was handed the push");
    assert!(wake.contains("\"update\""));
    assert_eq!(budget, confab_mobile::MAX_BUDGET, "the budget is capped");
}
