//! Confab's wire protocol: every frame the client and server exchange.
//!
//! Frames are JSON text over a WebSocket (`GET /v1/ws`). The client sends
//! [`Request`]s; each carries an `id` and gets exactly one reply, either
//! [`ServerFrame::Result`] or [`ServerFrame::Error`] with a stable
//! [`ErrorCode`]. The server also pushes [`ServerFrame::Event`] (persisted,
//! ordered per conversation by `pos`) and ephemeral frames (typing, presence).
//!
//! Every persisted change to a conversation is one [`ConvEvent`] with a
//! gap-free per-conversation position `pos`; messages additionally get a
//! gap-free per-conversation `seq`. A client that knows it has applied
//! everything up to `pos = n` asks for `after: n` and receives the rest, in
//! order. See `docs/protocol.md` for the full description.

mod codes;
mod decode;
mod http;
pub mod media;
pub mod push;
pub mod rules;

pub use codes::ErrorCode;
pub use decode::{decode_request, decode_server_frame, FrameError};
pub use http::{AuthRequest, AuthResponse, HttpError};
pub use media::{Attachment, AttachmentRef, SearchHit};
pub use push::{ApnsEnvironment, PushTarget, Wake, WakeKind};

use serde::{Deserialize, Serialize};
use specta::Type;
use uuid::Uuid;

/// Bumped on incompatible changes; sent in [`RequestBody::Hello`].
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest text frame the server accepts, in bytes. Larger frames get
/// [`ErrorCode::FrameTooLarge`] (or a close with code 1009 when they exceed
/// the transport limit, which is a few times bigger).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// The longest message text, in characters (Unicode scalar values).
pub const MAX_MESSAGE_CHARS: usize = 8000;
/// The longest group name, in characters.
pub const MAX_GROUP_NAME_CHARS: usize = 100;
/// The most events one [`RequestBody::Events`] reply carries.
pub const MAX_PAGE: u32 = 500;
/// Soft byte budget of one reply (events, catch-up, history, sync): items
/// are added until the reply reaches it, and `has_more` says it was cut. A
/// reply always carries at least one item, so it always makes progress.
pub const REPLY_BUDGET_BYTES: usize = 256 * 1024;
/// The largest frame the server ever sends. The largest legal single item
/// (an 8000-character message of escaped control characters, a 1000-member
/// `created` event or conversation info) is far below it; clients must
/// accept frames of at least this size.
pub const MAX_SERVER_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// The most conversations one [`RequestBody::CatchUp`] or
/// [`RequestBody::DeliveredMany`] names.
pub const MAX_BATCH: usize = 100;
/// How long a typing indicator lasts unless renewed.
pub const TYPING_TTL_MS: u32 = 6000;

