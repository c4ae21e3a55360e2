//! Notification policy: whether an incoming message should raise a system
//! notification and play a sound. Plain logic, so every platform's shell
//! applies the same rules and tests need no desktop.

use crate::types::ChatMessage;
use confab_protocol::{ConversationId, UserId};
use serde::{Deserialize, Serialize};
use specta::Type;
use std::collections::HashSet;

/// What the UI is doing right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Attention {
    /// The app window has keyboard focus.
    pub window_focused: bool,
    /// The conversation shown on screen, if any.
    pub open_conversation: Option<ConversationId>,
    /// The conversation whose composer the user is typing in right now.
    pub typing_in: Option<ConversationId>,
}

/// The user's preferences.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct NotifySettings {
    pub notifications: bool,
    pub sound: bool,
    pub muted: HashSet<ConversationId>,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings { notifications: true, sound: true, muted: HashSet::new() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Decision {
    pub notify: bool,
    pub sound: bool,
}

impl Decision {
    pub const SILENT: Decision = Decision { notify: false, sound: false };
}

/// Decides for one newly arrived message:
/// - never for your own messages, deleted ones, or a muted conversation;
/// - never for the conversation you are typing in;
/// - otherwise only when the window is unfocused or another conversation is
///   open, since then you would not see it arrive.
///
/// The sound follows the same rule, if enabled.
pub fn decide(me: UserId, message: &ChatMessage, attention: &Attention, settings: &NotifySettings) -> Decision {
    let conv = message.conversation;
    // A call's entry notifies only of a call this user did not take; they
    // saw the others ring.
    let taken_call = message.call.is_some_and(|c| {
        !matches!(c.outcome, confab_protocol::CallOutcome::Missed | confab_protocol::CallOutcome::Cancelled)
    });
    let silent = message.sender == me
        || message.deleted
        || taken_call
        || !settings.notifications
        || settings.muted.contains(&conv)
        || attention.typing_in == Some(conv);
    if silent {
        return Decision::SILENT;
    }
    let visible = attention.window_focused && attention.open_conversation == Some(conv);
    if visible {
        return Decision::SILENT;
    }
    Decision { notify: true, sound: settings.sound }
}

/// What a notification (or a one-line preview) says for a message: its
/// text, or for a call's entry its summary ("Missed voice call").
pub fn body(message: &ChatMessage) -> String {
    if let Some(call) = &message.call {
        return call.summary();
    }
    let files = match message.attachments.as_slice() {
        [] => None,
        [one] if one.is_image() || one.mime.starts_with("image/") => Some("📷 Photo".to_owned()),
        [one] => Some(format!("📎 {}", one.name)),
        many => Some(format!("📎 {} files", many.len())),
    };
    let text: String = message.text.chars().take(200).collect();
    match files {
        Some(f) if text.trim().is_empty() => f,
        Some(f) => format!("{f} · {text}"),
        None => text,
    }
}

/// The text of the one notification for messages that arrived while away
/// (a [`crate::ClientEvent::MissedMessages`]): "3 new messages from Alice",
/// "5 new messages from Alice and Bob", "9 new messages from Alice, Bob and
/// 2 others". Whether to show it at all is [`decide`] on the newest one.
pub fn missed_summary(count: i64, senders: &[String]) -> String {
    let what = if count == 1 { "1 new message".to_owned() } else { format!("{count} new messages") };
    let from = match senders {
        [] => return what,
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [a, b, c] => format!("{a}, {b} and {c}"),
        [a, b, rest @ ..] => format!("{a}, {b} and {} others", rest.len()),
    };
    format!("{what} from {from}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MessageStatus;
    use uuid::Uuid;

    fn message(sender: UserId, conversation: ConversationId) -> ChatMessage {
        ChatMessage {
            id: 1,
            conversation,
            client_id: None,
            seq: Some(1),
            sender,
            sender_name: "alice".into(),
            text: "hi".into(),
            ts: 0,
            edited_at: None,
            deleted: false,
            pinned: false,
            status: MessageStatus::Received,
            error: None,
            reactions: vec![],
            call: None,
            attachments: vec![],
        }
    }

    #[test]
    fn a_file_without_a_caption_still_says_something() {
        let file = |name: &str, mime: &str| confab_protocol::Attachment {
            hash: "0".repeat(64),
            name: name.into(),
            size: 1,
            mime: mime.into(),
            width: None,
            height: None,
            thumbnail: false,
        };
        let mut m = message(Uuid::now_v7(), Uuid::now_v7());
        m.text.clear();
        m.attachments = vec![file("a.png", "image/png")];
        assert_eq!(body(&m), "📷 Photo");
        m.attachments = vec![file("report.pdf", "application/pdf")];
        assert_eq!(body(&m), "📎 report.pdf");
        m.text = "for you".into();
        assert_eq!(body(&m), "📎 report.pdf · for you");
        m.attachments.push(file("b.bin", "application/octet-stream"));
        assert_eq!(body(&m), "📎 2 files · for you");
    }

    #[test]
    fn a_call_entry_notifies_only_of_a_call_not_taken() {
        let (me, other, conv) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let attention = Attention::default();
        let settings = NotifySettings::default();
        for (outcome, notify) in [
            (confab_protocol::CallOutcome::Missed, true),
            (confab_protocol::CallOutcome::Cancelled, true),
            (confab_protocol::CallOutcome::Declined, false),
            (confab_protocol::CallOutcome::Completed { duration_ms: 5_000 }, false),
        ] {
            let mut m = message(other, conv);
            m.text.clear();
            m.call = Some(confab_protocol::CallRecord { call: Uuid::now_v7(), video: false, outcome });
            assert_eq!(decide(me, &m, &attention, &settings).notify, notify, "{outcome:?}");
            assert!(body(&m).to_lowercase().contains("voice call"), "{}", body(&m));
        }
    }

    struct Case {
        me: UserId,
        other: UserId,
        conv: ConversationId,
        elsewhere: ConversationId,
    }

    fn case() -> Case {
        Case { me: Uuid::now_v7(), other: Uuid::now_v7(), conv: Uuid::now_v7(), elsewhere: Uuid::now_v7() }
    }

    const LOUD: Decision = Decision { notify: true, sound: true };

    #[test]
    fn unfocused_window_notifies_with_sound() {
        let c = case();
        let a = Attention { window_focused: false, open_conversation: Some(c.conv), typing_in: None };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &a, &NotifySettings::default()), LOUD);
    }

    #[test]
    fn focused_on_that_conversation_stays_silent_but_another_one_notifies() {
        let c = case();
        let s = NotifySettings::default();
        let open_here = Attention { window_focused: true, open_conversation: Some(c.conv), typing_in: None };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &open_here, &s), Decision::SILENT);
        let open_elsewhere = Attention { window_focused: true, open_conversation: Some(c.elsewhere), typing_in: None };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &open_elsewhere, &s), LOUD);
        let nothing_open = Attention { window_focused: true, open_conversation: None, typing_in: None };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &nothing_open, &s), LOUD);
    }

    #[test]
    fn never_for_own_deleted_muted_or_while_typing_there() {
        let c = case();
        let away = Attention::default();
        let s = NotifySettings::default();
        assert_eq!(decide(c.me, &message(c.me, c.conv), &away, &s), Decision::SILENT);
        let mut deleted = message(c.other, c.conv);
        deleted.deleted = true;
        assert_eq!(decide(c.me, &deleted, &away, &s), Decision::SILENT);
        let muted = NotifySettings { muted: [c.conv].into(), ..NotifySettings::default() };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &away, &muted), Decision::SILENT);
        let typing = Attention { window_focused: false, open_conversation: None, typing_in: Some(c.conv) };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &typing, &s), Decision::SILENT);
        // Typing elsewhere does not silence this conversation.
        let typing_elsewhere = Attention { typing_in: Some(c.elsewhere), ..Attention::default() };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &typing_elsewhere, &s), LOUD);
    }

    #[test]
    fn missed_messages_are_summarised_in_one_line() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(missed_summary(1, &names(&["alice"])), "1 new message from alice");
        assert_eq!(missed_summary(5, &names(&["alice", "bob"])), "5 new messages from alice and bob");
        assert_eq!(missed_summary(3, &names(&["a", "b", "c"])), "3 new messages from a, b and c");
        assert_eq!(missed_summary(300, &names(&["a", "b", "c", "d"])), "300 new messages from a, b and 2 others");
    }

    #[test]
    fn settings_turn_off_notifications_or_just_the_sound() {
        let c = case();
        let away = Attention::default();
        let quiet = NotifySettings { sound: false, ..NotifySettings::default() };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &away, &quiet), Decision { notify: true, sound: false });
        let off = NotifySettings { notifications: false, ..NotifySettings::default() };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &away, &off), Decision::SILENT);
    }
}
