//! The embedded SQLite store (WAL). All writes go through a pool of one
//! connection, so SQLite's single writer never sees lock contention (no
//! `SQLITE_BUSY` on upgrade); reads use a separate pool and see every
//! committed write. Appends and receipts are group-committed by
//! [`GroupCommit`] over [`SqliteWriter`]; the rules they follow are in
//! [`super::write`], not here.

mod media;
mod push;

use super::write::{self, Backend, GroupCommit, NewMessage, SendKey, Sent, Writer};
use super::{
    now_ms, AppendOutcome, LogPage, Mark, Marked, MarksPage, Membership, MessageMeta, Revoke, Session, SessionId,
    Store, EVENT_OVERHEAD, WATERMARK_BYTES,
};
use crate::error::{ApiError, Result};
use async_trait::async_trait;
use confab_protocol::{
    Attachment, ConvEvent, ConvKind, ConversationHead, ConversationId, ConversationInfo, ErrorCode, EventBody, Member,
    MemberState, Message, Millis, Reaction, UserId, Watermark,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    backend: Arc<SqliteBackend>,
    commits: GroupCommit,
}

/// Opens write transactions on the one writing connection.
struct SqliteBackend {
    write: SqlitePool,
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn begin(&self) -> Result<Box<dyn Writer>> {
        Ok(Box::new(SqliteWriter { tx: self.write.begin().await? }))
    }
}

/// Rows per multi-row statement: well under SQLite's bound-parameter limit.
pub(crate) const ROWS_PER_STATEMENT: usize = 100;

fn parse_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| ApiError::internal("corrupt id in database", e))
}

fn parse_kind(s: &str) -> ConvKind {
    if s == "group" {
        ConvKind::Group
    } else {
        ConvKind::Direct
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        SqliteStore::open_with(path, write::MAX_GROUP).await
    }

    /// [`SqliteStore::open`], committing at most `max_group` appends per
    /// transaction.
    pub async fn open_with(path: &Path, max_group: usize) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ApiError::internal("cannot create the database directory", e))?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged message survives power loss, not just a
            // process crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new().max_connections(1).connect_with(opts.clone()).await?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let read = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        let backend = Arc::new(SqliteBackend { write: write.clone() });
        let commits = GroupCommit::start(backend.clone(), max_group);
        Ok(SqliteStore { read, write, backend, commits })
    }

    async fn members_of(&self, conversation: &str) -> Result<Vec<MemberState>> {
        let rows = sqlx::query(
            "SELECT m.user_id, u.username, m.admin, m.delivered_seq, m.read_seq, u.last_seen
             FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.conversation_id = ? ORDER BY u.username",
        )
        .bind(conversation)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MemberState {
                    user: parse_id(r.get("user_id"))?,
                    username: r.get("username"),
                    admin: r.get::<i64, _>("admin") != 0,
                    delivered_seq: r.get("delivered_seq"),
                    read_seq: r.get("read_seq"),
                    online: false,
                    last_seen: r.get("last_seen"),
                })
            })
            .collect()
    }

    fn info_from_row(&self, r: &sqlx::sqlite::SqliteRow, members: Vec<MemberState>) -> Result<ConversationInfo> {
        Ok(ConversationInfo {
            id: parse_id(r.get("id"))?,
            kind: parse_kind(r.get("kind")),
            name: r.get("name"),
            members,
            last_pos: r.get("last_pos"),
            last_seq: r.get("last_seq"),
            marks: r.get("marks"),
        })
    }
}

/// One write transaction on SQLite.
struct SqliteWriter {
    tx: Transaction<'static, Sqlite>,
}

fn kind_name(kind: ConvKind) -> &'static str {
    match kind {
        ConvKind::Direct => "direct",
        ConvKind::Group => "group",
    }
}

#[async_trait]
impl Writer for SqliteWriter {
    async fn lock(&mut self, _: &[ConversationId]) -> Result<()> {
        // One writing connection: nobody else writes meanwhile.
        Ok(())
    }

