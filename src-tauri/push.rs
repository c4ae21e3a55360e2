//! Push in the app: the UI hands over the token or endpoint the platform's
//! push plugin gave it ([`register_push`]); a push that arrives while the
//! app's process runs is handed to [`on_push`], which catches up through
//! the core ([`confab_core::Client::catch_up`]).
//!
//! Notifications for what the catch-up brings come from the shell's event
//! forwarder, as for a running app (one policy, one place). A process the
//! OS starts for the push alone (the app was not running) reaches the same
//! catch-up through [`confab_mobile`] from the native part in `mobile/`,
//! which shows the returned notices itself.

use crate::error::Result;
use crate::shell::Shell;
use confab_core::CaughtUp;
use confab_mobile::MAX_BUDGET;
use confab_protocol::{PushTarget, Wake};
use std::time::Duration;
use tauri::{AppHandle, Manager, Runtime, State};

/// Wakes this device through `target` while the app is not running.
#[tauri::command]
#[specta::specta]
pub async fn register_push(shell: State<'_, Shell>, target: PushTarget) -> Result<()> {
    Ok(shell.client().await?.set_push(target).await?)
}

/// Stops waking this device.
#[tauri::command]
#[specta::specta]
pub async fn unregister_push(shell: State<'_, Shell>) -> Result<()> {
    Ok(shell.client().await?.clear_push().await?)
}

/// A push arrived (`data`: the wake-up's JSON, as the provider delivered
/// it): resume the saved session if the app has none running, and catch up
/// within `budget_ms` (at most [`MAX_BUDGET`]).
#[tauri::command]
#[specta::specta]
pub async fn on_push(app: AppHandle, data: String, budget_ms: u32) -> Result<CaughtUp> {
    handle_push(&app, &data, Duration::from_millis(budget_ms.into())).await
}

pub async fn handle_push<R: Runtime>(app: &AppHandle<R>, data: &str, budget: Duration) -> Result<CaughtUp> {
    if app.state::<Shell>().client().await.is_err() {
        crate::shell::resume(app).await?;
    }
    catch_up_running(app, data, budget).await
}

/// [`handle_push`] for an app whose client runs (never starts one).
pub async fn catch_up_running<R: Runtime>(app: &AppHandle<R>, data: &str, budget: Duration) -> Result<CaughtUp> {
    // Anything but a well-formed wake-up still means "catch up": the push
    // came from our server through the provider, and it says nothing more.
    let wake: Option<Wake> = serde_json::from_str(data).ok();
    let client = app.state::<Shell>().client().await?;
    let settings = crate::settings::load(app).notify_settings();
    let caught = client.catch_up(budget.min(MAX_BUDGET), wake.as_ref(), &settings).await?;
    if !caught.synced {
        tracing::info!(unsent = caught.unsent, "a push's catch-up ran out of time; the next one finishes");
    }
    Ok(caught)
}