pub type UserId = Uuid;
pub type ConversationId = Uuid;
/// Client-generated message id (UUIDv7). The server deduplicates sends on
/// (sender, client id), so a retry never creates a second message.
pub type ClientId = Uuid;
/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// A frame sent by the client. `id` is chosen by the client and echoed in the
/// reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub body: RequestBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestBody {
    /// Must be the first frame on a socket. Reply: [`Reply::Welcome`].
    Hello {
        token: String,
        protocol: u32,
    },
    /// Lists the caller's conversations with their latest positions, paged
    /// by id (`after`: the last id of the previous page). With `digest` (see
    /// [`sync_digest`]) equal to the server's, the reply is just
    /// `unchanged: true`: a reconnect with nothing new costs one round trip.
    /// Reply: [`Reply::Sync`].
    Sync {
        #[serde(default)]
        digest: Option<String>,
        #[serde(default)]
        after: Option<ConversationId>,
    },
    /// One conversation's current state (members with receipts and presence).
    /// Reply: [`Reply::Conversation`].
    Conversation {
        conversation: ConversationId,
    },
    /// Events of one conversation after position `after`, oldest first.
    /// Reply: [`Reply::Events`], or error `replay_unavailable`.
    Events {
        conversation: ConversationId,
        after: i64,
        limit: u32,
    },
    /// Events of up to [`MAX_BATCH`] conversations at once, each after its
    /// own position. Reply: [`Reply::CatchUp`], one page per conversation in
    /// request order; pages past the byte budget come back empty with
    /// `has_more`.
    CatchUp {
        from: Vec<CatchUpFrom>,
    },
    /// Current state of messages (newest first) with `seq < before`.
    /// Reply: [`Reply::Messages`].
    History {
        conversation: ConversationId,
        before: Option<i64>,
        limit: u32,
    },
    /// Opens (or creates) the one direct conversation with `username`.
    /// Reply: [`Reply::Conversation`].
    OpenDirect {
        username: String,
    },
    /// Creates a group; the caller becomes its admin. Reply: [`Reply::Conversation`].
    CreateGroup {
        name: String,
        members: Vec<String>,
    },
    AddMember {
        conversation: ConversationId,
        username: String,
    },
    RemoveMember {
        conversation: ConversationId,
        username: String,
    },
    RenameGroup {
        conversation: ConversationId,
        name: String,
    },
    SetAdmin {
        conversation: ConversationId,
        username: String,
        admin: bool,
    },
    /// Reply: [`Reply::Sent`], after the message is committed. The text
    /// may be empty when the message carries attachments, each a finished
    /// upload of the sender's.
    Send {
        conversation: ConversationId,
        client_id: ClientId,
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<AttachmentRef>,
    },
    /// Up to [`MAX_BATCH`] messages to one conversation, in this order: an
    /// outbox's way to send many in one round trip (and the server's in one
    /// commit). Each is checked, deduplicated and stored as a `send` would
    /// be. Reply: [`Reply::SentMany`], after all are committed, one result
    /// per message in the same order.
    SendMany {
        conversation: ConversationId,
        messages: Vec<OutgoingText>,
    },
    Edit {
        conversation: ConversationId,
        seq: i64,
        text: String,
    },
    Delete {
        conversation: ConversationId,
        seq: i64,
    },
    React {
        conversation: ConversationId,
        seq: i64,
        emoji: String,
        add: bool,
    },
    Pin {
        conversation: ConversationId,
        seq: i64,
        pinned: bool,
    },
    /// "This device has received messages up to `seq`." Receipts move
    /// watermarks beside the log, not events in it: the reply `done {pos:
    /// null}` comes once the watermark is committed, and members learn of
    /// it from coalesced [`ServerFrame::Receipts`].
    Delivered {
        conversation: ConversationId,
        seq: i64,
    },
    /// "This device has received messages up to `seq`" for up to
    /// [`MAX_BATCH`] conversations at once. Reply: `done {pos: null}`; a
    /// conversation the caller is not in is skipped.
    DeliveredMany {
        receipts: Vec<ReceiptPos>,
    },
    /// "The user has read messages up to `seq`." Like [`RequestBody::Delivered`].
    Read {
        conversation: ConversationId,
        seq: i64,
    },
    /// The members' receipt watermarks of up to [`MAX_BATCH`]
    /// conversations, each paged by member (`after`: the last user of the
    /// previous page). Reply: [`Reply::Watermarks`]. A device fetches them
    /// where a `sync` head's `marks` differs from the version it holds.
    Watermarks {
        from: Vec<WatermarksFrom>,
    },
    /// Calls the other member of a direct conversation; `call` is a new
    /// UUID chosen by the caller. Every device of the callee rings.
    /// Reply: [`Reply::Call`]; `busy` when either side is in a call.
    CallInvite {
        conversation: ConversationId,
        call: CallId,
        video: bool,
    },
    /// Takes a ringing call on this device (the first device wins).
    /// Reply: [`Reply::Call`].
    CallAccept {
        call: CallId,
    },
    /// Declines a ringing call (every device stops ringing).
    CallDecline {
        call: CallId,
    },
    /// Ends a call: cancels it while it rings (caller), hangs up once
    /// answered (either side).
    CallHangup {
        call: CallId,
    },
    /// WebRTC signaling for an answered call, relayed to the other side's
    /// device in the call.
    CallSignal {
        call: CallId,
        signal: CallSignal,
    },
    /// After reconnecting: this device takes its place in an answered call
    /// again. Only the device session that was in the call may rejoin, and
    /// only within the server's rejoin grace. Reply: [`Reply::Call`];
    /// `not_found` when the call is over.
    CallRejoin {
        call: CallId,
    },
    /// This account's signed-in devices. Reply: [`Reply::Sessions`].
    Sessions {},
    /// Signs one of this account's devices out (its sockets close with
    /// 4001). Reply: `done {pos: null}`; `not_found` for another account's
    /// or an unknown session.
    RevokeSession {
        session: Uuid,
    },
    /// Signs out every device of this account but the caller's.
    RevokeOtherSessions {},
    /// Registers how to wake this device session while it has no socket
    /// open, replacing any target it had (see [`push`]). The target belongs
    /// to the session: logout and revocation delete it, and a token another
    /// session had registered moves to this one. Reply: `done {pos: null}`;
    /// `invalid_request` for a malformed target, `push_unavailable` when
    /// the server is not configured for that kind.
    SetPush {
        target: push::PushTarget,
    },
    /// Forgets this device session's push target. Reply: `done {pos: null}`.
    ClearPush {},
    /// Full-text search over the caller's conversations (or one of them),
    /// newest first: hits with `ts < before` (all if `None`), at most
    /// `limit` ([`media::MAX_SEARCH_HITS`]). Reply: [`Reply::Search`].
    Search {
        query: String,
        #[serde(default)]
        conversation: Option<ConversationId>,
        #[serde(default)]
        before: Option<Millis>,
        limit: u32,
    },
    /// The user is typing; renew at most every few seconds.
    Typing {
        conversation: ConversationId,
    },
    Ping {},
}

