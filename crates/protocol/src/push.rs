//! Push wake-ups: how a device asks to be woken while it has no socket, and
//! what a wake-up says.
//!
//! A wake-up carries no message content, no sender and no name: at most a
//! conversation id and a counter, the way Signal does it. The device
//! connects, catches up and reads what to show from its own copy. So a push
//! provider (Google, Apple, a UnifiedPush distributor) learns only that
//! something happened, and when.

use crate::{CallId, ConversationId};
use serde::{Deserialize, Serialize};
use specta::Type;

/// Longest FCM or APNs token accepted (FCM's are ~160 characters, APNs'
/// 64 hex digits; both are documented as variable).
pub const MAX_PUSH_TOKEN: usize = 4096;
/// Longest UnifiedPush endpoint URL accepted.
pub const MAX_PUSH_ENDPOINT: usize = 2048;

/// Where to wake one device session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PushTarget {
    /// Firebase Cloud Messaging (Android with Google Play services).
    Fcm { token: String },
    /// Apple Push Notification service. `token` takes message wake-ups
    /// (handled by the app's Notification Service Extension); `voip_token`,
    /// from PushKit, takes incoming calls (reported to CallKit).
    Apns {
        token: String,
        #[serde(default)]
        voip_token: Option<String>,
        environment: ApnsEnvironment,
    },
    /// UnifiedPush (Android without Google, through a distributor such as
    /// ntfy): a WebPush endpoint with the device's RFC 8291 keys, both
    /// base64url as the distributor hands them over.
    UnifiedPush { endpoint: String, p256dh: String, auth: String },
}

/// Which APNs a token belongs to: builds signed for development get
/// sandbox tokens, App Store and TestFlight builds production ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "snake_case")]
pub enum ApnsEnvironment {
    Production,
    Sandbox,
}

impl PushTarget {
    /// The kind's wire name.
    pub fn kind(&self) -> &'static str {
        match self {
            PushTarget::Fcm { .. } => "fcm",
            PushTarget::Apns { .. } => "apns",
            PushTarget::UnifiedPush { .. } => "unified_push",
        }
    }

    /// What identifies the device to its provider: one device is woken for
    /// one session only (a token registered again by another session moves
    /// to it).
    pub fn address(&self) -> String {
        match self {
            PushTarget::Fcm { token } => format!("fcm:{token}"),
            PushTarget::Apns { token, .. } => format!("apns:{token}"),
            PushTarget::UnifiedPush { endpoint, .. } => format!("up:{endpoint}"),
        }
    }

    /// Shape checks that need no key material: lengths and characters.
    pub fn check_shape(&self) -> Result<(), &'static str> {
        fn token(t: &str, what: &'static str) -> Result<(), &'static str> {
            let ok = !t.is_empty()
                && t.len() <= MAX_PUSH_TOKEN
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.=+/".contains(&b));
            if ok {
                Ok(())
            } else {
                Err(what)
            }
        }
        fn hex(t: &str, what: &'static str) -> Result<(), &'static str> {
            if (32..=MAX_PUSH_TOKEN).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(())
            } else {
                Err(what)
            }
        }
        match self {
            PushTarget::Fcm { token: t } => token(t, "an FCM token is 1-4096 URL-safe characters"),
            PushTarget::Apns { token: t, voip_token, .. } => {
                hex(t, "an APNs token is hex digits")?;
                match voip_token {
                    Some(v) => hex(v, "a PushKit token is hex digits"),
                    None => Ok(()),
                }
            }
            PushTarget::UnifiedPush { endpoint, p256dh, auth } => {
                if endpoint.len() > MAX_PUSH_ENDPOINT || endpoint.chars().any(|c| c.is_control() || c == ' ') {
                    return Err("the endpoint is at most 2048 characters, without spaces");
                }
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    return Err("the endpoint is an https URL");
                }
                token(p256dh, "p256dh is base64url")?;
                token(auth, "auth is base64url")
            }
        }
    }
}

/// What a wake-up is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "snake_case")]
pub enum WakeKind {
    /// New messages (sent with high priority).
    Message,
    /// Other changes: edits, deletions, reactions, members (normal
    /// priority: catching up can wait for the OS's next good moment).
    Update,
    /// An incoming call, sent at once (APNs: a VoIP push for CallKit).
    Call,
}

/// The whole content of a wake-up. FCM carries it as the data field
/// `confab` (JSON text), APNs as the key `confab` beside `aps`, WebPush as
/// the (encrypted) body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Wake {
    pub kind: WakeKind,
    /// The conversation of the newest change (a collapsed burst may span
    /// several; the device catches up on all of them anyway).
    pub conversation: Option<ConversationId>,
    /// Changes collapsed into this wake-up.
    pub count: u32,
    /// The ringing call, for [`WakeKind::Call`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(PushTarget::Fcm { token: "abc:DEF-123_x".into() }.check_shape().is_ok());
        assert!(PushTarget::Fcm { token: String::new() }.check_shape().is_err());
        assert!(PushTarget::Fcm { token: "a b".into() }.check_shape().is_err());
        assert!(PushTarget::Fcm { token: "x".repeat(MAX_PUSH_TOKEN + 1) }.check_shape().is_err());
        let apns =
            |t: &str| PushTarget::Apns { token: t.into(), voip_token: None, environment: ApnsEnvironment::Sandbox };
        assert!(apns(&"ab".repeat(32)).check_shape().is_ok());
        assert!(apns("zz").check_shape().is_err());
        let up = |e: &str| PushTarget::UnifiedPush { endpoint: e.into(), p256dh: "BA".into(), auth: "AA".into() };
        assert!(up("https://ntfy.sh/upXYZ").check_shape().is_ok());
        assert!(up("ftp://x").check_shape().is_err());
        assert!(up("https://a/\nb").check_shape().is_err());
    }

    #[test]
    fn wire() {
        let t: PushTarget =
            serde_json::from_str(r#"{"kind":"apns","token":"00","environment":"sandbox"}"#).expect("apns");
        assert_eq!(t, PushTarget::Apns { token: "00".into(), voip_token: None, environment: ApnsEnvironment::Sandbox });
        let w = Wake { kind: WakeKind::Message, conversation: None, count: 3, call: None, video: None };
        assert_eq!(serde_json::to_string(&w).expect("json"), r#"{"kind":"message","conversation":null,"count":3}"#);
    }
}
