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
    let silent = message.sender == me
        || message.deleted
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MessageStatus;
    use uuid::Uuid;

    fn message(sender: UserId, conversation: ConversationId) -> ChatMessage {
        ChatMessage {
            conversation,
            client_id: Uuid::now_v7(),
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
    fn settings_turn_off_notifications_or_just_the_sound() {
        let c = case();
        let away = Attention::default();
        let quiet = NotifySettings { sound: false, ..NotifySettings::default() };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &away, &quiet), Decision { notify: true, sound: false });
        let off = NotifySettings { notifications: false, ..NotifySettings::default() };
        assert_eq!(decide(c.me, &message(c.other, c.conv), &away, &off), Decision::SILENT);
    }
}