impl RequestBody {
    /// The `type` tag of every request, for telling unknown types from
    /// malformed known ones.
    pub const TYPES: &'static [&'static str] = &[
        "hello",
        "sync",
        "conversation",
        "catch_up",
        "events",
        "history",
        "open_direct",
        "create_group",
        "add_member",
        "remove_member",
        "rename_group",
        "set_admin",
        "send",
        "send_many",
        "edit",
        "delete",
        "react",
        "pin",
        "delivered",
        "delivered_many",
        "read",
        "watermarks",
        "typing",
        "call_invite",
        "call_accept",
        "call_decline",
        "call_hangup",
        "call_signal",
        "call_rejoin",
        "sessions",
        "revoke_session",
        "revoke_other_sessions",
        "set_push",
        "clear_push",
        "search",
        "ping",
    ];
}

/// A frame sent by the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Result {
        id: u64,
        result: Reply,
    },
    Error {
        /// `None` when the request's id could not be read.
        id: Option<u64>,
        code: ErrorCode,
        message: String,
        /// Set with `rate_limited`: when a retry may succeed.
        retry_after_ms: Option<u64>,
    },
    /// A persisted change to a conversation.
    Event {
        event: ConvEvent,
    },
    /// Ephemeral: `user` is typing in `conversation` for the next `ttl_ms`.
    Typing {
        conversation: ConversationId,
        user: UserId,
        ttl_ms: u32,
    },
    /// Ephemeral: presence of a user who shares a conversation with you.
    Presence {
        user: UserId,
        online: bool,
        last_seen: Option<Millis>,
    },
    /// Ephemeral: something happened to a call this device rings for or
    /// takes part in. Never replayed; the outcome is logged as
    /// [`EventBody::Call`].
    Call {
        call: CallId,
        conversation: ConversationId,
        /// The other party.
        peer: UserId,
        update: CallUpdate,
    },
    /// Ephemeral: presence of several users at once — your online contacts
    /// right after `welcome`, the online members of a group you just joined.
    PresenceList {
        presence: Vec<Presence>,
        /// True for the list right after `welcome`: every contact not
        /// listed (in it or in the lists that follow it) is offline.
        snapshot: bool,
    },
    /// Ephemeral, coalesced: members' receipt watermarks that moved (each
    /// member's newest). Applied to the watermarks at version `since` (or
    /// later) it gives the state at `version`; a device holding an older
    /// version applies the marks (they only move forward) but keeps its
    /// version, and refetches at the next `sync`.
    Receipts {
        conversation: ConversationId,
        since: i64,
        version: i64,
        marks: Vec<Watermark>,
    },
}

/// A member's receipt watermarks: every message up to `delivered_seq`
/// reached one of their devices, every one up to `read_seq` was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Watermark {
    pub user: UserId,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct WatermarksFrom {
    pub conversation: ConversationId,
    /// Members after this user id (the previous page's last).
    pub after: Option<UserId>,
}

/// One conversation's part of a [`Reply::Watermarks`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct WatermarkPage {
    pub conversation: ConversationId,
    /// The watermarks' version when the first page was read; later pages
    /// may be newer (watermarks only move forward).
    pub version: i64,
    /// Ordered by user id.
    pub marks: Vec<Watermark>,
    pub has_more: bool,
    /// Set instead of marks: `not_member`, ….
    pub error: Option<ErrorCode>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct Presence {
    pub user: UserId,
    pub online: bool,
    pub last_seen: Option<Millis>,
}

