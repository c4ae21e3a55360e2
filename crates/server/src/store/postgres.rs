//! The Postgres store: one database shared by several server nodes. Each
//! node group-commits its own appends ([`GroupCommit`] over [`PgWriter`]);
//! nodes writing to the same conversation meet at its row lock, taken in
//! id order at the start of each transaction, so positions stay gap-free
//! and in order across nodes. Send deduplication holds across nodes
//! because the (sender, client id) lookup runs after that lock, and the
//! unique index catches a client id reused in two conversations at once.
//! The rules are in [`super::write`]; this file only persists.

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
    Attachment, ClientId, ConvEvent, ConvKind, ConversationHead, ConversationId, ConversationInfo, ErrorCode,
    EventBody, Member, MemberState, Message, Millis, Reaction, UserId, Watermark,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub struct PostgresStore {
    pool: PgPool,
    backend: Arc<PgBackend>,
    commits: GroupCommit,
}

struct PgBackend {
    pool: PgPool,
}

#[async_trait]
impl Backend for PgBackend {
    async fn begin(&self) -> Result<Box<dyn Writer>> {
        Ok(Box::new(PgWriter { tx: self.pool.begin().await? }))
    }
}

fn parse_kind(s: &str) -> ConvKind {
    if s == "group" {
        ConvKind::Group
    } else {
        ConvKind::Direct
    }
}

fn kind_name(kind: ConvKind) -> &'static str {
    match kind {
        ConvKind::Direct => "direct",
        ConvKind::Group => "group",
    }
}

impl PostgresStore {
    /// Connects to the database at `url` and runs migrations (a lock in
    /// the database keeps two nodes starting at once from both running
    /// them).
    pub async fn connect(url: &str) -> Result<Self> {
        PostgresStore::connect_with(url, write::MAX_GROUP).await
    }

    /// [`PostgresStore::connect`], committing at most `max_group` appends
    /// per transaction.
    pub async fn connect_with(url: &str, max_group: usize) -> Result<Self> {
        let opts: PgConnectOptions = url.parse().map_err(|e| ApiError::internal("cannot parse the Postgres URL", e))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations-postgres").run(&pool).await?;
        let backend = Arc::new(PgBackend { pool: pool.clone() });
        let commits = GroupCommit::start(backend.clone(), max_group);
        Ok(PostgresStore { pool, backend, commits })
    }

    async fn members_of(&self, conversation: ConversationId) -> Result<Vec<MemberState>> {
        let rows = sqlx::query(
            "SELECT m.user_id, u.username, m.admin, m.delivered_seq, m.read_seq, u.last_seen
             FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.conversation_id = $1 ORDER BY u.username COLLATE \"C\"",
        )
        .bind(conversation)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| MemberState {
                user: r.get("user_id"),
                username: r.get("username"),
                admin: r.get("admin"),
                delivered_seq: r.get("delivered_seq"),
                read_seq: r.get("read_seq"),
                online: false,
                last_seen: r.get("last_seen"),
            })
            .collect())
    }
}

/// One write transaction on Postgres. Many rows go in one statement, as
/// arrays unnested on the server.
struct PgWriter {
    tx: Transaction<'static, Postgres>,
}

