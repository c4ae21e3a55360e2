//! The native halves (Kotlin on Android, Swift on iOS), called with
//! `run_mobile_plugin` under the same command names on both.

use crate::{Action, EndReason, Error, Event, IncomingCall, Push, Result};
use confab_protocol::{CallId, PushTarget};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tauri::ipc::Channel;
use tauri::plugin::{PluginApi, PluginHandle};
use tauri::{AppHandle, Runtime};

#[cfg(target_os = "ios")]
tauri::ios_plugin_binding!(init_plugin_confab_push);

pub(crate) fn init<R: Runtime>(_app: &AppHandle<R>, api: PluginApi<R, ()>) -> Result<Phone<R>> {
    #[cfg(target_os = "android")]
    let handle = api.register_android_plugin("app.confab.push", "ConfabPushPlugin");
    #[cfg(target_os = "ios")]
    let handle = api.register_ios_plugin(init_plugin_confab_push);
    Ok(Phone(handle.map_err(|e| Error(e.to_string()))?))
}

pub struct Phone<R: Runtime>(PluginHandle<R>);

#[derive(Deserialize)]
struct TargetReply {
    #[serde(default)]
    target: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ActionsReply {
    actions: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct PushesReply {
    pushes: Vec<Push>,
}

#[derive(Deserialize)]
struct BackgroundReply {
    background: bool,
}

#[derive(Deserialize)]
struct PathReply {
    #[serde(default)]
    path: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallArgs<'a> {
    call: CallId,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<EndReason>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FinishArgs {
    id: i64,
    new_data: bool,
}

#[derive(Serialize)]
struct ListenArgs {
    event: &'static str,
    handler: Channel,
}

impl<R: Runtime> Phone<R> {
    /// Blocks until the native side answers: only for commands that answer
    /// on the IPC queue, since setup calls them on iOS's main thread.
    fn run<T: DeserializeOwned>(&self, command: &str, args: impl Serialize) -> Result<T> {
        self.0.run_mobile_plugin(command, args).map_err(|e| Error(e.to_string()))
    }

    /// Waits without blocking a thread: some commands answer on the main
    /// thread (UIKit, CallKit).
    async fn call<T: DeserializeOwned>(&self, command: &str, args: impl Serialize) -> Result<T> {
        self.0.run_mobile_plugin_async(command, args).await.map_err(|e| Error(e.to_string()))
    }

    /// The push target the platform gave this device, if any yet. One the
    /// shell cannot read (a newer native half) counts as none.
    pub async fn pending_target(&self) -> Result<Option<PushTarget>> {
        let reply: TargetReply = self.call("pendingTarget", ()).await?;
        Ok(reply.target.and_then(|t| serde_json::from_value(t).ok()))
    }

    /// What the user chose outside the app since the last call (each once).
    pub async fn take_actions(&self) -> Result<Vec<Action>> {
        let reply: ActionsReply = self.call("takeCallActions", ()).await?;
        Ok(reply.actions.into_iter().filter_map(|a| serde_json::from_value(a).ok()).collect())
    }

    /// Rings through the system (CallKit; Android's call notification).
    pub async fn incoming_call(&self, call: &IncomingCall) -> Result<()> {
        self.call("incomingCall", call).await
    }

    /// The call is under way on this device (answered here, or placed here):
    /// stop ringing, keep it going in the background.
    pub async fn answer_call(&self, call: CallId, peer_name: &str) -> Result<()> {
        self.call("answerCall", CallArgs { call, peer_name: Some(peer_name), reason: None }).await
    }

    pub async fn end_call(&self, call: CallId, reason: EndReason) -> Result<()> {
        self.call("endCall", CallArgs { call, peer_name: None, reason: Some(reason) }).await
    }

    pub async fn take_pushes(&self) -> Result<Vec<Push>> {
        let reply: PushesReply = self.call("takePushes", ()).await?;
        Ok(reply.pushes)
    }

    pub async fn finish_push(&self, id: i64, new_data: bool) -> Result<()> {
        self.call("finishPush", FinishArgs { id, new_data }).await
    }

    /// Whether the app runs in the background now (iOS launches it there
    /// for a push).
    pub async fn in_background(&self) -> Result<bool> {
        let reply: BackgroundReply = self.call("isInBackground", ()).await?;
        Ok(reply.background)
    }

    /// The directory the app shares with its extensions (iOS: the App
    /// Group container), where the profile and settings must live.
    pub fn shared_root(&self) -> Result<Option<PathBuf>> {
        let reply: PathReply = self.run("profileDir", ())?;
        Ok(crate::root_of_profile(reply.path))
    }

    /// Calls `on` each time the native side reports `event`.
    pub fn listen(&self, event: Event, on: impl Fn() + Send + Sync + 'static) -> Result<()> {
        let handler = Channel::new(move |_| {
            on();
            Ok(())
        });
        self.run("registerListener", ListenArgs { event: event.name(), handler })
    }
}
