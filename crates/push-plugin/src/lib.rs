//! The app's native phone part, as a Tauri plugin: the push target the
//! platform gave this device, the system's call UI (CallKit on iOS; the
//! call notification and a foreground service on Android), and pushes that
//! reach the running app (iOS).
//!
//! The native halves live in `mobile/android-push` (Kotlin,
//! `app.confab.push.ConfabPushPlugin`) and `mobile/ios/ConfabPushPlugin`
//! (Swift); both answer the same commands, which only the shell calls (from
//! Rust, not granted to the web UI). On desktops the plugin is present and
//! does nothing, so the shell calls it without platform checks.
//!
//! The shell decides what to do (`src-tauri/phone.rs`); this crate only
//! carries the calls across.

use confab_protocol::{CallId, ConversationId};
use serde::{Deserialize, Serialize};
use tauri::plugin::{Builder, TauriPlugin};
use tauri::{Manager, Runtime};

#[cfg(desktop)]
mod desktop;
#[cfg(mobile)]
mod mobile;

#[cfg(desktop)]
pub use desktop::Phone;
#[cfg(mobile)]
pub use mobile::Phone;

/// A native call failed (the message is the platform's).
#[derive(Debug, thiserror::Error)]
#[error("phone: {0}")]
pub struct Error(pub String);

pub type Result<T> = std::result::Result<T, Error>;

/// What the user chose outside the app's UI: in a notification that opened
/// the app (Android) or in the system's call screen (CallKit).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Action {
    pub action: ActionKind,
    #[serde(default)]
    pub call: Option<CallId>,
    #[serde(default)]
    pub conversation: Option<ConversationId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Show this conversation (a message notification was tapped).
    Open,
    /// Show the ringing call (its notification was tapped).
    Show,
    Accept,
    Decline,
    /// An answered call was ended from the system's UI.
    Hangup,
    Mute,
    Unmute,
    /// From a newer native half: ignored.
    #[serde(other)]
    Unknown,
}

/// A call ringing for this device, for the system's call UI.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IncomingCall {
    pub call: CallId,
    pub conversation: ConversationId,
    pub peer_name: String,
    pub video: bool,
}

/// Why a call ended, as the system's call UI distinguishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Hung up or declined on this device.
    Local,
    /// The other side hung up or cancelled.
    Remote,
    Unanswered,
    AnsweredElsewhere,
    DeclinedElsewhere,
    Failed,
}

/// A background push that reached the running app (iOS): catch up with
/// `data`, then [`Phone::finish_push`] with `id`.
#[derive(Clone, Debug, Deserialize)]
pub struct Push {
    pub id: i64,
    /// The wake-up as the provider delivered it (JSON text), if any.
    #[serde(default)]
    pub data: Option<String>,
}

/// What the native side reports by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The push target changed: read [`Phone::pending_target`] again.
    Target,
    /// There are actions: [`Phone::take_actions`].
    Action,
    /// There are pushes: [`Phone::take_pushes`] (iOS).
    Push,
}

impl Event {
    /// The native event names (both platforms).
    pub fn name(self) -> &'static str {
        match self {
            Event::Target => "target",
            Event::Action => "call-action",
            Event::Push => "push",
        }
    }
}

/// Access to the plugin's [`Phone`] from the app.
pub trait PhoneExt<R: Runtime> {
    fn phone(&self) -> &Phone<R>;
}

impl<R: Runtime, T: Manager<R>> PhoneExt<R> for T {
    fn phone(&self) -> &Phone<R> {
        self.state::<Phone<R>>().inner()
    }
}

/// The plugin (name `confab-push`, as the native halves expect).
pub fn init<R: Runtime>() -> TauriPlugin<R> {
    Builder::new("confab-push")
        .setup(|app, api| {
            #[cfg(mobile)]
            let phone = mobile::init(app, api)?;
            #[cfg(desktop)]
            let phone = desktop::init(app, api);
            app.manage(phone);
            Ok(())
        })
        .build()
}

/// Where the app keeps its data when the platform says otherwise than
/// `app_data_dir()`: on iOS the App Group container it shares with its
/// notification extension.
#[cfg(any(mobile, test))]
pub(crate) fn root_of_profile(profile: Option<String>) -> Option<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    profile.and_then(|p| Path::new(&p).parent().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn actions_from_both_native_halves_parse() {
        let call = "0f6b2d3e-9a41-4c3b-8d7e-2a1b3c4d5e6f";
        let conversation = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        // Android: a call notification's Answer button.
        let a: Action = serde_json::from_value(serde_json::json!({
            "action": "accept", "call": call, "conversation": conversation
        }))
        .unwrap();
        assert_eq!(a.action, ActionKind::Accept);
        assert_eq!(a.call.unwrap().to_string(), call);
        assert_eq!(a.conversation.unwrap().to_string(), conversation);
        // Android: a message notification; iOS: CallKit's mute, no conversation.
        let open: Action =
            serde_json::from_value(serde_json::json!({"action": "open", "conversation": conversation})).unwrap();
        assert_eq!((open.action, open.call), (ActionKind::Open, None));
        let mute: Action = serde_json::from_value(serde_json::json!({"action": "mute", "call": call})).unwrap();
        assert_eq!((mute.action, mute.conversation), (ActionKind::Mute, None));
        let newer: Action = serde_json::from_value(serde_json::json!({"action": "hold", "call": call})).unwrap();
        assert_eq!(newer.action, ActionKind::Unknown);
    }

    #[test]
    fn commands_carry_the_names_the_native_halves_read() {
        let call = IncomingCall {
            call: "0f6b2d3e-9a41-4c3b-8d7e-2a1b3c4d5e6f".parse().unwrap(),
            conversation: "7c9e6679-7425-40de-944b-e07fc1f90ae7".parse().unwrap(),
            peer_name: "alice".into(),
            video: true,
        };
        let json = serde_json::to_value(&call).unwrap();
        // IncomingCallArgs (Swift) and CallArgs (Kotlin) read these keys.
        assert_eq!(json["peerName"], "alice");
        assert_eq!(json["call"], "0f6b2d3e-9a41-4c3b-8d7e-2a1b3c4d5e6f");
        assert_eq!(json["video"], true);
        assert_eq!(serde_json::to_value(EndReason::AnsweredElsewhere).unwrap(), "answered_elsewhere");
    }

    #[test]
    fn the_shared_root_is_the_profiles_parent() {
        let root = root_of_profile(Some("/private/var/group/profile".into()));
        assert_eq!(root, Some(PathBuf::from("/private/var/group")));
        assert_eq!(root_of_profile(None), None);
    }
}