pub type CallId = Uuid;

/// What happened to a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallUpdate {
    /// Someone calls: ring.
    Incoming {
        video: bool,
    },
    /// The callee took the call on this device's other side: start WebRTC.
    Accepted,
    /// Another device of this account took (or declined) the call: stop
    /// ringing.
    AnsweredElsewhere,
    DeclinedElsewhere,
    /// WebRTC signaling from the other side.
    Signal {
        signal: CallSignal,
    },
    /// The call is over.
    Ended {
        reason: CallEnd,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "snake_case")]
pub enum CallEnd {
    Declined,
    Cancelled,
    /// Nobody answered in time.
    Missed,
    HungUp,
    /// Both called each other at once: this call gave way to the other
    /// (the one with the lesser call id survives).
    Superseded,
    /// The other side's device lost its connection and did not come back
    /// within the rejoin grace.
    ConnectionLost,
}

/// WebRTC signaling, relayed as is between the two devices in a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallSignal {
    Offer { sdp: String },
    Answer { sdp: String },
    Candidate { candidate: String, sdp_mid: Option<String>, sdp_m_line_index: Option<u16> },
}

/// One message of a [`RequestBody::SendMany`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct OutgoingText {
    pub client_id: ClientId,
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentRef>,
}

/// What became of one message of a [`RequestBody::SendMany`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SendResult {
    /// Committed (as [`Reply::Sent`]).
    Sent { client_id: ClientId, seq: i64, pos: i64, ts: Millis, duplicate: bool },
    /// Refused for good, with the code a `send` would have failed with.
    Refused { client_id: ClientId, code: ErrorCode, message: String },
}

/// A STUN or TURN server for WebRTC's ICE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

/// How a call ended, as logged in its conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallOutcome {
    Missed,
    Declined,
    Cancelled,
    Completed { duration_ms: i64 },
}

/// One signed-in device of an account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct DeviceSession {
    pub id: Uuid,
    /// The label the device gave when signing in.
    pub device: Option<String>,
    pub created: Millis,
    /// Its last connection (sessions unused for long expire).
    pub last_seen: Millis,
    /// The session of the device asking.
    pub current: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct CatchUpFrom {
    pub conversation: ConversationId,
    pub after: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct ReceiptPos {
    pub conversation: ConversationId,
    pub seq: i64,
}

/// One conversation's part of a [`Reply::CatchUp`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct EventPage {
    pub conversation: ConversationId,
    pub events: Vec<ConvEvent>,
    pub last_pos: i64,
    pub has_more: bool,
    /// Set instead of events: `not_member`, `replay_unavailable`, ….
    pub error: Option<ErrorCode>,
}

