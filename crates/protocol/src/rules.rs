//! How events change state: one definition, used by the server when it
//! commits a change and by every client when it applies one, so the two
//! cannot drift. Stores only persist what these functions decide.
//!
//! Who may do what (the sender edits, an admin deletes) is the server's
//! business and is checked before these run; these rules are about the
//! state: a deleted message cannot be edited, reacted to or pinned, an edit
//! is stamped with the event's time, watermarks only move forward.

use crate::{ErrorCode, EventBody, Message, Millis, Reaction, UserId};

/// The message an event is about, if it is about one.
pub fn target_seq(body: &EventBody) -> Option<i64> {
    match body {
        EventBody::Edited { seq, .. }
        | EventBody::Deleted { seq }
        | EventBody::Reaction { seq, .. }
        | EventBody::Pinned { seq, .. } => Some(*seq),
        _ => None,
    }
}

/// Applies a message event (`edited`, `deleted`, `reaction`, `pinned`) made
/// by `actor` at `ts` to `msg`. `Ok(true)`: changed; `Ok(false)`: nothing to
/// change (no event is logged for it); `Err`: not allowed on this message as
/// it is (`not_found` once deleted).
pub fn apply_to_message(msg: &mut Message, actor: UserId, ts: Millis, body: &EventBody) -> Result<bool, ErrorCode> {
    match body {
        EventBody::Edited { text, .. } => {
            if msg.deleted {
                return Err(ErrorCode::NotFound);
            }
            // A call's entry says what happened; nobody rewrites it.
            if msg.call.is_some() {
                return Err(ErrorCode::Forbidden);
            }
            if msg.text == *text {
                return Ok(false);
            }
            msg.text = text.clone();
            msg.edited_at = Some(ts);
            Ok(true)
        }
        EventBody::Deleted { .. } => {
            if msg.deleted {
                return Ok(false);
            }
            msg.deleted = true;
            msg.text.clear();
            // Their blobs go once no message refers to them (the server's
            // media sweep).
            msg.attachments.clear();
            msg.pinned = false;
            msg.reactions.clear();
            Ok(true)
        }
        EventBody::Reaction { emoji, added, .. } => {
            if msg.deleted {
                return Err(ErrorCode::NotFound);
            }
            let has = msg.reactions.iter().any(|r| r.emoji == *emoji && r.users.contains(&actor));
            match (*added, has) {
                (true, false) => Reaction::add_to(&mut msg.reactions, emoji.clone(), actor),
                (false, true) => {
                    for r in &mut msg.reactions {
                        if r.emoji == *emoji {
                            r.users.retain(|u| *u != actor);
                        }
                    }
                    msg.reactions.retain(|r| !r.users.is_empty());
                }
                _ => return Ok(false),
            }
            Ok(true)
        }
        EventBody::Pinned { pinned, .. } => {
            if msg.deleted {
                return Err(ErrorCode::NotFound);
            }
            if msg.pinned == *pinned {
                return Ok(false);
            }
            msg.pinned = *pinned;
            Ok(true)
        }
        _ => Err(ErrorCode::InvalidRequest),
    }
}

