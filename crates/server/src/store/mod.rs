//! Storage behind a trait: [`SqliteStore`] is the embedded default,
//! [`PostgresStore`] the shared database of several nodes ([`open`] picks
//! one from the `--db` argument).
//!
//! Every change to a conversation goes through [`Store::append`], which in
//! one transaction assigns the next gap-free `pos` (and `seq` for messages),
//! updates the current-state tables and appends the event to the log. The
//! caller publishes the returned event only after this commit. The rules an
//! append follows are written once, in [`write`]; a store only persists.

mod postgres;
mod sqlite;
pub mod write;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Bytes an event or message adds to a reply beyond its text: ids, numbers,
/// field names (an over-estimate, so replies stay under their budget).
pub const EVENT_OVERHEAD: usize = 200;
/// Bytes one [`Watermark`] takes in a reply (an over-estimate).
pub const WATERMARK_BYTES: usize = 100;
/// Bytes a message in a history reply adds beyond its text.
pub const MESSAGE_OVERHEAD: usize = 300;

/// Bytes one message row adds to a history reply, as the budget counts
/// them: its text (control characters are sent as six-byte escapes), its
/// call record and its attachments (both JSON), and the rest.
pub fn history_bytes(text: &str, call: Option<&str>, attachments: Option<&str>) -> usize {
    text.len()
        + 5 * text.chars().filter(|c| c.is_control()).count()
        + MESSAGE_OVERHEAD
        + call.map_or(0, |c| c.len() + 10)
        + attachments.map_or(0, |a| a.len() + 20)
}

/// Unfinished uploads one account may have at once.
pub const MAX_OPEN_UPLOADS: i64 = 50;
/// Blobs one media sweep looks at.
pub const SWEEP_BATCH: i64 = 500;

/// Whether a new upload of `length` bytes fits: fewer than
/// [`MAX_OPEN_UPLOADS`] unfinished (`open`), and within `quota` with what
/// the account already `used`.
pub fn check_quota(used: i64, open: i64, length: u64, quota: u64) -> Result<()> {
    if open >= MAX_OPEN_UPLOADS {
        return Err(ApiError::new(
            confab_protocol::ErrorCode::QuotaExceeded,
            "too many unfinished uploads; finish or cancel some",
        ));
    }
    if (used as u64).saturating_add(length) > quota {
        return Err(confab_protocol::ErrorCode::QuotaExceeded.into());
    }
    Ok(())
}

/// Whether `--db` names a Postgres database rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// Opens the store `db` names: a `postgres://` URL, or a SQLite file path.
pub async fn open(db: &str) -> Result<std::sync::Arc<dyn Store>> {
    Ok(if is_postgres_url(db) {
        std::sync::Arc::new(PostgresStore::connect(db).await?)
    } else {
        std::sync::Arc::new(SqliteStore::open(std::path::Path::new(db)).await?)
    })
}

use crate::error::{ApiError, Result};
use async_trait::async_trait;
use confab_protocol::{
    ConvEvent, ConvKind, ConversationHead, ConversationId, ConversationInfo, EventBody, Member, Message, Millis,
    UserId, Watermark,
};
use uuid::Uuid;

pub type SessionId = Uuid;

/// Sessions one account may hold; signing in on one more device signs the
/// least recently used out, so the device list stays bounded.
pub const MAX_SESSIONS_PER_USER: i64 = 100;

pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

#[derive(Clone, Debug)]
pub struct Session {
    pub id: SessionId,
    pub user: UserId,
    pub username: String,
    pub last_seen: Millis,
}

/// A page of one conversation's log.
#[derive(Clone, Debug)]
pub struct LogPage {
    pub events: Vec<ConvEvent>,
    /// The conversation's newest position.
    pub last_pos: i64,
    /// About how many bytes the events take in a reply, as the budget
    /// counted them.
    pub bytes: usize,
}

/// Which of a user's sessions to revoke.
#[derive(Clone, Copy, Debug)]
pub enum Revoke {
    One(SessionId),
    AllBut(SessionId),
}