/// Where a conversation stands, as listed by `sync`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct ConversationHead {
    pub id: ConversationId,
    pub last_pos: i64,
    pub last_seq: i64,
    /// The caller's own delivered watermark.
    pub delivered_seq: i64,
    /// Version of the members' receipt watermarks: it grows with every
    /// change to them.
    pub marks: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Welcome {
        user: UserId,
        username: String,
        server_time: Millis,
        /// Changes whenever the server's log may have been rewound (a new
        /// database, a restore from backup). A client that sees a new epoch
        /// drops what it synced and syncs again, keeping its outbox.
        epoch: String,
    },
    Sync {
        conversations: Vec<ConversationHead>,
        /// [`sync_digest`] of all the caller's conversations.
        digest: String,
        /// The request's digest matched: nothing changed, the list is empty.
        unchanged: bool,
        /// More conversations follow: ask again with `after` = the last id.
        has_more: bool,
    },
    CatchUp {
        pages: Vec<EventPage>,
    },
    /// Pages in request order until the reply's byte budget is spent; ask
    /// again for the conversations left out.
    Watermarks {
        pages: Vec<WatermarkPage>,
    },
    Conversation {
        conversation: ConversationInfo,
    },
    Events {
        conversation: ConversationId,
        events: Vec<ConvEvent>,
        last_pos: i64,
        has_more: bool,
    },
    Messages {
        conversation: ConversationId,
        messages: Vec<Message>,
        /// Older messages exist (the page was cut by `limit` or bytes).
        has_more: bool,
    },
    /// The message is committed. `duplicate` is true when this client id had
    /// already been accepted (a retry).
    Sent {
        conversation: ConversationId,
        client_id: ClientId,
        seq: i64,
        pos: i64,
        ts: Millis,
        duplicate: bool,
    },
    /// One result per message of a `send_many`, in its order.
    SentMany {
        conversation: ConversationId,
        results: Vec<SendResult>,
    },
    Sessions {
        sessions: Vec<DeviceSession>,
    },
    /// Newest first; `has_more`: ask again with `before` = the last hit's
    /// `ts`.
    Search {
        hits: Vec<SearchHit>,
        has_more: bool,
    },
    /// A call this device takes part in: the other side, and the ICE
    /// servers to use.
    Call {
        call: CallId,
        peer: UserId,
        ice_servers: Vec<IceServer>,
    },
    /// The change was committed at `pos` (or was a no-op and `pos` is `None`).
    Done {
        pos: Option<i64>,
    },
    Pong {},
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    Direct,
    Group,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct Member {
    pub user: UserId,
    pub username: String,
    pub admin: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct MemberState {
    pub user: UserId,
    pub username: String,
    pub admin: bool,
    pub delivered_seq: i64,
    pub read_seq: i64,
    pub online: bool,
    pub last_seen: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct ConversationInfo {
    pub id: ConversationId,
    pub kind: ConvKind,
    pub name: Option<String>,
    pub members: Vec<MemberState>,
    /// Position of the newest event.
    pub last_pos: i64,
    /// Sequence number of the newest message.
    pub last_seq: i64,
    /// Version of the members' watermarks (see [`ConversationHead::marks`]).
    pub marks: i64,
}

/// One persisted change to a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct ConvEvent {
    pub conversation: ConversationId,
    /// Gap-free per conversation, starting at 1.
    pub pos: i64,
    pub ts: Millis,
    /// Who made the change.
    pub actor: UserId,
    pub body: EventBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    Created {
        kind: ConvKind,
        name: Option<String>,
        members: Vec<Member>,
    },
    Message {
        seq: i64,
        client_id: ClientId,
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
    },
    Edited {
        seq: i64,
        text: String,
    },
    Deleted {
        seq: i64,
    },
    Reaction {
        seq: i64,
        emoji: String,
        added: bool,
    },
    Pinned {
        seq: i64,
        pinned: bool,
    },
    MemberAdded {
        member: Member,
    },
    MemberRemoved {
        user: UserId,
    },
    Renamed {
        name: String,
    },
    AdminChanged {
        user: UserId,
        admin: bool,
    },
    /// A call's outcome (the actor is the caller). It is also a message
    /// of the conversation, at `seq`, with [`Message::call`] set, so
    /// history, unread counts and notifications see it. (`seq` 0: logged
    /// before calls were messages.)
    Call {
        #[serde(default)]
        seq: i64,
        call: CallId,
        video: bool,
        outcome: CallOutcome,
    },
    /// A member's receipt watermarks moved forward. Logs written before
    /// receipts moved beside the log still hold these; servers no longer
    /// append them.
    Receipt {
        user: UserId,
        delivered_seq: i64,
        read_seq: i64,
    },
}

/// A message as it is now (after edits, deletes and reactions).
///
/// Identity: a stored message *is* (`conversation`, `seq`), both assigned by
/// the server. `client_id` is only its sender's idempotency key: unique per
/// sender, chosen by the sender, so any account can put any value there.
/// A client matches on it only for its own account's messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct Message {
    pub conversation: ConversationId,
    pub seq: i64,
    pub pos: i64,
    pub client_id: ClientId,
    pub sender: UserId,
    /// Empty when deleted.
    pub text: String,
    /// Empty when deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    pub ts: Millis,
    pub edited_at: Option<Millis>,
    pub deleted: bool,
    pub pinned: bool,
    pub reactions: Vec<Reaction>,
    /// Set when this message is a call's entry ("Missed voice call"): its
    /// text is empty and it cannot be edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallRecord>,
}

/// A call, as its entry in the conversation records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct CallRecord {
    pub call: CallId,
    pub video: bool,
    pub outcome: CallOutcome,
}