/// A member's receipt watermarks `(delivered, read)` after a request for
/// `requested`: they only move forward, never past `last_seq` (the newest
/// message), and reading implies delivery. `None` when nothing moves.
pub fn advance_receipt(current: (i64, i64), requested: (i64, i64), last_seq: i64) -> Option<(i64, i64)> {
    let (cur_delivered, cur_read) = current;
    let (req_delivered, req_read) = requested;
    let read = cur_read.max(req_read.min(last_seq));
    let delivered = cur_delivered.max(req_delivered.max(req_read).min(last_seq)).max(read);
    (delivered != cur_delivered || read != cur_read).then_some((delivered, read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn message(sender: UserId) -> Message {
        Message {
            conversation: Uuid::nil(),
            seq: 1,
            pos: 2,
            client_id: Uuid::nil(),
            sender,
            text: "hi".into(),
            attachments: vec![],
            ts: 10,
            edited_at: None,
            deleted: false,
            pinned: false,
            reactions: vec![],
            call: None,
        }
    }

    #[test]
    fn a_calls_entry_cannot_be_edited_but_can_be_reacted_to_and_deleted() {
        let a = Uuid::now_v7();
        let mut m = message(a);
        m.text.clear();
        m.call = Some(crate::CallRecord { call: Uuid::now_v7(), video: false, outcome: crate::CallOutcome::Missed });
        let edit = EventBody::Edited { seq: 1, text: "I did answer".into() };
        assert_eq!(apply_to_message(&mut m, a, 5, &edit), Err(ErrorCode::Forbidden));
        let react = EventBody::Reaction { seq: 1, emoji: "😢".into(), added: true };
        assert_eq!(apply_to_message(&mut m, a, 6, &react), Ok(true));
        assert_eq!(apply_to_message(&mut m, a, 7, &EventBody::Deleted { seq: 1 }), Ok(true));
    }

    #[test]
    fn call_summaries_read_like_a_messenger() {
        let r = |video, outcome| crate::CallRecord { call: Uuid::nil(), video, outcome };
        assert_eq!(r(false, crate::CallOutcome::Missed).summary(), "Missed voice call");
        assert_eq!(r(true, crate::CallOutcome::Completed { duration_ms: 192_400 }).summary(), "Video call · 3:12");
        assert_eq!(
            r(false, crate::CallOutcome::Completed { duration_ms: 3_723_000 }).summary(),
            "Voice call · 1:02:03"
        );
    }

    #[test]
    fn edits_take_the_event_time_and_deleted_messages_refuse_changes() {
        let a = Uuid::now_v7();
        let mut m = message(a);
        assert_eq!(apply_to_message(&mut m, a, 50, &EventBody::Edited { seq: 1, text: "yo".into() }), Ok(true));
        assert_eq!((m.text.as_str(), m.edited_at), ("yo", Some(50)));
        assert_eq!(apply_to_message(&mut m, a, 60, &EventBody::Edited { seq: 1, text: "yo".into() }), Ok(false));
        assert_eq!(apply_to_message(&mut m, a, 70, &EventBody::Pinned { seq: 1, pinned: true }), Ok(true));
        let react = EventBody::Reaction { seq: 1, emoji: "👍".into(), added: true };
        assert_eq!(apply_to_message(&mut m, a, 71, &react), Ok(true));
        assert_eq!(apply_to_message(&mut m, a, 72, &react), Ok(false));
        assert_eq!(apply_to_message(&mut m, a, 80, &EventBody::Deleted { seq: 1 }), Ok(true));
        assert!(m.deleted && !m.pinned && m.text.is_empty() && m.reactions.is_empty());
        assert_eq!(apply_to_message(&mut m, a, 81, &EventBody::Deleted { seq: 1 }), Ok(false));
        for body in
            [EventBody::Pinned { seq: 1, pinned: true }, EventBody::Edited { seq: 1, text: "back".into() }, react]
        {
            assert_eq!(apply_to_message(&mut m, a, 90, &body), Err(ErrorCode::NotFound), "{body:?}");
        }
    }

    #[test]
    fn reactions_group_by_emoji_and_remove_only_the_actors() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut m = message(a);
        let add = |emoji: &str| EventBody::Reaction { seq: 1, emoji: emoji.into(), added: true };
        apply_to_message(&mut m, a, 1, &add("👍")).expect("ok");
        apply_to_message(&mut m, b, 1, &add("👍")).expect("ok");
        apply_to_message(&mut m, b, 1, &add("🎉")).expect("ok");
        assert_eq!(m.reactions.len(), 2);
        assert_eq!(m.reactions[0].users, vec![a, b]);
        let remove = EventBody::Reaction { seq: 1, emoji: "👍".into(), added: false };
        assert_eq!(apply_to_message(&mut m, b, 1, &remove), Ok(true));
        assert_eq!(m.reactions[0].users, vec![a]);
        assert_eq!(apply_to_message(&mut m, b, 1, &remove), Ok(false));
    }

    #[test]
    fn receipts_only_move_forward_and_reading_implies_delivery() {
        assert_eq!(advance_receipt((0, 0), (5, 0), 10), Some((5, 0)));
        assert_eq!(advance_receipt((5, 0), (3, 0), 10), None);
        assert_eq!(advance_receipt((5, 0), (0, 7), 10), Some((7, 7)));
        assert_eq!(advance_receipt((0, 0), (50, 50), 10), Some((10, 10)));
        assert_eq!(advance_receipt((10, 10), (50, 50), 10), None);
        assert_eq!(advance_receipt((3, 2), (3, 2), i64::MAX), None);
    }
}