#[derive(Clone, Copy, Debug)]
pub struct Membership {
    pub kind: ConvKind,
    pub admin: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct MessageMeta {
    pub sender: UserId,
    pub deleted: bool,
}

/// A receipt to record: `user`'s devices got messages up to `delivered`,
/// and read up to `read`.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub conversation: ConversationId,
    pub user: UserId,
    pub delivered: i64,
    pub read: i64,
}

/// A watermark change that committed: the member's marks now, and the
/// conversation's watermark version after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marked {
    pub conversation: ConversationId,
    pub mark: Watermark,
    pub version: i64,
}

/// A page of one conversation's watermarks.
#[derive(Clone, Debug)]
pub struct MarksPage {
    pub version: i64,
    pub marks: Vec<Watermark>,
    pub has_more: bool,
}

#[derive(Clone, Debug)]
pub enum AppendOutcome {
    /// Committed; publish `event` to `recipients` (the members after the
    /// change, plus a removed member).
    Appended { event: ConvEvent, recipients: Vec<UserId> },
    /// A send whose (sender, client id) was already accepted.
    Duplicate { conversation: ConversationId, seq: i64, pos: i64, ts: Millis },
    /// Nothing changed (a receipt that does not advance, a reaction that is
    /// already there, …); nothing to publish.
    Unchanged,
}

/// An upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    pub id: Uuid,
    pub user: UserId,
    pub length: u64,
    /// Bytes durable on the blob store: the offset a client resumes from.
    pub committed: u64,
    /// The SHA-256 (hex) the client declared, checked on completion.
    pub sha256: Option<String>,
    /// Once complete: the blob it became.
    pub blob: Option<String>,
}

/// A finished blob, as the server learned it from the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// SHA-256, lower-case hex.
    pub hash: String,
    pub size: u64,
    pub mime: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// An image a thumbnail can be made of.
    pub thumbable: bool,
    /// The blob holding its thumbnail, once made.
    pub thumbnail: Option<String>,
}

/// One full-text search, already checked.
#[derive(Clone, Debug)]
pub struct SearchQuery {
    pub user: UserId,
    /// What to look for ([`confab_protocol::media::search_words`]): every
    /// word, the last one as a prefix.
    pub words: Vec<String>,
    pub conversation: Option<ConversationId>,
    pub before: Option<Millis>,
    pub limit: u32,
}

/// Uploads, blobs, who may read them, and search: the rows beside the
/// bytes (which live in a [`crate::media::BlobStore`]).
#[async_trait]
pub trait MediaStore: Send + Sync + 'static {
    /// Records a new upload, unless the user's blobs and unfinished uploads
    /// would then take more than `quota` bytes (`quota_exceeded`).
    async fn create_upload(&self, upload: &Upload, quota: u64) -> Result<()>;
    async fn upload(&self, id: Uuid) -> Result<Option<Upload>>;
    /// Records that `committed` bytes of an upload are durable.
    async fn commit_upload(&self, id: Uuid, committed: u64) -> Result<()>;
    async fn delete_upload(&self, id: Uuid) -> Result<()>;
    /// Deletes uploads untouched since `before`; returns the ids of the
    /// unfinished ones (their bytes are to be discarded).
    async fn expire_uploads(&self, before: Millis) -> Result<Vec<Uuid>>;
    /// Files a finished upload as `blob`, owned by the uploader, and marks
    /// the upload complete, in one transaction (the same bytes uploaded
    /// before keep their row).
    async fn file_blob(&self, upload: Uuid, owner: UserId, blob: &BlobInfo) -> Result<()>;
    async fn blob(&self, hash: &str) -> Result<Option<BlobInfo>>;
    /// The blob, if `user` uploaded it; renews the claim, so the sweep
    /// spares it while a message naming it is on its way.
    async fn claim_blob(&self, user: UserId, hash: &str) -> Result<Option<BlobInfo>>;
    async fn set_thumbnail(&self, hash: &str, thumbnail: &str) -> Result<()>;
    /// No thumbnail can be made of this blob (it does not decode): do not
    /// try again.
    async fn no_thumbnail(&self, hash: &str) -> Result<()>;
    /// Whether `user` may download the blob: a current member of a
    /// conversation with a message that carries it, or its uploader.
    async fn may_read_blob(&self, user: UserId, hash: &str) -> Result<bool>;
    /// Forgets blobs no message carries and nobody claimed since
    /// `claimed_before`; returns the blobs (and thumbnails no other blob
    /// uses) to remove from the blob store.
    async fn sweep_blobs(&self, claimed_before: Millis) -> Result<Vec<String>>;
    /// Messages matching a query in the user's conversations, newest
    /// first, at most `limit + 1` (the extra one says there are more).
    async fn search(&self, query: &SearchQuery) -> Result<Vec<confab_protocol::SearchHit>>;
}

