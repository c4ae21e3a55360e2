//! What the core reports to its users (CLI, app, tests): views of cached
//! state and the one event stream.

use confab_protocol::{CallId, ClientId, ConvKind, ConversationId, ErrorCode, Millis, Reaction, UserId};
use serde::{Deserialize, Serialize};
use specta::Type;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnectionState {
    Connecting {
        attempt: u32,
    },
    Connected,
    /// Waiting `retry_in_ms` before the next attempt.
    Offline {
        retry_in_ms: u64,
        reason: String,
    },
    /// The session was revoked or expired; sign in again.
    SignedOut,
}

/// Where a message stands, from this user's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Own message, saved locally, waiting to be accepted by the server.
    Queued,
    /// Own message, accepted by the server.
    Sent,
    /// Own message, received by every other member's device.
    Delivered,
    /// Own message, read by every other member.
    Read,
    /// Own message the server refused for good (see `error`).
    Failed,
    /// Someone else's message.
    Received,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct ChatMessage {
    /// This device's id for the message, stable from composing until it is
    /// gone: a key for views. Not shared with anyone.
    pub id: i64,
    pub conversation: ConversationId,
    /// This account's own messages only: the idempotency key they were sent
    /// with (for retrying). Others' client ids are theirs to choose, so
    /// they mean nothing here.
    pub client_id: Option<ClientId>,
    /// Assigned by the server; `None` while queued or failed.
    pub seq: Option<i64>,
    pub sender: UserId,
    pub sender_name: String,
    /// Empty when deleted.
    pub text: String,
    pub ts: Millis,
    pub edited_at: Option<Millis>,
    pub deleted: bool,
    pub pinned: bool,
    pub status: MessageStatus,
    pub error: Option<SendError>,
    pub reactions: Vec<Reaction>,
    /// Set for a call's entry ("Missed voice call"): `text` is empty.
    pub call: Option<confab_protocol::CallRecord>,
    /// Files it carries (fetch them with `Client::media`).
    pub attachments: Vec<confab_protocol::Attachment>,
}

/// A search hit, from this device's cache or from the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct SearchResult {
    pub conversation: ConversationId,
    /// `None` for an own message not yet sent.
    pub seq: Option<i64>,
    /// The cached message's id, if this device holds it.
    pub local_id: Option<i64>,
    pub sender: UserId,
    pub sender_name: String,
    pub ts: Millis,
    /// Words around the match; matched terms between `\u{2}` and `\u{3}`.
    pub snippet: String,
    /// Found in this device's cache (else only the server has it).
    pub on_device: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct SendError {
    pub code: ErrorCode,
    pub message: String,
}

/// A member as this device knows them: the protocol's own member state.
pub use confab_protocol::MemberState as MemberView;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct ConversationSummary {
    pub id: ConversationId,
    pub kind: ConvKind,
    /// The group's name, or the other member's username.
    pub title: String,
    pub members: Vec<MemberView>,
    pub last_message: Option<ChatMessage>,
    /// Messages from others after this user's read position.
    pub unread: i64,
    /// True once this user was removed; history stays readable.
    pub left: bool,
}

/// Everything the core tells its user, in one stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent {
    Connection {
        state: ConnectionState,
    },
    /// A message this device had not seen before arrived from the server.
    MessageAdded {
        message: ChatMessage,
        /// False when it came while catching up after time away: those are
        /// summarised by [`ClientEvent::MissedMessages`] once caught up.
        live: bool,
    },
    /// Caught up on a conversation: `count` messages from others arrived
    /// while this device was away (or had fallen behind), `latest` the
    /// newest of them. One per conversation, for one notification.
    MissedMessages {
        conversation: ConversationId,
        count: i64,
        /// Their senders' names, most recent first, each once.
        senders: Vec<String>,
        latest: ChatMessage,
    },
    /// A known message changed: edit, delete, reaction, pin, or its status.
    MessageUpdated {
        message: ChatMessage,
    },
    /// An own unsent message was cancelled: it is gone from this device.
    MessageRemoved {
        conversation: ConversationId,
        id: i64,
    },
    /// A file of an own queued message is uploading: `sent` of `total`
    /// bytes are on the server (committed, so never counted twice).
    UploadProgress {
        client_id: ClientId,
        /// Which of the message's files.
        file: u32,
        sent: u64,
        total: u64,
    },
    Receipt {
        conversation: ConversationId,
        user: UserId,
        delivered_seq: i64,
        read_seq: i64,
    },
    /// Created, renamed, members changed, or reloaded from a snapshot.
    ConversationUpdated {
        conversation: ConversationId,
    },
    Typing {
        conversation: ConversationId,
        user: UserId,
        username: String,
        ttl_ms: u32,
    },
    Presence {
        user: UserId,
        online: bool,
        last_seen: Option<Millis>,
    },
    /// Caught up with the server after (re)connecting.
    SyncCompleted,
    /// A call this device rings for or takes part in changed phase.
    Call {
        call: CallView,
    },
}

/// A call as this device sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct CallView {
    pub call: CallId,
    pub conversation: ConversationId,
    pub peer: UserId,
    pub peer_name: String,
    pub video: bool,
    /// This device placed the call.
    pub outgoing: bool,
    /// This side's microphone is muted.
    pub muted: bool,
    pub phase: CallPhase,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum CallPhase {
    /// We called; their devices ring.
    Calling,
    /// They call; this device rings.
    Ringing,
    /// Answered; media is being set up.
    Connecting,
    /// Media flows since `since` (this device's clock).
    Active { since: Millis },
    /// Media was lost; an ICE restart is under way.
    Reconnecting { since: Millis },
    Ended {
        reason: CallEndReason,
        /// How long media flowed, as this device measured it.
        duration_ms: Option<i64>,
        /// What went wrong, when `reason` is `failed`.
        error: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "snake_case")]
pub enum CallEndReason {
    Declined,
    Cancelled,
    Missed,
    HungUp,
    /// Both called at once and the other call was kept.
    Superseded,
    AnsweredElsewhere,
    DeclinedElsewhere,
    Busy,
    /// Media (or the link to the server) could not be restored in time.
    ConnectionLost,
    /// This device hung up, declined or cancelled.
    EndedHere,
    /// The media engine could not run (no microphone, …).
    Failed,
}