impl CallRecord {
    /// "Missed voice call", "Video call · 3:12".
    pub fn summary(&self) -> String {
        let kind = if self.video { "video" } else { "voice" };
        match self.outcome {
            CallOutcome::Missed => format!("Missed {kind} call"),
            CallOutcome::Declined => format!("Declined {kind} call"),
            CallOutcome::Cancelled => format!("Cancelled {kind} call"),
            CallOutcome::Completed { duration_ms } => {
                let secs = duration_ms.max(0) / 1000;
                let kind = if self.video { "Video" } else { "Voice" };
                if secs >= 3600 {
                    format!("{kind} call · {}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
                } else {
                    format!("{kind} call · {}:{:02}", secs / 60, secs % 60)
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct Reaction {
    pub emoji: String,
    pub users: Vec<UserId>,
}

impl Reaction {
    /// Adds `user`'s `emoji` to a message's reaction list, grouping by emoji
    /// in first-seen order.
    pub fn add_to(list: &mut Vec<Reaction>, emoji: String, user: UserId) {
        match list.iter_mut().find(|r| r.emoji == emoji) {
            Some(r) => r.users.push(user),
            None => list.push(Reaction { emoji, users: vec![user] }),
        }
    }
}

/// The digest `sync` compares: SHA-256 over `"<id>:<last_pos>:<marks>\n"`
/// of every conversation, sorted by id, as lowercase hex. The client
/// computes it over the positions and watermark versions it has applied;
/// equal digests mean nothing to fetch.
pub fn sync_digest(mut conversations: Vec<(ConversationId, i64, i64)>) -> String {
    use sha2::{Digest, Sha256};
    conversations.sort_unstable();
    let mut hasher = Sha256::new();
    for (id, pos, marks) in conversations {
        hasher.update(format!("{id}:{pos}:{marks}\n").as_bytes());
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a message text: non-empty after trimming, at most
/// [`MAX_MESSAGE_CHARS`] characters.
pub fn validate_text(text: &str) -> Result<(), ErrorCode> {
    // NUL is never text a person wrote, and Postgres cannot store it.
    if text.trim().is_empty() || text.contains('\0') {
        return Err(ErrorCode::InvalidRequest);
    }
    if text.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ErrorCode::MessageTooLong);
    }
    Ok(())
}

/// Checks a reaction: one short emoji-like string, no whitespace or control
/// characters.
pub fn validate_emoji(emoji: &str) -> Result<(), ErrorCode> {
    let n = emoji.chars().count();
    if n == 0 || n > 16 || emoji.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ErrorCode::InvalidRequest);
    }
    Ok(())
}

/// Usernames: 3–32 characters of `a-z`, `0-9`, `_`, `.`, `-`, starting with a
/// letter or digit. Compared as given (clients lowercase before sending).
pub fn validate_username(name: &str) -> Result<(), ErrorCode> {
    let ok_len = (3..=32).contains(&name.len());
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    let ok_start = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(ErrorCode::InvalidUsername)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_with_flat_type_tag() {
        let req = Request {
            id: 7,
            body: RequestBody::Send {
                conversation: Uuid::nil(),
                client_id: Uuid::nil(),
                text: "hi".into(),
                attachments: vec![],
            },
        };
        let json = serde_json::to_value(&req).expect("serialize");
        assert_eq!(json["type"], "send");
        assert_eq!(json["id"], 7);
        assert_eq!(json["text"], "hi");
        let back: Request = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, req);
    }

    #[test]
    fn every_request_type_is_listed() {
        // Each listed type must parse as a known variant (possibly with
        // missing fields) rather than as an unknown variant.
        for t in RequestBody::TYPES {
            let err = serde_json::from_str::<RequestBody>(&format!(r#"{{"type":"{t}","__x":1}}"#));
            if let Err(e) = err {
                assert!(!e.to_string().contains("unknown variant"), "{t}: {e}");
            }
        }
    }

    #[test]
    fn usernames() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("bob_2.x-y").is_ok());
        assert!(validate_username("Al").is_err());
        assert!(validate_username("ALICE").is_err());
        assert!(validate_username("_alice").is_err());
        assert!(validate_username("a b c").is_err());
        assert!(validate_username(&"a".repeat(33)).is_err());
    }

    #[test]
    fn texts() {
        assert_eq!(validate_text("  "), Err(ErrorCode::InvalidRequest));
        assert_eq!(validate_text(&"é".repeat(MAX_MESSAGE_CHARS)), Ok(()));
        assert_eq!(validate_text(&"é".repeat(MAX_MESSAGE_CHARS + 1)), Err(ErrorCode::MessageTooLong));
        assert!(validate_emoji("👍").is_ok());
        assert!(validate_emoji("").is_err());
        assert!(validate_emoji("a b").is_err());
    }
}