#[async_trait]
impl Writer for PgWriter {
    async fn lock(&mut self, conversations: &[ConversationId]) -> Result<()> {
        if conversations.is_empty() {
            return Ok(());
        }
        // Sorted below the lock: rows are locked in id order.
        sqlx::query("SELECT 1 FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(conversations)
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn sent(&mut self, keys: &[SendKey]) -> Result<HashMap<SendKey, Sent>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let (senders, ids): (Vec<Uuid>, Vec<Uuid>) = keys.iter().copied().unzip();
        let rows = sqlx::query(
            "SELECT m.sender, m.client_id, m.conversation_id, m.seq, m.pos, m.ts FROM messages m
             JOIN UNNEST($1::uuid[], $2::uuid[]) AS k(sender, client_id)
               ON m.sender = k.sender AND m.client_id = k.client_id",
        )
        .bind(&senders)
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let sent = Sent {
                    conversation: r.get("conversation_id"),
                    seq: r.get("seq"),
                    pos: r.get("pos"),
                    ts: r.get("ts"),
                };
                ((r.get("sender"), r.get("client_id")), sent)
            })
            .collect())
    }

    async fn advance(&mut self, counts: &[(ConversationId, i64, i64)]) -> Result<HashMap<ConversationId, (i64, i64)>> {
        if counts.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<Uuid> = counts.iter().map(|c| c.0).collect();
        let events: Vec<i64> = counts.iter().map(|c| c.1).collect();
        let messages: Vec<i64> = counts.iter().map(|c| c.2).collect();
        let rows = sqlx::query(
            "UPDATE conversations c SET last_pos = c.last_pos + v.e, last_seq = c.last_seq + v.m
             FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[]) AS v(id, e, m)
             WHERE c.id = v.id RETURNING c.id, c.last_pos, c.last_seq",
        )
        .bind(&ids)
        .bind(&events)
        .bind(&messages)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.iter().map(|r| (r.get("id"), (r.get("last_pos"), r.get("last_seq")))).collect())
    }

    async fn insert_events(&mut self, events: &[ConvEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let bodies = events
            .iter()
            .map(|e| serde_json::to_string(&e.body).map_err(|e| ApiError::internal("serialize event", e)))
            .collect::<Result<Vec<_>>>()?;
        sqlx::query(
            "INSERT INTO events (conversation_id, pos, ts, actor, body)
             SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::uuid[], $5::text[])",
        )
        .bind(events.iter().map(|e| e.conversation).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.pos).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.ts).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.actor).collect::<Vec<_>>())
        .bind(bodies)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn insert_messages(&mut self, messages: &[NewMessage<'_>]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let attachments =
            messages.iter().map(|m| attachments_json(m.attachments)).collect::<Result<Vec<Option<String>>>>()?;
        sqlx::query(
            "INSERT INTO messages (conversation_id, seq, pos, sender, client_id, text, ts, call, attachments)
             SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::uuid[], $5::uuid[], $6::text[],
                                  $7::bigint[], $8::text[], $9::text[])",
        )
        .bind(messages.iter().map(|m| m.event.conversation).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.seq).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.event.pos).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.event.actor).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.client_id).collect::<Vec<ClientId>>())
        .bind(messages.iter().map(|m| m.text).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.event.ts).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.call.clone()).collect::<Vec<_>>())
        .bind(attachments)
        .execute(&mut *self.tx)
        .await?;
        let links: Vec<(&str, ConversationId, i64)> = messages
            .iter()
            .flat_map(|m| m.attachments.iter().map(|a| (a.hash.as_str(), m.event.conversation, m.seq)))
            .collect();
        if !links.is_empty() {
            sqlx::query(
                "INSERT INTO attachments (hash, conversation_id, seq)
                 SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bigint[]) ON CONFLICT DO NOTHING",
            )
            .bind(links.iter().map(|l| l.0).collect::<Vec<_>>())
            .bind(links.iter().map(|l| l.1).collect::<Vec<_>>())
            .bind(links.iter().map(|l| l.2).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn members(&mut self, conversations: &[ConversationId]) -> Result<HashMap<ConversationId, Vec<UserId>>> {
        let rows = sqlx::query("SELECT conversation_id, user_id FROM members WHERE conversation_id = ANY($1)")
            .bind(conversations)
            .fetch_all(&mut *self.tx)
            .await?;
        let mut members: HashMap<ConversationId, Vec<UserId>> = HashMap::new();
        for r in &rows {
            members.entry(r.get("conversation_id")).or_default().push(r.get("user_id"));
        }
        Ok(members)
    }

    async fn message(&mut self, conversation: ConversationId, seq: i64) -> Result<Option<Message>> {
        let Some(r) = sqlx::query(
            "SELECT seq, pos, sender, client_id, text, ts, edited_at, deleted, pinned, call, attachments FROM messages
             WHERE conversation_id = $1 AND seq = $2",
        )
        .bind(conversation)
        .bind(seq)
        .fetch_optional(&mut *self.tx)
        .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT emoji, user_id FROM reactions WHERE conversation_id = $1 AND seq = $2
             ORDER BY emoji COLLATE \"C\", user_id",
        )
        .bind(conversation)
        .bind(seq)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut reactions = Vec::new();
        for row in &rows {
            Reaction::add_to(&mut reactions, row.get("emoji"), row.get("user_id"));
        }
        Ok(Some(message_from_row(conversation, &r, reactions)?))
    }

    async fn save_message(&mut self, m: &Message) -> Result<()> {
        sqlx::query(
            "UPDATE messages SET text = $1, edited_at = $2, deleted = $3, pinned = $4, attachments = $5
             WHERE conversation_id = $6 AND seq = $7",
        )
        .bind(&m.text)
        .bind(m.edited_at)
        .bind(m.deleted)
        .bind(m.pinned)
        .bind(attachments_json(&m.attachments)?)
        .bind(m.conversation)
        .bind(m.seq)
        .execute(&mut *self.tx)
        .await?;
        if m.attachments.is_empty() {
            // A deleted message no longer holds its blobs; the media sweep
            // removes those nothing else refers to.
            sqlx::query("DELETE FROM attachments WHERE conversation_id = $1 AND seq = $2")
                .bind(m.conversation)
                .bind(m.seq)
                .execute(&mut *self.tx)
                .await?;
        }
        sqlx::query("DELETE FROM reactions WHERE conversation_id = $1 AND seq = $2")
            .bind(m.conversation)
            .bind(m.seq)
            .execute(&mut *self.tx)
            .await?;
        let (users, emoji): (Vec<Uuid>, Vec<&str>) =
            m.reactions.iter().flat_map(|r| r.users.iter().map(|u| (*u, r.emoji.as_str()))).unzip();
        if !users.is_empty() {
            sqlx::query(
                "INSERT INTO reactions (conversation_id, seq, user_id, emoji)
                 SELECT $1, $2, u, e FROM UNNEST($3::uuid[], $4::text[]) AS r(u, e) ON CONFLICT DO NOTHING",
            )
            .bind(m.conversation)
            .bind(m.seq)
            .bind(&users)
            .bind(&emoji)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn add_member(&mut self, conversation: ConversationId, m: &Member) -> Result<bool> {
        let added = sqlx::query(
            "INSERT INTO members (conversation_id, user_id, admin) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(conversation)
        .bind(m.user)
        .bind(m.admin)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(added > 0)
    }

    async fn remove_member(&mut self, conversation: ConversationId, user: UserId) -> Result<bool> {
        let removed = sqlx::query("DELETE FROM members WHERE conversation_id = $1 AND user_id = $2")
            .bind(conversation)
            .bind(user)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        Ok(removed > 0)
    }

    async fn rename(&mut self, conversation: ConversationId, name: &str) -> Result<bool> {
        let changed = sqlx::query("UPDATE conversations SET name = $1 WHERE id = $2 AND name IS DISTINCT FROM $1")
            .bind(name)
            .bind(conversation)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn set_admin(&mut self, conversation: ConversationId, user: UserId, admin: bool) -> Result<bool> {
        let changed =
            sqlx::query("UPDATE members SET admin = $1 WHERE conversation_id = $2 AND user_id = $3 AND admin != $1")
                .bind(admin)
                .bind(conversation)
                .bind(user)
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
        Ok(changed > 0)
    }

    async fn receipts(&mut self, conversation: ConversationId, user: UserId) -> Result<Option<((i64, i64), i64)>> {
        let row = sqlx::query(
            "SELECT m.delivered_seq, m.read_seq, c.last_seq FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.conversation_id = $1 AND m.user_id = $2",
        )
        .bind(conversation)
        .bind(user)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row.map(|r| ((r.get("delivered_seq"), r.get("read_seq")), r.get("last_seq"))))
    }

    async fn set_receipts(&mut self, conversation: ConversationId, user: UserId, marks: (i64, i64)) -> Result<i64> {
        sqlx::query("UPDATE members SET delivered_seq = $1, read_seq = $2 WHERE conversation_id = $3 AND user_id = $4")
            .bind(marks.0)
            .bind(marks.1)
            .bind(conversation)
            .bind(user)
            .execute(&mut *self.tx)
            .await?;
        let version = sqlx::query("UPDATE conversations SET marks = marks + 1 WHERE id = $1 RETURNING marks")
            .bind(conversation)
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
            "INSERT INTO conversations (id, kind, name, direct_key, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
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
        let row = sqlx::query("SELECT id FROM conversations WHERE direct_key = $1")
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(row.map(|r| r.get("id")))
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

fn message_from_row(conversation: ConversationId, r: &PgRow, reactions: Vec<Reaction>) -> Result<Message> {
    Ok(Message {
        conversation,
        seq: r.get("seq"),
        pos: r.get("pos"),
        client_id: r.get("client_id"),
        sender: r.get("sender"),
        text: r.get("text"),
        attachments: match r.get::<Option<&str>, _>("attachments") {
            Some(json) => serde_json::from_str(json).map_err(|e| ApiError::internal("stored attachments", e))?,
            None => Vec::new(),
        },
        ts: r.get("ts"),
        edited_at: r.get("edited_at"),
        deleted: r.get("deleted"),
        pinned: r.get("pinned"),
        reactions,
        call: match r.get::<Option<&str>, _>("call") {
            Some(json) => Some(serde_json::from_str(json).map_err(|e| ApiError::internal("stored call", e))?),
            None => None,
        },
    })
}

fn attachments_json(attachments: &[Attachment]) -> Result<Option<String>> {
    if attachments.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(attachments).map(Some).map_err(|e| ApiError::internal("serialize attachments", e))
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_user(&self, username: &str, password_hash: &str) -> Result<UserId> {
        let id = Uuid::now_v7();
        let res = sqlx::query("INSERT INTO users (id, username, password_hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(username)
            .bind(password_hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => Ok(id),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(ErrorCode::UsernameTaken.into()),
            Err(e) => Err(e.into()),
        }
    }

    async fn credentials(&self, username: &str) -> Result<Option<(UserId, String)>> {
        let row = sqlx::query("SELECT id, password_hash FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get("id"), r.get("password_hash"))))
    }

    async fn create_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        device: Option<&str>,
    ) -> Result<(SessionId, Vec<SessionId>)> {
        let id = Uuid::now_v7();
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // One account signs in one device at a time, on any node, so the
        // cap holds.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 2))").bind(user).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, device, created_at, last_seen) VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(id)
        .bind(token_hash)
        .bind(user)
        .bind(device)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let evicted = sqlx::query(
            "DELETE FROM sessions WHERE user_id = $1 AND id <> $3 AND id NOT IN
               (SELECT id FROM sessions WHERE user_id = $1 AND id <> $3 ORDER BY last_seen DESC, id DESC LIMIT $2)
             RETURNING id",
        )
        .bind(user)
        .bind(super::MAX_SESSIONS_PER_USER - 1)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((id, evicted.iter().map(|r| r.get("id")).collect()))
    }

    async fn session(&self, token_hash: &[u8]) -> Result<Option<Session>> {
        let row = sqlx::query(
            "SELECT s.id, s.user_id, u.username, s.last_seen FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Session {
            id: r.get("id"),
            user: r.get("user_id"),
            username: r.get("username"),
            last_seen: r.get("last_seen"),
        }))
    }

    async fn delete_session(&self, token_hash: &[u8]) -> Result<Option<SessionId>> {
        let row = sqlx::query("DELETE FROM sessions WHERE token_hash = $1 RETURNING id")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("id")))
    }

    async fn touch_session(&self, session: SessionId, at: Millis) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen = GREATEST(last_seen, $1) WHERE id = $2")
            .bind(at)
            .bind(session)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<(SessionId, Option<String>, Millis, Millis)>> {
        let rows = sqlx::query(
            "SELECT id, device, created_at, last_seen FROM sessions WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get("id"), r.get("device"), r.get("created_at"), r.get("last_seen"))).collect())
    }

    async fn revoke_sessions(&self, user: UserId, which: Revoke) -> Result<Vec<SessionId>> {
        let rows = match which {
            Revoke::One(id) => {
                sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id = $2 RETURNING id")
                    .bind(user)
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?
            }
            Revoke::AllBut(keep) => {
                sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id != $2 RETURNING id")
                    .bind(user)
                    .bind(keep)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(|r| r.get("id")).collect())
    }

    async fn expire_sessions(&self, before: Millis) -> Result<Vec<SessionId>> {
        let rows = sqlx::query("DELETE FROM sessions WHERE last_seen < $1 RETURNING id")
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get("id")).collect())
    }

    async fn existing_sessions(&self, sessions: &[SessionId]) -> Result<Vec<SessionId>> {
        let rows =
            sqlx::query("SELECT id FROM sessions WHERE id = ANY($1)").bind(sessions).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| r.get("id")).collect())
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserId>> {
        let row =
            sqlx::query("SELECT id FROM users WHERE username = $1").bind(username).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.get("id")))
    }

    async fn set_last_seen(&self, user: UserId, ts: Millis) -> Result<()> {
        sqlx::query("UPDATE users SET last_seen = $1 WHERE id = $2").bind(ts).bind(user).execute(&self.pool).await?;
        Ok(())
    }

    async fn contacts(&self, user: UserId) -> Result<Vec<UserId>> {
        let rows = sqlx::query(
            "SELECT DISTINCT o.user_id FROM members m JOIN members o ON o.conversation_id = m.conversation_id
             WHERE m.user_id = $1 AND o.user_id != $1",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get("user_id")).collect())
    }

    async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1").bind(key).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.get("value")))
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn log_total(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(SUM(last_pos), 0)::BIGINT AS n FROM conversations")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get("n"))
    }

    async fn membership(&self, conversation: ConversationId, user: UserId) -> Result<Option<Membership>> {
        let row = sqlx::query(
            "SELECT c.kind, m.admin FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.conversation_id = $1 AND m.user_id = $2",
        )
        .bind(conversation)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Membership { kind: parse_kind(r.get("kind")), admin: r.get("admin") }))
    }

    async fn member_ids(&self, conversation: ConversationId) -> Result<Vec<UserId>> {
        let rows = sqlx::query("SELECT user_id FROM members WHERE conversation_id = $1")
            .bind(conversation)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get("user_id")).collect())
    }

    async fn heads(&self, user: UserId) -> Result<Vec<ConversationHead>> {
        let rows = sqlx::query(
            "SELECT c.id, c.last_pos, c.last_seq, c.marks, m.delivered_seq FROM conversations c
             JOIN members m ON m.conversation_id = c.id WHERE m.user_id = $1 ORDER BY c.id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ConversationHead {
                id: r.get("id"),
                last_pos: r.get("last_pos"),
                last_seq: r.get("last_seq"),
                delivered_seq: r.get("delivered_seq"),
                marks: r.get("marks"),
            })
            .collect())
    }

    async fn conversation(&self, conversation: ConversationId) -> Result<Option<ConversationInfo>> {
        let row = sqlx::query("SELECT id, kind, name, last_pos, last_seq, marks FROM conversations WHERE id = $1")
            .bind(conversation)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let members = self.members_of(conversation).await?;
        Ok(Some(ConversationInfo {
            id: r.get("id"),
            kind: parse_kind(r.get("kind")),
            name: r.get("name"),
            members,
            last_pos: r.get("last_pos"),
            last_seq: r.get("last_seq"),
            marks: r.get("marks"),
        }))
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
        // One snapshot, so the page and the version agree.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let version: i64 = sqlx::query("SELECT marks FROM conversations WHERE id = $1")
            .bind(conversation)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("marks"))
            .ok_or_else(|| ApiError::from(ErrorCode::NotFound))?;
        let limit = (budget / WATERMARK_BYTES).max(1);
        let rows = sqlx::query(
            "SELECT user_id, delivered_seq, read_seq FROM members WHERE conversation_id = $1 AND user_id > $2
             ORDER BY user_id LIMIT $3",
        )
        .bind(conversation)
        .bind(after.unwrap_or(Uuid::nil()))
        .bind((limit + 1) as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let has_more = rows.len() > limit;
        let marks = rows
            .iter()
            .take(limit)
            .map(|r| Watermark {
                user: r.get("user_id"),
                delivered_seq: r.get("delivered_seq"),
                read_seq: r.get("read_seq"),
            })
            .collect();
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
        // One snapshot, so the page and last_pos agree.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let last_pos: i64 = sqlx::query("SELECT last_pos FROM conversations WHERE id = $1")
            .bind(conversation)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("last_pos"))
            .ok_or_else(|| ApiError::from(ErrorCode::NotFound))?;
        let mut events = Vec::new();
        let mut bytes = 0;
        {
            let mut rows = sqlx::query(
                "SELECT pos, ts, actor, body FROM events WHERE conversation_id = $1 AND pos > $2 ORDER BY pos LIMIT $3",
            )
            .bind(conversation)
            .bind(after)
            .bind(i64::from(limit))
            .fetch(&mut *tx);
            // Stop reading once the budget is spent.
            while let Some(r) = rows.try_next().await? {
                let text: &str = r.get("body");
                bytes += text.len() + EVENT_OVERHEAD;
                let body: EventBody =
                    serde_json::from_str(text).map_err(|e| ApiError::internal("corrupt event in database", e))?;
                events.push(ConvEvent {
                    conversation,
                    pos: r.get("pos"),
                    ts: r.get("ts"),
                    actor: r.get("actor"),
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
        let (ts, conv, pos) = after.unwrap_or((Millis::MIN, Uuid::nil(), 0));
        let rows = sqlx::query(
            "SELECT conversation_id, pos, ts, actor, body FROM events
             WHERE ts >= $1 AND (ts, conversation_id, pos) > ($2, $3, $4)
             ORDER BY ts, conversation_id, pos LIMIT $5",
        )
        .bind(since)
        .bind(ts)
        .bind(conv)
        .bind(pos)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let body: EventBody = serde_json::from_str(r.get("body"))
                    .map_err(|e| ApiError::internal("corrupt event in database", e))?;
                Ok(ConvEvent {
                    conversation: r.get("conversation_id"),
                    pos: r.get("pos"),
                    ts: r.get("ts"),
                    actor: r.get("actor"),
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let mut rows = Vec::new();
        {
            let mut stream = sqlx::query(
                "SELECT seq, pos, sender, client_id, text, ts, edited_at, deleted, pinned, call, attachments FROM messages
                 WHERE conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
            )
            .bind(conversation)
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
            "SELECT seq, emoji, user_id FROM reactions WHERE conversation_id = $1 AND seq BETWEEN $2 AND $3
             ORDER BY seq, emoji COLLATE \"C\", user_id",
        )
        .bind(conversation)
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut reactions: HashMap<i64, Vec<Reaction>> = HashMap::new();
        for r in &reaction_rows {
            let list = reactions.entry(r.get("seq")).or_default();
            Reaction::add_to(list, r.get("emoji"), r.get("user_id"));
        }
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get("seq");
                message_from_row(conversation, r, reactions.remove(&seq).unwrap_or_default())
            })
            .collect()
    }

    async fn sent_message(&self, sender: UserId, client_id: ClientId) -> Result<Option<AppendOutcome>> {
        let row =
            sqlx::query("SELECT conversation_id, seq, pos, ts FROM messages WHERE sender = $1 AND client_id = $2")
                .bind(sender)
                .bind(client_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| AppendOutcome::Duplicate {
            conversation: r.get("conversation_id"),
            seq: r.get("seq"),
            pos: r.get("pos"),
            ts: r.get("ts"),
        }))
    }

    async fn message(&self, conversation: ConversationId, seq: i64) -> Result<Option<MessageMeta>> {
        let row = sqlx::query("SELECT sender, deleted FROM messages WHERE conversation_id = $1 AND seq = $2")
            .bind(conversation)
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| MessageMeta { sender: r.get("sender"), deleted: r.get("deleted") }))
    }
}