/// One device session's push target, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct PushRow {
    pub session: SessionId,
    pub user: UserId,
    pub target: confab_protocol::PushTarget,
}

/// Push targets, one per device session (see migration 0007).
#[async_trait]
pub trait PushStore: Send + Sync + 'static {
    /// Sets `session`'s target, replacing its old one and taking the
    /// device's address from any other session that had it.
    async fn set_push(&self, session: SessionId, user: UserId, target: &confab_protocol::PushTarget) -> Result<()>;
    /// Forgets `session`'s target; whether it had one.
    async fn clear_push(&self, session: SessionId) -> Result<bool>;
    /// The targets of these users' sessions.
    async fn push_targets(&self, users: &[UserId]) -> Result<Vec<PushRow>>;
    /// Forgets `session`'s target if it is still `target` (the provider
    /// said it is gone; a newer registration stays).
    async fn drop_push(&self, session: SessionId, target: &confab_protocol::PushTarget) -> Result<bool>;
}

/// Reads a stored target (written by [`PushStore::set_push`]).
pub fn parse_push_target(json: &str) -> Result<confab_protocol::PushTarget> {
    serde_json::from_str(json).map_err(|e| ApiError::internal("a stored push target does not parse", e))
}

#[async_trait]
pub trait Store: MediaStore + PushStore + Send + Sync + 'static {
    /// Fails with `username_taken` if the name exists.
    async fn create_user(&self, username: &str, password_hash: &str) -> Result<UserId>;
    /// (id, password hash) of a user.
    async fn credentials(&self, username: &str) -> Result<Option<(UserId, String)>>;
    /// Creates a session. An account keeps at most [`MAX_SESSIONS_PER_USER`]:
    /// the least recently used beyond that are deleted, and returned.
    async fn create_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        device: Option<&str>,
    ) -> Result<(SessionId, Vec<SessionId>)>;
    async fn session(&self, token_hash: &[u8]) -> Result<Option<Session>>;
    /// Deletes a session; returns its id if it existed.
    async fn delete_session(&self, token_hash: &[u8]) -> Result<Option<SessionId>>;
    /// Records that a session was used now.
    async fn touch_session(&self, session: SessionId, at: Millis) -> Result<()>;
    /// A user's sessions: (id, device, created, last_seen), oldest first.
    async fn sessions_of(&self, user: UserId) -> Result<Vec<(SessionId, Option<String>, Millis, Millis)>>;
    /// Deletes `user`'s sessions that `which` selects (one id, or all but
    /// one); returns the deleted ids.
    async fn revoke_sessions(&self, user: UserId, which: Revoke) -> Result<Vec<SessionId>>;
    /// Deletes sessions unused since `before`; returns their ids.
    async fn expire_sessions(&self, before: Millis) -> Result<Vec<SessionId>>;
    /// Those of `sessions` that still exist.
    async fn existing_sessions(&self, sessions: &[SessionId]) -> Result<Vec<SessionId>>;
    async fn user_by_name(&self, username: &str) -> Result<Option<UserId>>;
    async fn set_last_seen(&self, user: UserId, ts: Millis) -> Result<()>;
    /// Users who share at least one conversation with `user` (not `user`).
    async fn contacts(&self, user: UserId) -> Result<Vec<UserId>>;

    /// A server fact kept beside the chat data (the store epoch).
    async fn meta(&self, key: &str) -> Result<Option<String>>;
    async fn set_meta(&self, key: &str, value: &str) -> Result<()>;
    /// How many events the log holds in all: it only grows, so a smaller
    /// number than before means the log was rewound.
    async fn log_total(&self) -> Result<i64>;

    async fn membership(&self, conversation: ConversationId, user: UserId) -> Result<Option<Membership>>;
    async fn member_ids(&self, conversation: ConversationId) -> Result<Vec<UserId>>;
    /// Where each of `user`'s conversations stands, ordered by id.
    async fn heads(&self, user: UserId) -> Result<Vec<ConversationHead>>;
    async fn conversation(&self, conversation: ConversationId) -> Result<Option<ConversationInfo>>;

    /// Finds the direct conversation of two distinct users, or creates it
    /// with id `new_id`.
    async fn open_direct(
        &self,
        new_id: ConversationId,
        a: Member,
        b: Member,
    ) -> Result<(ConversationId, Option<AppendOutcome>)>;
    async fn create_group(
        &self,
        id: ConversationId,
        name: &str,
        members: Vec<Member>,
        creator: UserId,
    ) -> Result<AppendOutcome>;
    /// Where the message a (sender, client id) pair created went, if it exists.
    async fn sent_message(&self, sender: UserId, client_id: confab_protocol::ClientId)
        -> Result<Option<AppendOutcome>>;
    /// Applies one change and appends it to the log, atomically. For
    /// [`EventBody::Message`] the given `seq` is ignored and assigned here.
    /// Changes to a message follow [`confab_protocol::rules`]: a change the
    /// rules refuse fails with their code, one that changes nothing is
    /// [`AppendOutcome::Unchanged`].
    async fn append(&self, conversation: ConversationId, actor: UserId, body: EventBody) -> Result<AppendOutcome> {
        self.append_all(conversation, actor, vec![body])
            .await?
            .pop()
            .unwrap_or_else(|| Err(ApiError::new(confab_protocol::ErrorCode::Internal, "no append result")))
    }
    /// Several [`Store::append`]s by one actor to one conversation, applied
    /// in this order (a store may commit them together); one result each.
    async fn append_all(
        &self,
        conversation: ConversationId,
        actor: UserId,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<Result<AppendOutcome>>>;

    /// Moves receipt watermarks forward (by [`confab_protocol::rules::advance_receipt`]),
    /// committed together; one result each: `None` when nothing moved (or
    /// the user is not a member).
    async fn mark(&self, marks: Vec<Mark>) -> Result<Vec<Option<Marked>>>;
    /// How many transactions appends and receipts have taken so far (fewer
    /// than appends when they were grouped).
    fn append_commits(&self) -> u64;
    /// Members' watermarks of one conversation, by user id after `after`,
    /// about `budget` bytes (at least one).
    async fn watermarks(&self, conversation: ConversationId, after: Option<UserId>, budget: usize)
        -> Result<MarksPage>;

    /// Events with `pos > after`, oldest first, at most `limit` of them and
    /// about `budget` bytes (at least one), and the newest position.
    async fn events_after(
        &self,
        conversation: ConversationId,
        after: i64,
        limit: u32,
        budget: usize,
    ) -> Result<LogPage>;
    /// Events of every conversation committed at or after `since` (by
    /// their `ts`), ordered by (ts, conversation, pos) after the key
    /// `after`, at most `limit`: what a node whose bus lost messages reads
    /// back.
    async fn events_since(
        &self,
        since: Millis,
        after: Option<(Millis, ConversationId, i64)>,
        limit: u32,
    ) -> Result<Vec<ConvEvent>>;
    /// Messages with `seq < before` (all if `None`), newest first, at most
    /// `limit` and about `budget` bytes (at least one).
    async fn history(
        &self,
        conversation: ConversationId,
        before: Option<i64>,
        limit: u32,
        budget: usize,
    ) -> Result<Vec<Message>>;
    async fn message(&self, conversation: ConversationId, seq: i64) -> Result<Option<MessageMeta>>;
}