    async fn sent(&mut self, keys: &[SendKey]) -> Result<HashMap<SendKey, Sent>> {
        let mut known = HashMap::new();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            // An OR of pairs: SQLite searches the (sender, client_id) index
            // for each (a row-value IN would scan it).
            let pairs = vec!["(sender = ? AND client_id = ?)"; chunk.len()].join(" OR ");
            let sql = format!("SELECT sender, client_id, conversation_id, seq, pos, ts FROM messages WHERE {pairs}");
            let mut q = sqlx::query(&sql);
            for (sender, client_id) in chunk {
                q = q.bind(sender.to_string()).bind(client_id.to_string());
            }
            for r in q.fetch_all(&mut *self.tx).await? {
                let sent = Sent {
                    conversation: parse_id(r.get("conversation_id"))?,
                    seq: r.get("seq"),
                    pos: r.get("pos"),
                    ts: r.get("ts"),
                };
                known.insert((parse_id(r.get("sender"))?, parse_id(r.get("client_id"))?), sent);
            }
        }
        Ok(known)
    }

    async fn advance(&mut self, counts: &[(ConversationId, i64, i64)]) -> Result<HashMap<ConversationId, (i64, i64)>> {
        let mut next = HashMap::new();
        for chunk in counts.chunks(ROWS_PER_STATEMENT) {
            let cases = "WHEN ? THEN ? ".repeat(chunk.len());
            let ids = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "UPDATE conversations SET last_pos = last_pos + (CASE id {cases}END), last_seq = last_seq + (CASE id {cases}END)
                 WHERE id IN ({ids}) RETURNING id, last_pos, last_seq"
            );
            let mut q = sqlx::query(&sql);
            for (c, n, _) in chunk {
                q = q.bind(c.to_string()).bind(n);
            }
            for (c, _, m) in chunk {
                q = q.bind(c.to_string()).bind(m);
            }
            for (c, _, _) in chunk {
                q = q.bind(c.to_string());
            }
            for r in q.fetch_all(&mut *self.tx).await? {
                next.insert(parse_id(r.get("id"))?, (r.get("last_pos"), r.get("last_seq")));
            }
        }
        Ok(next)
    }

    async fn insert_events(&mut self, events: &[ConvEvent]) -> Result<()> {
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let rows = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!("INSERT INTO events (conversation_id, pos, ts, actor, body) VALUES {rows}");
            let mut q = sqlx::query(&sql);
            for e in chunk {
                let json = serde_json::to_string(&e.body).map_err(|e| ApiError::internal("serialize event", e))?;
                q = q.bind(e.conversation.to_string()).bind(e.pos).bind(e.ts).bind(e.actor.to_string()).bind(json);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    async fn insert_messages(&mut self, messages: &[NewMessage<'_>]) -> Result<()> {
        for chunk in messages.chunks(ROWS_PER_STATEMENT) {
            let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO messages (conversation_id, seq, pos, sender, client_id, text, ts, call, attachments) VALUES {rows}"
            );
            let mut q = sqlx::query(&sql);
            let mut links = Vec::new();
            for m in chunk {
                let e = m.event;
                for a in m.attachments {
                    links.push((a.hash.as_str(), e.conversation, m.seq));
                }
                q = q
                    .bind(e.conversation.to_string())
                    .bind(m.seq)
                    .bind(e.pos)
                    .bind(e.actor.to_string())
                    .bind(m.client_id.to_string())
                    .bind(m.text)
                    .bind(e.ts)
                    .bind(m.call.as_deref())
                    .bind(attachments_json(m.attachments)?);
            }
            q.execute(&mut *self.tx).await?;
            link_attachments(&mut self.tx, &links).await?;
        }
        Ok(())
    }

    async fn members(&mut self, conversations: &[ConversationId]) -> Result<HashMap<ConversationId, Vec<UserId>>> {
        let mut members: HashMap<ConversationId, Vec<UserId>> = HashMap::new();
        for chunk in conversations.chunks(ROWS_PER_STATEMENT) {
            let ids = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT conversation_id, user_id FROM members WHERE conversation_id IN ({ids})");
            let mut q = sqlx::query(&sql);
            for c in chunk {
                q = q.bind(c.to_string());
            }
            for r in q.fetch_all(&mut *self.tx).await? {
                members.entry(parse_id(r.get("conversation_id"))?).or_default().push(parse_id(r.get("user_id"))?);
            }
        }
        Ok(members)
    }

    async fn message(&mut self, conversation: ConversationId, seq: i64) -> Result<Option<Message>> {
        message_tx(&mut self.tx, conversation, seq).await
    }

    async fn save_message(&mut self, message: &Message) -> Result<()> {
        save_message_tx(&mut self.tx, message).await
    }

    async fn add_member(&mut self, conversation: ConversationId, m: &Member) -> Result<bool> {
        let added = sqlx::query(
            "INSERT INTO members (conversation_id, user_id, admin) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(conversation.to_string())
        .bind(m.user.to_string())
        .bind(m.admin)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(added > 0)
    }

    async fn remove_member(&mut self, conversation: ConversationId, user: UserId) -> Result<bool> {
        let removed = sqlx::query("DELETE FROM members WHERE conversation_id = ? AND user_id = ?")
            .bind(conversation.to_string())
            .bind(user.to_string())
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        Ok(removed > 0)
    }

    async fn rename(&mut self, conversation: ConversationId, name: &str) -> Result<bool> {
        let changed = sqlx::query("UPDATE conversations SET name = ?1 WHERE id = ?2 AND (name IS NULL OR name != ?1)")
            .bind(name)
            .bind(conversation.to_string())
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn set_admin(&mut self, conversation: ConversationId, user: UserId, admin: bool) -> Result<bool> {
        let changed =
            sqlx::query("UPDATE members SET admin = ?1 WHERE conversation_id = ?2 AND user_id = ?3 AND admin != ?1")
                .bind(admin)
                .bind(conversation.to_string())
                .bind(user.to_string())
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
        Ok(changed > 0)
    }

    async fn receipts(&mut self, conversation: ConversationId, user: UserId) -> Result<Option<((i64, i64), i64)>> {
        let row = sqlx::query(
            "SELECT m.delivered_seq, m.read_seq, c.last_seq FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.conversation_id = ? AND m.user_id = ?",
        )
        .bind(conversation.to_string())
        .bind(user.to_string())
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row.map(|r| ((r.get("delivered_seq"), r.get("read_seq")), r.get("last_seq"))))
    }

    async fn set_receipts(&mut self, conversation: ConversationId, user: UserId, marks: (i64, i64)) -> Result<i64> {
        let conv = conversation.to_string();
        sqlx::query("UPDATE members SET delivered_seq = ?, read_seq = ? WHERE conversation_id = ? AND user_id = ?")
            .bind(marks.0)
            .bind(marks.1)
            .bind(&conv)
            .bind(user.to_string())
            .execute(&mut *self.tx)
            .await?;
        let version = sqlx::query("UPDATE conversations SET marks = marks + 1 WHERE id = ? RETURNING marks")
            .bind(&conv)
            .fetch_one(&mut *self.tx)
            .await?
            .get("marks");
        Ok(version)
    }

    async fn create_conversation(
        &mut self,
        id: ConversationId,
        kind: ConvKind,
        name: Option<&str>,
        direct_key: Option<&str>,
    ) -> Result<bool> {
        let created = sqlx::query(
            "INSERT INTO conversations (id, kind, name, direct_key, created_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(id.to_string())
        .bind(kind_name(kind))
        .bind(name)
        .bind(direct_key)
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(created > 0)
    }

    async fn direct(&mut self, key: &str) -> Result<Option<ConversationId>> {
        let row = sqlx::query("SELECT id FROM conversations WHERE direct_key = ?")
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| parse_id(r.get("id"))).transpose()
    }

    async fn savepoint(&mut self) -> Result<()> {
        sqlx::query("SAVEPOINT change").execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        sqlx::query("RELEASE SAVEPOINT change").execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        sqlx::query("ROLLBACK TO SAVEPOINT change").execute(&mut *self.tx).await?;
        sqlx::query("RELEASE SAVEPOINT change").execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

async fn message_tx(
    tx: &mut Transaction<'_, Sqlite>,
    conversation: ConversationId,
    seq: i64,
) -> Result<Option<Message>> {
    let conv = conversation.to_string();
    let Some(r) = sqlx::query(
        "SELECT seq, pos, sender, client_id, text, ts, edited_at, deleted, pinned, call, attachments FROM messages
         WHERE conversation_id = ? AND seq = ?",
    )
    .bind(&conv)
    .bind(seq)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT emoji, user_id FROM reactions WHERE conversation_id = ? AND seq = ? ORDER BY emoji, user_id",
    )
    .bind(&conv)
    .bind(seq)
    .fetch_all(&mut **tx)
    .await?;
    let mut reactions = Vec::new();
    for row in &rows {
        Reaction::add_to(&mut reactions, row.get("emoji"), parse_id(row.get("user_id"))?);
    }
    Ok(Some(message_from_row(conversation, &r, reactions)?))
}

fn message_from_row(
    conversation: ConversationId,
    r: &sqlx::sqlite::SqliteRow,
    reactions: Vec<Reaction>,
) -> Result<Message> {
    Ok(Message {
        conversation,
        seq: r.get("seq"),
        pos: r.get("pos"),
        client_id: parse_id(r.get("client_id"))?,
        sender: parse_id(r.get("sender"))?,
        text: r.get("text"),
        attachments: match r.get::<Option<&str>, _>("attachments") {
            Some(json) => serde_json::from_str(json).map_err(|e| ApiError::internal("stored attachments", e))?,
            None => Vec::new(),
        },
        ts: r.get("ts"),
        edited_at: r.get("edited_at"),
        deleted: r.get::<i64, _>("deleted") != 0,
        pinned: r.get::<i64, _>("pinned") != 0,
        reactions,
        call: match r.get::<Option<&str>, _>("call") {
            Some(json) => Some(serde_json::from_str(json).map_err(|e| ApiError::internal("stored call", e))?),
            None => None,
        },
    })
}

/// Attachments as the `messages.attachments` column keeps them.
fn attachments_json(attachments: &[Attachment]) -> Result<Option<String>> {
    if attachments.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(attachments).map(Some).map_err(|e| ApiError::internal("serialize attachments", e))
}

/// Records which messages carry which blobs: (hash, conversation, seq).
async fn link_attachments(tx: &mut Transaction<'_, Sqlite>, links: &[(&str, ConversationId, i64)]) -> Result<()> {
    for chunk in links.chunks(ROWS_PER_STATEMENT) {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT OR IGNORE INTO attachments (hash, conversation_id, seq) VALUES {rows}");
        let mut q = sqlx::query(&sql);
        for (hash, conversation, seq) in chunk {
            q = q.bind(*hash).bind(conversation.to_string()).bind(seq);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Writes a message's new state (decided by [`rules::apply_to_message`]).
async fn save_message_tx(tx: &mut Transaction<'_, Sqlite>, m: &Message) -> Result<()> {
    let conv = m.conversation.to_string();
    sqlx::query(
        "UPDATE messages SET text = ?, edited_at = ?, deleted = ?, pinned = ?, attachments = ?
         WHERE conversation_id = ? AND seq = ?",
    )
    .bind(&m.text)
    .bind(m.edited_at)
    .bind(m.deleted)
    .bind(m.pinned)
    .bind(attachments_json(&m.attachments)?)
    .bind(&conv)
    .bind(m.seq)
    .execute(&mut **tx)
    .await?;
    if m.attachments.is_empty() {
        // A deleted message no longer holds its blobs; the media sweep
        // removes those nothing else refers to.
        sqlx::query("DELETE FROM attachments WHERE conversation_id = ? AND seq = ?")
            .bind(&conv)
            .bind(m.seq)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("DELETE FROM reactions WHERE conversation_id = ? AND seq = ?")
        .bind(&conv)
        .bind(m.seq)
        .execute(&mut **tx)
        .await?;
    for r in &m.reactions {
        for u in &r.users {
            sqlx::query("INSERT OR IGNORE INTO reactions (conversation_id, seq, user_id, emoji) VALUES (?, ?, ?, ?)")
                .bind(&conv)
                .bind(m.seq)
                .bind(u.to_string())
                .bind(&r.emoji)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// Applies the state change of `body` to the current-state tables. Returns

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, username: &str, password_hash: &str) -> Result<UserId> {
        let id = Uuid::now_v7();
        let res = sqlx::query("INSERT INTO users (id, username, password_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(username)
            .bind(password_hash)
            .bind(now_ms())
            .execute(&self.write)
            .await;
        match res {
            Ok(_) => Ok(id),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(ErrorCode::UsernameTaken.into()),
            Err(e) => Err(e.into()),
        }
    }

    async fn credentials(&self, username: &str) -> Result<Option<(UserId, String)>> {
        let row = sqlx::query("SELECT id, password_hash FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok((parse_id(r.get("id"))?, r.get("password_hash")))).transpose()
    }

    async fn create_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        device: Option<&str>,
    ) -> Result<(SessionId, Vec<SessionId>)> {
        let id = Uuid::now_v7();
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, device, created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(token_hash)
        .bind(user.to_string())
        .bind(device)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let evicted = sqlx::query(
            "DELETE FROM sessions WHERE user_id = ?1 AND id NOT IN
               (SELECT id FROM sessions WHERE user_id = ?1 ORDER BY last_seen DESC, id DESC LIMIT ?2)
             RETURNING id",
        )
        .bind(user.to_string())
        .bind(super::MAX_SESSIONS_PER_USER)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let evicted = evicted.iter().map(|r| parse_id(r.get("id"))).collect::<Result<Vec<_>>>()?;
        Ok((id, evicted))
    }

    async fn session(&self, token_hash: &[u8]) -> Result<Option<Session>> {
        let row = sqlx::query(
            "SELECT s.id, s.user_id, u.username, s.last_seen FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(Session {
                id: parse_id(r.get("id"))?,
                user: parse_id(r.get("user_id"))?,
                username: r.get("username"),
                last_seen: r.get("last_seen"),
            })
        })
        .transpose()
    }

    async fn delete_session(&self, token_hash: &[u8]) -> Result<Option<SessionId>> {
        let row = sqlx::query("DELETE FROM sessions WHERE token_hash = ? RETURNING id")
            .bind(token_hash)
            .fetch_optional(&self.write)
            .await?;
        row.map(|r| parse_id(r.get("id"))).transpose()
    }

    async fn touch_session(&self, session: SessionId, at: Millis) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen = MAX(last_seen, ?) WHERE id = ?")
            .bind(at)
            .bind(session.to_string())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<(SessionId, Option<String>, Millis, Millis)>> {
        let rows = sqlx::query(
            "SELECT id, device, created_at, last_seen FROM sessions WHERE user_id = ? ORDER BY created_at, id",
        )
        .bind(user.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((parse_id(r.get("id"))?, r.get("device"), r.get("created_at"), r.get("last_seen"))))
            .collect()
    }

    async fn revoke_sessions(&self, user: UserId, which: Revoke) -> Result<Vec<SessionId>> {
        let rows = match which {
            Revoke::One(id) => {
                sqlx::query("DELETE FROM sessions WHERE user_id = ? AND id = ? RETURNING id")
                    .bind(user.to_string())
                    .bind(id.to_string())
                    .fetch_all(&self.write)
                    .await?
            }
            Revoke::AllBut(keep) => {
                sqlx::query("DELETE FROM sessions WHERE user_id = ? AND id != ? RETURNING id")
                    .bind(user.to_string())
                    .bind(keep.to_string())
                    .fetch_all(&self.write)
                    .await?
            }
        };
        rows.iter().map(|r| parse_id(r.get("id"))).collect()
    }

    async fn expire_sessions(&self, before: Millis) -> Result<Vec<SessionId>> {
        let rows = sqlx::query("DELETE FROM sessions WHERE last_seen < ? RETURNING id")
            .bind(before)
            .fetch_all(&self.write)
            .await?;
        rows.iter().map(|r| parse_id(r.get("id"))).collect()
    }

    async fn existing_sessions(&self, sessions: &[SessionId]) -> Result<Vec<SessionId>> {
        let mut existing = Vec::new();
        for chunk in sessions.chunks(ROWS_PER_STATEMENT) {
            let ids = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT id FROM sessions WHERE id IN ({ids})");
            let mut q = sqlx::query(&sql);
            for s in chunk {
                q = q.bind(s.to_string());
            }
            for r in q.fetch_all(&self.read).await? {
                existing.push(parse_id(r.get("id"))?);
            }
        }
        Ok(existing)
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserId>> {
        let row =
            sqlx::query("SELECT id FROM users WHERE username = ?").bind(username).fetch_optional(&self.read).await?;
        row.map(|r| parse_id(r.get("id"))).transpose()
    }

    async fn set_last_seen(&self, user: UserId, ts: Millis) -> Result<()> {
        sqlx::query("UPDATE users SET last_seen = ? WHERE id = ?")
            .bind(ts)
            .bind(user.to_string())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn contacts(&self, user: UserId) -> Result<Vec<UserId>> {
        let rows = sqlx::query(
            "SELECT DISTINCT o.user_id FROM members m JOIN members o ON o.conversation_id = m.conversation_id
             WHERE m.user_id = ?1 AND o.user_id != ?1",
        )
        .bind(user.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| parse_id(r.get("user_id"))).collect()
    }

    async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?").bind(key).fetch_optional(&self.write).await?;
        Ok(row.map(|r| r.get("value")))
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn log_total(&self) -> Result<i64> {
        let row =
            sqlx::query("SELECT COALESCE(SUM(last_pos), 0) AS n FROM conversations").fetch_one(&self.write).await?;
        Ok(row.get("n"))
    }

    async fn membership(&self, conversation: ConversationId, user: UserId) -> Result<Option<Membership>> {
        let row = sqlx::query(
            "SELECT c.kind, m.admin FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.conversation_id = ? AND m.user_id = ?",
        )
        .bind(conversation.to_string())
        .bind(user.to_string())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| Membership { kind: parse_kind(r.get("kind")), admin: r.get::<i64, _>("admin") != 0 }))
    }

    async fn member_ids(&self, conversation: ConversationId) -> Result<Vec<UserId>> {
        let rows = sqlx::query("SELECT user_id FROM members WHERE conversation_id = ?")
            .bind(conversation.to_string())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| parse_id(r.get("user_id"))).collect()
    }

    async fn heads(&self, user: UserId) -> Result<Vec<ConversationHead>> {
        let rows = sqlx::query(
            "SELECT c.id, c.last_pos, c.last_seq, c.marks, m.delivered_seq FROM conversations c
             JOIN members m ON m.conversation_id = c.id WHERE m.user_id = ? ORDER BY c.id",
        )
        .bind(user.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ConversationHead {
                    id: parse_id(r.get("id"))?,
                    last_pos: r.get("last_pos"),
                    last_seq: r.get("last_seq"),
                    delivered_seq: r.get("delivered_seq"),
                    marks: r.get("marks"),
                })
            })
            .collect()
    }

    async fn conversation(&self, conversation: ConversationId) -> Result<Option<ConversationInfo>> {
        let id = conversation.to_string();
        let row = sqlx::query("SELECT id, kind, name, last_pos, last_seq, marks FROM conversations WHERE id = ?")
            .bind(&id)
            .fetch_optional(&self.read)
            .await?;
        match row {
            Some(r) => {
                let members = self.members_of(&id).await?;
                Ok(Some(self.info_from_row(&r, members)?))
            }
            None => Ok(None),
        }
    }

    async fn open_direct(
        &self,
        new_id: ConversationId,
        a: Member,
        b: Member,
    ) -> Result<(ConversationId, Option<AppendOutcome>)> {
        write::open_direct(&*self.backend, new_id, a, b).await
    }

    async fn create_group(
        &self,
        id: ConversationId,
        name: &str,
        members: Vec<Member>,
        creator: UserId,
    ) -> Result<AppendOutcome> {
        write::create_group(&*self.backend, id, name, members, creator).await
    }

    async fn append_all(
        &self,
        conversation: ConversationId,
        actor: UserId,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<Result<AppendOutcome>>> {
        self.commits.append_all(conversation, actor, bodies).await
    }

    async fn mark(&self, marks: Vec<Mark>) -> Result<Vec<Option<Marked>>> {
        self.commits.mark(marks).await
    }

    fn append_commits(&self) -> u64 {
        self.commits.commits()
    }

    async fn watermarks(
        &self,
        conversation: ConversationId,
        after: Option<UserId>,
        budget: usize,
    ) -> Result<MarksPage> {
        let conv = conversation.to_string();
        let mut tx = self.read.begin().await?;
        let version: i64 = sqlx::query("SELECT marks FROM conversations WHERE id = ?")
            .bind(&conv)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("marks"))
            .ok_or_else(|| ApiError::from(ErrorCode::NotFound))?;
        let limit = (budget / WATERMARK_BYTES).max(1);
        // Ids are stored as hyphenated lowercase text, whose order is the
        // ids' order.
        let rows = sqlx::query(
            "SELECT user_id, delivered_seq, read_seq FROM members WHERE conversation_id = ? AND user_id > ?
             ORDER BY user_id LIMIT ?",
        )
        .bind(&conv)
        .bind(after.map(|u| u.to_string()).unwrap_or_default())
        .bind((limit + 1) as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let has_more = rows.len() > limit;
        let marks = rows
            .iter()
            .take(limit)
            .map(|r| {
                Ok(Watermark {
                    user: parse_id(r.get("user_id"))?,
                    delivered_seq: r.get("delivered_seq"),
                    read_seq: r.get("read_seq"),
                })
            })
            .collect::<Result<_>>()?;
        Ok(MarksPage { version, marks, has_more })
    }

    async fn events_after(
        &self,
        conversation: ConversationId,
        after: i64,
        limit: u32,
        budget: usize,
    ) -> Result<LogPage> {
        use futures_util::TryStreamExt;
        let conv = conversation.to_string();
        // One read transaction, so the page and last_pos agree.
        let mut tx = self.read.begin().await?;
        let last_pos: i64 = sqlx::query("SELECT last_pos FROM conversations WHERE id = ?")
            .bind(&conv)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("last_pos"))
            .ok_or_else(|| ApiError::from(ErrorCode::NotFound))?;
        let mut events = Vec::new();
        let mut bytes = 0;
        {
            let mut rows = sqlx::query(
                "SELECT pos, ts, actor, body FROM events WHERE conversation_id = ? AND pos > ? ORDER BY pos LIMIT ?",
            )
            .bind(&conv)
            .bind(after)
            .bind(i64::from(limit))
            .fetch(&mut *tx);
            // Stop reading once the budget is spent: a page of large
            // messages must not be read (or sent) whole.
            while let Some(r) = rows.try_next().await? {
                let text: &str = r.get("body");
                bytes += text.len() + EVENT_OVERHEAD;
                let body: EventBody =
                    serde_json::from_str(text).map_err(|e| ApiError::internal("corrupt event in database", e))?;
                events.push(ConvEvent {
                    conversation,
                    pos: r.get("pos"),
                    ts: r.get("ts"),
                    actor: parse_id(r.get("actor"))?,
                    body,
                });
                if bytes >= budget {
                    break;
                }
            }
        }
        tx.commit().await?;
        Ok(LogPage { events, last_pos, bytes })
    }

    async fn events_since(
        &self,
        since: Millis,
        after: Option<(Millis, ConversationId, i64)>,
        limit: u32,
    ) -> Result<Vec<ConvEvent>> {
        // One node never needs this; it scans (there is no index on ts).
        let (ts, conv, pos) = after.unwrap_or((Millis::MIN, Uuid::nil(), 0));
        let rows = sqlx::query(
            "SELECT conversation_id, pos, ts, actor, body FROM events
             WHERE ts >= ?1 AND (ts, conversation_id, pos) > (?2, ?3, ?4)
             ORDER BY ts, conversation_id, pos LIMIT ?5",
        )
        .bind(since)
        .bind(ts)
        .bind(conv.to_string())
        .bind(pos)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let body: EventBody = serde_json::from_str(r.get("body"))
                    .map_err(|e| ApiError::internal("corrupt event in database", e))?;
                Ok(ConvEvent {
                    conversation: parse_id(r.get("conversation_id"))?,
                    pos: r.get("pos"),
                    ts: r.get("ts"),
                    actor: parse_id(r.get("actor"))?,
                    body,
                })
            })
            .collect()
    }

    async fn history(
        &self,
        conversation: ConversationId,
        before: Option<i64>,
        limit: u32,
        budget: usize,
    ) -> Result<Vec<Message>> {
        use futures_util::TryStreamExt;
        let conv = conversation.to_string();
        let mut tx = self.read.begin().await?;
        let mut rows = Vec::new();
        {
            let mut stream = sqlx::query(
                "SELECT seq, pos, sender, client_id, text, ts, edited_at, deleted, pinned, call, attachments FROM messages
                 WHERE conversation_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            )
            .bind(&conv)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch(&mut *tx);
            let mut bytes = 0;
            while let Some(r) = stream.try_next().await? {
                bytes += super::history_bytes(r.get("text"), r.get("call"), r.get("attachments"));
                rows.push(r);
                if bytes >= budget {
                    break;
                }
            }
        }
        let (Some(newest), Some(oldest)) = (rows.first(), rows.last()) else { return Ok(Vec::new()) };
        let (hi, lo): (i64, i64) = (newest.get("seq"), oldest.get("seq"));
        let reaction_rows = sqlx::query(
            "SELECT seq, emoji, user_id FROM reactions WHERE conversation_id = ? AND seq BETWEEN ? AND ?
             ORDER BY seq, emoji, user_id",
        )
        .bind(&conv)
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut reactions: HashMap<i64, Vec<Reaction>> = HashMap::new();
        for r in &reaction_rows {
            let list = reactions.entry(r.get("seq")).or_default();
            Reaction::add_to(list, r.get("emoji"), parse_id(r.get("user_id"))?);
        }
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get("seq");
                message_from_row(conversation, r, reactions.remove(&seq).unwrap_or_default())
            })
            .collect()
    }

    async fn sent_message(
        &self,
        sender: UserId,
        client_id: confab_protocol::ClientId,
    ) -> Result<Option<AppendOutcome>> {
        let row = sqlx::query("SELECT conversation_id, seq, pos, ts FROM messages WHERE sender = ? AND client_id = ?")
            .bind(sender.to_string())
            .bind(client_id.to_string())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| {
            Ok(AppendOutcome::Duplicate {
                conversation: parse_id(r.get("conversation_id"))?,
                seq: r.get("seq"),
                pos: r.get("pos"),
                ts: r.get("ts"),
            })
        })
        .transpose()
    }

    async fn message(&self, conversation: ConversationId, seq: i64) -> Result<Option<MessageMeta>> {
        let row = sqlx::query("SELECT sender, deleted FROM messages WHERE conversation_id = ? AND seq = ?")
            .bind(conversation.to_string())
            .bind(seq)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(MessageMeta { sender: parse_id(r.get("sender"))?, deleted: r.get::<i64, _>("deleted") != 0 }))
            .transpose()
    }
}
