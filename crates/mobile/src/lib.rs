//! What a phone's push handler calls when the app is not running.
//!
//! A push wakes a process that has no webview and no Tauri: Android starts
//! the app's `FirebaseMessagingService` (or UnifiedPush receiver), iOS its
//! Notification Service Extension or, for a call, the app in the background
//! for PushKit. They call [`catch_up_json`] through [`ffi`] (C ABI, iOS) or
//! the JNI export (Android), with the app's profile directory and the
//! wake-up's JSON, and show what comes back: notices and a ringing call.
//! Everything else is [`confab_core::Client::catch_up`].
//!
//! The profile directory is the app's `<app data dir>/profile`; the user's
//! notification settings are read from `<app data dir>/settings.json`,
//! the file the app's settings are stored in ([`SETTINGS_FILE`]).

pub mod ffi;

use confab_core::notify::NotifySettings;
use confab_core::{CaughtUp, Client};
use confab_protocol::Wake;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// The app's settings file, in its data directory (tauri-plugin-store).
pub const SETTINGS_FILE: &str = "settings.json";
/// The key the settings are stored under in that file.
pub const SETTINGS_KEY: &str = "settings";
/// The longest catch-up a push handler may ask for: an iOS Notification
/// Service Extension has 30 s, Android's high-priority FCM about 20 s.
pub const MAX_BUDGET: Duration = Duration::from_secs(28);

/// What the running app does with a push, when it runs in this process.
type AppHandler = Box<dyn Fn(String, Duration) + Send + Sync>;

static APP: Mutex<Option<AppHandler>> = Mutex::new(None);

/// The app, running in this process with its own client, takes the pushes
/// from here on (`None`: it stopped). On Android the push service runs in
/// the app's process: a second client on the same profile would catch up
/// twice and notify twice, so the push goes to the app's client instead.
pub fn set_app_handler(handler: Option<AppHandler>) {
    *APP.lock().unwrap_or_else(|e| e.into_inner()) = handler;
}

/// The user's notification settings as the app saved them beside
/// `profile`: the fields the app stores under [`SETTINGS_KEY`] that
/// [`NotifySettings`] has, over its defaults (all defaults when there is no
/// file or it does not parse).
pub fn notify_settings(profile: &Path) -> NotifySettings {
    let stored = profile
        .parent()
        .and_then(|root| std::fs::read(root.join(SETTINGS_FILE)).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    let Some(stored) = stored.as_ref().and_then(|v| v[SETTINGS_KEY].as_object()) else {
        return NotifySettings::default();
    };
    let Ok(serde_json::Value::Object(mut merged)) = serde_json::to_value(NotifySettings::default()) else {
        return NotifySettings::default();
    };
    for (key, value) in merged.iter_mut() {
        if let Some(v) = stored.get(key) {
            *value = v.clone();
        }
    }
    serde_json::from_value(serde_json::Value::Object(merged)).unwrap_or_default()
}

/// Catches up the profile at `profile` after a push whose wake-up is
/// `wake` (JSON; anything else still means "catch up"), within `budget`
/// (at most [`MAX_BUDGET`]). Blocks: call it off the main thread.
///
/// Returns a [`CaughtUp`] as JSON, or `{"error": {"kind", "message"}}`, or,
/// when the app runs in this process ([`set_app_handler`]), hands the push
/// to it and returns `{"handled_by_app": true}`: the app notifies itself.
/// The client is stopped before returning: the process may be frozen or
/// killed at any moment after, and the outbox and cache are already on disk.
pub fn catch_up_json(profile: &Path, wake: &str, budget: Duration) -> String {
    let budget = budget.min(MAX_BUDGET);
    if let Some(app) = APP.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        app(wake.to_owned(), budget);
        return serde_json::json!({ "handled_by_app": true }).to_string();
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ("internal", format!("cannot start a runtime: {e}")))
        .and_then(|rt| rt.block_on(catch_up(profile, wake, budget)));
    match result {
        Ok(caught) => serde_json::to_string(&caught).unwrap_or_else(|e| error("internal", &e.to_string())),
        Err((kind, message)) => error(kind, &message),
    }
}

async fn catch_up(profile: &Path, wake: &str, budget: Duration) -> Result<CaughtUp, (&'static str, String)> {
    let wake: Option<Wake> = serde_json::from_str(wake).ok();
    let client = Client::open(profile).await.map_err(|e| ("internal", e.to_string()))?;
    match client.session().await {
        Ok(Some(s)) if !s.token.is_empty() => {}
        Ok(_) => return Err(("not_signed_in", "this device is signed out".into())),
        Err(e) => return Err(("internal", e.to_string())),
    }
    let caught = client.catch_up(budget, wake.as_ref(), &notify_settings(profile)).await;
    client.stop().await;
    caught.map_err(|e| ("internal", e.to_string()))
}

pub(crate) fn error(kind: &str, message: &str) -> String {
    serde_json::json!({ "error": { "kind": kind, "message": message } }).to_string()
}
