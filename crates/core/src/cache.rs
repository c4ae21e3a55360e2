//! The client's SQLite cache (WAL): conversations, members, messages with
//! their status, sync positions, and the outbox.
//!
//! Server events are applied with [`Cache::apply_event`], which checks the
//! event's position against the conversation's `applied_pos` in the same
//! transaction that applies it: an event is applied exactly once, in order,
//! or reported as a duplicate or a gap.

use crate::types::{ChatMessage, ConversationSummary, MemberView, MessageStatus, SendError};
use crate::{Error, Result};
use confab_protocol::{
    ClientId, ConvEvent, ConvKind, ConversationId, ConversationInfo, ErrorCode, EventBody, Member, Message, Millis,
    Reaction, UserId,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

#[derive(Clone)]
pub struct Cache {
    pool: SqlitePool,
}

/// The signed-in session kept in the profile.
#[derive(Clone, Debug)]
pub struct StoredSession {
    pub server: String,
    pub token: String,
    pub user: UserId,
    pub username: String,
}

#[derive(Clone, Debug)]
pub struct OutboxEntry {
    pub id: i64,
    pub client_id: ClientId,
    pub conversation: ConversationId,
    pub text: String,
    pub attempts: i64,
}

/// The result of offering one event to the cache.
#[derive(Debug)]
pub enum Applied {
    /// Already applied (pos <= applied_pos): ignore.
    Duplicate,
    /// Events are missing before this one: fetch from `after`.
    Gap { after: i64 },
    /// Applied; what to report.
    Done(Vec<Effect>),
}

/// A consequence of an applied event, turned into [`crate::ClientEvent`]s by
/// the caller (which can read the message views).
#[derive(Debug, Clone)]
pub enum Effect {
    NewMessage {
        client_id: ClientId,
        from_other: bool,
    },
    MessageChanged {
        client_id: ClientId,
    },
    Receipt {
        user: UserId,
        delivered_seq: i64,
        read_seq: i64,
    },
    ConversationChanged,
    /// We were removed from the conversation.
    Left,
}

pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

fn id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| Error::Protocol(format!("corrupt id in cache: {e}")))
}

fn kind_from(s: &str) -> ConvKind {
    if s == "group" {
        ConvKind::Group
    } else {
        ConvKind::Direct
    }
}

fn kind_str(k: ConvKind) -> &'static str {
    match k {
        ConvKind::Direct => "direct",
        ConvKind::Group => "group",
    }
}

const MESSAGE_COLUMNS: &str =
    "m.client_id, m.conversation_id, m.seq, m.sender, COALESCE(u.username, '') AS sender_name,
     m.text, m.ts, m.edited_at, m.deleted, m.pinned, m.status, m.error_code, m.error_message";

impl Cache {
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a commit survives the app being killed;
            // only a power cut can lose the last moments. FULL would fsync on
            // every receipt and message applied.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        // One connection: the client's writes are small and serial, and two
        // processes on one profile (say `listen` and `send`) still coordinate
        // through SQLite's own locking.
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Cache { pool })
    }

    // ---- session -------------------------------------------------------

    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?").bind(key).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.get("value")))
    }

    pub async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn session(&self) -> Result<Option<StoredSession>> {
        let (Some(server), Some(token), Some(user), Some(username)) = (
            self.meta("server").await?,
            self.meta("token").await?,
            self.meta("user_id").await?,
            self.meta("username").await?,
        ) else {
            return Ok(None);
        };
        Ok(Some(StoredSession { server, token, user: id(&user)?, username }))
    }

    /// Saves a new session. Signing in as a different user on a profile that
    /// has another user's data starts from an empty cache.
    pub async fn save_session(&self, s: &StoredSession) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let previous: Option<String> = sqlx::query("SELECT value FROM meta WHERE key = 'user_id'")
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("value"));
        if previous.is_some_and(|p| p != s.user.to_string()) {
            for table in ["reactions", "outbox", "messages", "members", "conversations", "users"] {
                sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *tx).await?;
            }
        }
        for (k, v) in [
            ("server", s.server.clone()),
            ("token", s.token.clone()),
            ("user_id", s.user.to_string()),
            ("username", s.username.clone()),
        ] {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )
            .bind(k)
            .bind(v)
            .execute(&mut *tx)
            .await?;
        }
        upsert_user(&mut tx, s.user, &s.username).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn clear_token(&self) -> Result<()> {
        sqlx::query("DELETE FROM meta WHERE key = 'token'").execute(&self.pool).await?;
        Ok(())
    }

    // ---- outbox --------------------------------------------------------

    /// Saves a new own message and its outbox entry in one transaction.
    pub async fn enqueue(&self, conversation: ConversationId, sender: UserId, text: &str) -> Result<ClientId> {
        let client_id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO messages (client_id, conversation_id, sender, text, ts, status) VALUES (?, ?, ?, ?, ?, 'queued')",
        )
        .bind(client_id.to_string())
        .bind(conversation.to_string())
        .bind(sender.to_string())
        .bind(text)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO outbox (client_id, conversation_id, text) VALUES (?, ?, ?)")
            .bind(client_id.to_string())
            .bind(conversation.to_string())
            .bind(text)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(client_id)
    }

    /// The oldest entry not in `skip`.
    pub async fn next_outbox(&self) -> Result<Option<OutboxEntry>> {
        let row = sqlx::query("SELECT id, client_id, conversation_id, text, attempts FROM outbox ORDER BY id LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(OutboxEntry {
                id: r.get("id"),
                client_id: id(r.get("client_id"))?,
                conversation: id(r.get("conversation_id"))?,
                text: r.get("text"),
                attempts: r.get("attempts"),
            })
        })
        .transpose()
    }

    pub async fn outbox_len(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM outbox").fetch_one(&self.pool).await?.get("n"))
    }

    /// Where an own message stands: (status, seq, error), cheaply.
    pub async fn send_state(&self, client_id: ClientId) -> Result<Option<(String, Option<i64>, Option<SendError>)>> {
        let row = sqlx::query("SELECT status, seq, error_code, error_message FROM messages WHERE client_id = ?")
            .bind(client_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| {
            let error = r.get::<Option<String>, _>("error_code").map(|code| SendError {
                code: ErrorCode::parse(&code).unwrap_or(ErrorCode::Internal),
                message: r.get::<Option<String>, _>("error_message").unwrap_or_default(),
            });
            (r.get("status"), r.get("seq"), error)
        }))
    }

    pub async fn bump_attempts(&self, entry: i64) -> Result<()> {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?").bind(entry).execute(&self.pool).await?;
        Ok(())
    }

    /// The server accepted the message: record its seq and drop the entry.
    pub async fn mark_sent(&self, client_id: ClientId, seq: i64, ts: Millis) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE messages SET seq = ?, ts = ?, status = 'sent', error_code = NULL, error_message = NULL
             WHERE client_id = ? AND (seq IS NULL OR status != 'sent')",
        )
        .bind(seq)
        .bind(ts)
        .bind(client_id.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM outbox WHERE client_id = ?").bind(client_id.to_string()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The server refused the message for good.
    pub async fn mark_failed(&self, client_id: ClientId, code: ErrorCode, message: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE messages SET status = 'failed', error_code = ?, error_message = ? WHERE client_id = ? AND seq IS NULL")
            .bind(code.as_str())
            .bind(message)
            .bind(client_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM outbox WHERE client_id = ?").bind(client_id.to_string()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Puts a failed message back in the queue, with the same client id.
    pub async fn retry(&self, client_id: ClientId) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE messages SET status = 'queued', error_code = NULL, error_message = NULL
             WHERE client_id = ? AND status = 'failed' RETURNING conversation_id, text",
        )
        .bind(client_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(false) };
        sqlx::query("INSERT OR IGNORE INTO outbox (client_id, conversation_id, text) VALUES (?, ?, ?)")
            .bind(client_id.to_string())
            .bind(row.get::<String, _>("conversation_id"))
            .bind(row.get::<String, _>("text"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- sync ----------------------------------------------------------

    pub async fn applied_pos(&self, conversation: ConversationId) -> Result<Option<(i64, bool)>> {
        let row = sqlx::query("SELECT applied_pos, left FROM conversations WHERE id = ?")
            .bind(conversation.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get("applied_pos"), r.get::<i64, _>("left") != 0)))
    }

    pub async fn known_conversations(&self) -> Result<Vec<(ConversationId, i64, bool)>> {
        let rows = sqlx::query("SELECT id, applied_pos, left FROM conversations").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((id(r.get("id"))?, r.get("applied_pos"), r.get::<i64, _>("left") != 0))).collect()
    }

    /// We are no longer a member: keep the history, stop syncing.
    pub async fn mark_left(&self, conversation: ConversationId) -> Result<()> {
        sqlx::query("UPDATE conversations SET left = 1 WHERE id = ?")
            .bind(conversation.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Applies one event if it is the next one for its conversation.
    pub async fn apply_event(&self, me: UserId, ev: &ConvEvent) -> Result<Applied> {
        let conv = ev.conversation.to_string();
        let mut tx = self.pool.begin().await?;
        let applied: i64 = sqlx::query("SELECT applied_pos FROM conversations WHERE id = ?")
            .bind(&conv)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("applied_pos"))
            .unwrap_or(0);
        if ev.pos <= applied {
            return Ok(Applied::Duplicate);
        }
        if ev.pos > applied + 1 {
            return Ok(Applied::Gap { after: applied });
        }
        let effects = apply_body(&mut tx, me, ev).await?;
        sqlx::query("UPDATE conversations SET applied_pos = ? WHERE id = ?")
            .bind(ev.pos)
            .bind(&conv)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Applied::Done(effects))
    }

    /// Replaces what the cache knows of a conversation with a server
    /// snapshot: its info (taken first) and its newest messages. Events after
    /// `info.last_pos` are then replayed on top; replaying is idempotent.
    pub async fn load_snapshot(
        &self,
        me: UserId,
        info: &ConversationInfo,
        messages: &[Message],
        reset: bool,
    ) -> Result<()> {
        let conv = info.id.to_string();
        let mut tx = self.pool.begin().await?;
        if reset {
            // Keep our own unsent messages: they are still in the outbox.
            sqlx::query("DELETE FROM messages WHERE conversation_id = ? AND seq IS NOT NULL")
                .bind(&conv)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM reactions WHERE conversation_id = ?").bind(&conv).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO conversations (id, kind, name, applied_pos, last_seq, left) VALUES (?, ?, ?, ?, ?, 0)
             ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, name = excluded.name,
               applied_pos = excluded.applied_pos, last_seq = excluded.last_seq, left = 0",
        )
        .bind(&conv)
        .bind(kind_str(info.kind))
        .bind(&info.name)
        .bind(info.last_pos)
        .bind(info.last_seq)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM members WHERE conversation_id = ?").bind(&conv).execute(&mut *tx).await?;
        for m in &info.members {
            upsert_user(&mut tx, m.user, &m.username).await?;
            sqlx::query(
                "INSERT INTO members (conversation_id, user_id, admin, delivered_seq, read_seq) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&conv)
            .bind(m.user.to_string())
            .bind(m.admin)
            .bind(m.delivered_seq)
            .bind(m.read_seq)
            .execute(&mut *tx)
            .await?;
        }
        for m in messages {
            store_message(&mut tx, me, m).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores older messages fetched for history (no position change).
    pub async fn store_history(&self, me: UserId, messages: &[Message]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for m in messages {
            store_message(&mut tx, me, m).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_presence(&self, user: UserId, online: bool, last_seen: Option<Millis>) -> Result<()> {
        sqlx::query("UPDATE users SET online = ?, last_seen = COALESCE(?, last_seen) WHERE id = ?")
            .bind(online)
            .bind(last_seen)
            .bind(user.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Presence as reported by a fresh sync.
    pub async fn set_presence_from(&self, info: &ConversationInfo) -> Result<()> {
        for m in &info.members {
            self.set_presence(m.user, m.online, m.last_seen).await?;
        }
        Ok(())
    }

    pub async fn username(&self, user: UserId) -> Result<Option<String>> {
        let row = sqlx::query("SELECT username FROM users WHERE id = ?")
            .bind(user.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("username")))
    }

    // ---- views ---------------------------------------------------------

    async fn members(&self, conversation: &str) -> Result<Vec<MemberView>> {
        let rows = sqlx::query(
            "SELECT m.user_id, COALESCE(u.username, '') AS username, m.admin, m.delivered_seq, m.read_seq,
                    COALESCE(u.online, 0) AS online, u.last_seen
             FROM members m LEFT JOIN users u ON u.id = m.user_id WHERE m.conversation_id = ? ORDER BY username",
        )
        .bind(conversation)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MemberView {
                    user: id(r.get("user_id"))?,
                    username: r.get("username"),
                    admin: r.get::<i64, _>("admin") != 0,
                    delivered_seq: r.get("delivered_seq"),
                    read_seq: r.get("read_seq"),
                    online: r.get::<i64, _>("online") != 0,
                    last_seen: r.get("last_seen"),
                })
            })
            .collect()
    }

    async fn reactions(&self, conversation: &str, lo: i64, hi: i64) -> Result<HashMap<i64, Vec<Reaction>>> {
        let rows = sqlx::query(
            "SELECT seq, emoji, user_id FROM reactions WHERE conversation_id = ? AND seq BETWEEN ? AND ? ORDER BY seq, emoji, user_id",
        )
        .bind(conversation)
        .bind(lo)
        .bind(hi)
        .fetch_all(&self.pool)
        .await?;
        let mut out: HashMap<i64, Vec<Reaction>> = HashMap::new();
        for r in &rows {
            let list = out.entry(r.get("seq")).or_default();
            Reaction::add_to(list, r.get("emoji"), id(r.get("user_id"))?);
        }
        Ok(out)
    }

    fn view(
        &self,
        me: UserId,
        r: &SqliteRow,
        members: &[MemberView],
        reactions: &mut HashMap<i64, Vec<Reaction>>,
    ) -> Result<ChatMessage> {
        let sender = id(r.get("sender"))?;
        let seq: Option<i64> = r.get("seq");
        let stored: String = r.get("status");
        let status = match stored.as_str() {
            "queued" => MessageStatus::Queued,
            "failed" => MessageStatus::Failed,
            "received" => MessageStatus::Received,
            _ => own_status(me, seq.unwrap_or(i64::MAX), members),
        };
        let error = match (r.get::<Option<String>, _>("error_code"), r.get::<Option<String>, _>("error_message")) {
            (Some(code), message) => Some(SendError {
                code: ErrorCode::parse(&code).unwrap_or(ErrorCode::Internal),
                message: message.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(ChatMessage {
            conversation: id(r.get("conversation_id"))?,
            client_id: id(r.get("client_id"))?,
            seq,
            sender,
            sender_name: r.get("sender_name"),
            text: r.get("text"),
            ts: r.get("ts"),
            edited_at: r.get("edited_at"),
            deleted: r.get::<i64, _>("deleted") != 0,
            pinned: r.get::<i64, _>("pinned") != 0,
            status,
            error,
            reactions: seq.and_then(|s| reactions.remove(&s)).unwrap_or_default(),
        })
    }

    pub async fn message(&self, me: UserId, client_id: ClientId) -> Result<Option<ChatMessage>> {
        let row = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN users u ON u.id = m.sender WHERE m.client_id = ?"
        ))
        .bind(client_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let conv: String = row.get("conversation_id");
        let members = self.members(&conv).await?;
        let seq: Option<i64> = row.get("seq");
        let mut reactions = match seq {
            Some(s) => self.reactions(&conv, s, s).await?,
            None => HashMap::new(),
        };
        Ok(Some(self.view(me, &row, &members, &mut reactions)?))
    }

    pub async fn message_by_seq(
        &self,
        me: UserId,
        conversation: ConversationId,
        seq: i64,
    ) -> Result<Option<ChatMessage>> {
        let row = sqlx::query("SELECT client_id FROM messages WHERE conversation_id = ? AND seq = ?")
            .bind(conversation.to_string())
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => self.message(me, id(r.get("client_id"))?).await,
            None => Ok(None),
        }
    }

    /// Messages oldest first: the newest `limit` with `seq < before`, and,
    /// when `before` is `None`, this user's unsent messages after them.
    pub async fn messages(
        &self,
        me: UserId,
        conversation: ConversationId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ChatMessage>> {
        let conv = conversation.to_string();
        let mut rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN users u ON u.id = m.sender
             WHERE m.conversation_id = ? AND m.seq IS NOT NULL AND m.seq < ? ORDER BY m.seq DESC LIMIT ?"
        ))
        .bind(&conv)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        if before.is_none() {
            let unsent = sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN users u ON u.id = m.sender
                 WHERE m.conversation_id = ? AND m.seq IS NULL ORDER BY m.ts, m.client_id"
            ))
            .bind(&conv)
            .fetch_all(&self.pool)
            .await?;
            rows.extend(unsent);
        }
        let members = self.members(&conv).await?;
        let seqs: Vec<i64> = rows.iter().filter_map(|r| r.get::<Option<i64>, _>("seq")).collect();
        let mut reactions = match (seqs.first(), seqs.last()) {
            (Some(lo), Some(hi)) => self.reactions(&conv, *lo, *hi).await?,
            _ => HashMap::new(),
        };
        rows.iter().map(|r| self.view(me, r, &members, &mut reactions)).collect()
    }

    /// The oldest message seq the cache holds for a conversation.
    pub async fn oldest_seq(&self, conversation: ConversationId) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MIN(seq) AS s FROM messages WHERE conversation_id = ? AND seq IS NOT NULL")
            .bind(conversation.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get("s"))
    }

    pub async fn conversations(&self, me: UserId) -> Result<Vec<ConversationSummary>> {
        let rows = sqlx::query("SELECT id, kind, name, left FROM conversations").fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let conv_id = id(r.get("id"))?;
            let kind = kind_from(r.get("kind"));
            let members = self.members(r.get("id")).await?;
            let title = match (kind, r.get::<Option<String>, _>("name")) {
                (ConvKind::Group, Some(name)) => name,
                _ => members.iter().find(|m| m.user != me).map(|m| m.username.clone()).unwrap_or_default(),
            };
            let last_message = self.messages(me, conv_id, None, 1).await?.pop();
            let my_read = members.iter().find(|m| m.user == me).map(|m| m.read_seq).unwrap_or(0);
            let unread: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM messages WHERE conversation_id = ? AND seq > ? AND sender != ? AND deleted = 0",
            )
            .bind(r.get::<String, _>("id"))
            .bind(my_read)
            .bind(me.to_string())
            .fetch_one(&self.pool)
            .await?
            .get("n");
            out.push(ConversationSummary {
                id: conv_id,
                kind,
                title,
                members,
                last_message,
                unread,
                left: r.get::<i64, _>("left") != 0,
            });
        }
        // Most recent activity first.
        out.sort_by_key(|c| std::cmp::Reverse(c.last_message.as_ref().map(|m| m.ts).unwrap_or(0)));
        Ok(out)
    }

    pub async fn conversation(&self, me: UserId, conversation: ConversationId) -> Result<Option<ConversationSummary>> {
        Ok(self.conversations(me).await?.into_iter().find(|c| c.id == conversation))
    }
}

/// Own-message status from the other members' receipt watermarks: delivered
/// or read once every other member got that far.
fn own_status(me: UserId, seq: i64, members: &[MemberView]) -> MessageStatus {
    let others: Vec<&MemberView> = members.iter().filter(|m| m.user != me).collect();
    if others.is_empty() {
        return MessageStatus::Sent;
    }
    if others.iter().all(|m| m.read_seq >= seq) {
        MessageStatus::Read
    } else if others.iter().all(|m| m.delivered_seq >= seq) {
        MessageStatus::Delivered
    } else {
        MessageStatus::Sent
    }
}

async fn upsert_user(tx: &mut Transaction<'_, Sqlite>, user: UserId, username: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (id, username) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET username = excluded.username",
    )
    .bind(user.to_string())
    .bind(username)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_member(tx: &mut Transaction<'_, Sqlite>, conv: &str, m: &Member) -> Result<()> {
    upsert_user(tx, m.user, &m.username).await?;
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id, admin) VALUES (?, ?, ?)
         ON CONFLICT(conversation_id, user_id) DO UPDATE SET admin = excluded.admin",
    )
    .bind(conv)
    .bind(m.user.to_string())
    .bind(m.admin)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts or refreshes a message from the server, matched on client id.
async fn store_message(tx: &mut Transaction<'_, Sqlite>, me: UserId, m: &Message) -> Result<()> {
    let status = if m.sender == me { "sent" } else { "received" };
    sqlx::query(
        "INSERT INTO messages (client_id, conversation_id, seq, sender, text, ts, edited_at, deleted, pinned, status)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(client_id) DO UPDATE SET seq = excluded.seq, text = excluded.text, ts = excluded.ts,
           edited_at = excluded.edited_at, deleted = excluded.deleted, pinned = excluded.pinned,
           status = CASE WHEN messages.status IN ('queued', 'failed') THEN 'sent' ELSE messages.status END",
    )
    .bind(m.client_id.to_string())
    .bind(m.conversation.to_string())
    .bind(m.seq)
    .bind(m.sender.to_string())
    .bind(&m.text)
    .bind(m.ts)
    .bind(m.edited_at)
    .bind(m.deleted)
    .bind(m.pinned)
    .bind(status)
    .execute(&mut **tx)
    .await?;
    let conv = m.conversation.to_string();
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

async fn client_id_at(tx: &mut Transaction<'_, Sqlite>, conv: &str, seq: i64) -> Result<Option<ClientId>> {
    let row = sqlx::query("SELECT client_id FROM messages WHERE conversation_id = ? AND seq = ?")
        .bind(conv)
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|r| id(r.get("client_id"))).transpose()
}

async fn apply_body(tx: &mut Transaction<'_, Sqlite>, me: UserId, ev: &ConvEvent) -> Result<Vec<Effect>> {
    let conv = ev.conversation.to_string();
    let changed =
        |c: Option<ClientId>| c.map(|client_id| Effect::MessageChanged { client_id }).into_iter().collect::<Vec<_>>();
    Ok(match &ev.body {
        EventBody::Created { kind, name, members } => {
            sqlx::query(
                "INSERT INTO conversations (id, kind, name) VALUES (?, ?, ?)
                 ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, name = excluded.name",
            )
            .bind(&conv)
            .bind(kind_str(*kind))
            .bind(name)
            .execute(&mut **tx)
            .await?;
            for m in members {
                upsert_member(tx, &conv, m).await?;
            }
            vec![Effect::ConversationChanged]
        }
        EventBody::Message { seq, client_id, text } => {
            let existing = sqlx::query("SELECT status FROM messages WHERE client_id = ?")
                .bind(client_id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
            let m = Message {
                conversation: ev.conversation,
                seq: *seq,
                pos: ev.pos,
                client_id: *client_id,
                sender: ev.actor,
                text: text.clone(),
                ts: ev.ts,
                edited_at: None,
                deleted: false,
                pinned: false,
                reactions: Vec::new(),
            };
            store_message(tx, me, &m).await?;
            if ev.actor == me {
                // Ours, maybe from another device: mark it sent, and remove a
                // still-pending outbox entry (its reply was lost).
                sqlx::query(
                    "UPDATE messages SET status = 'sent', error_code = NULL, error_message = NULL WHERE client_id = ?",
                )
                .bind(client_id.to_string())
                .execute(&mut **tx)
                .await?;
                sqlx::query("DELETE FROM outbox WHERE client_id = ?")
                    .bind(client_id.to_string())
                    .execute(&mut **tx)
                    .await?;
            }
            sqlx::query("UPDATE conversations SET last_seq = MAX(last_seq, ?) WHERE id = ?")
                .bind(seq)
                .bind(&conv)
                .execute(&mut **tx)
                .await?;
            if existing.is_some() {
                vec![Effect::MessageChanged { client_id: *client_id }]
            } else {
                vec![Effect::NewMessage { client_id: *client_id, from_other: ev.actor != me }]
            }
        }
        EventBody::Edited { seq, text } => {
            sqlx::query(
                "UPDATE messages SET text = ?, edited_at = ? WHERE conversation_id = ? AND seq = ? AND deleted = 0",
            )
            .bind(text)
            .bind(ev.ts)
            .bind(&conv)
            .bind(seq)
            .execute(&mut **tx)
            .await?;
            changed(client_id_at(tx, &conv, *seq).await?)
        }
        EventBody::Deleted { seq } => {
            sqlx::query("UPDATE messages SET text = '', deleted = 1, pinned = 0 WHERE conversation_id = ? AND seq = ?")
                .bind(&conv)
                .bind(seq)
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM reactions WHERE conversation_id = ? AND seq = ?")
                .bind(&conv)
                .bind(seq)
                .execute(&mut **tx)
                .await?;
            changed(client_id_at(tx, &conv, *seq).await?)
        }
        EventBody::Reaction { seq, emoji, added } => {
            let sql = if *added {
                "INSERT OR IGNORE INTO reactions (conversation_id, seq, user_id, emoji) VALUES (?, ?, ?, ?)"
            } else {
                "DELETE FROM reactions WHERE conversation_id = ? AND seq = ? AND user_id = ? AND emoji = ?"
            };
            sqlx::query(sql).bind(&conv).bind(seq).bind(ev.actor.to_string()).bind(emoji).execute(&mut **tx).await?;
            changed(client_id_at(tx, &conv, *seq).await?)
        }
        EventBody::Pinned { seq, pinned } => {
            sqlx::query("UPDATE messages SET pinned = ? WHERE conversation_id = ? AND seq = ?")
                .bind(pinned)
                .bind(&conv)
                .bind(seq)
                .execute(&mut **tx)
                .await?;
            changed(client_id_at(tx, &conv, *seq).await?)
        }
        EventBody::MemberAdded { member } => {
            upsert_member(tx, &conv, member).await?;
            if member.user == me {
                sqlx::query("UPDATE conversations SET left = 0 WHERE id = ?").bind(&conv).execute(&mut **tx).await?;
            }
            vec![Effect::ConversationChanged]
        }
        EventBody::MemberRemoved { user } => {
            sqlx::query("DELETE FROM members WHERE conversation_id = ? AND user_id = ?")
                .bind(&conv)
                .bind(user.to_string())
                .execute(&mut **tx)
                .await?;
            if *user == me {
                sqlx::query("UPDATE conversations SET left = 1 WHERE id = ?").bind(&conv).execute(&mut **tx).await?;
                vec![Effect::ConversationChanged, Effect::Left]
            } else {
                vec![Effect::ConversationChanged]
            }
        }
        EventBody::Renamed { name } => {
            sqlx::query("UPDATE conversations SET name = ? WHERE id = ?")
                .bind(name)
                .bind(&conv)
                .execute(&mut **tx)
                .await?;
            vec![Effect::ConversationChanged]
        }
        EventBody::AdminChanged { user, admin } => {
            sqlx::query("UPDATE members SET admin = ? WHERE conversation_id = ? AND user_id = ?")
                .bind(admin)
                .bind(&conv)
                .bind(user.to_string())
                .execute(&mut **tx)
                .await?;
            vec![Effect::ConversationChanged]
        }
        EventBody::Receipt { user, delivered_seq, read_seq } => {
            sqlx::query(
                "UPDATE members SET delivered_seq = MAX(delivered_seq, ?), read_seq = MAX(read_seq, ?)
                 WHERE conversation_id = ? AND user_id = ?",
            )
            .bind(delivered_seq)
            .bind(read_seq)
            .bind(&conv)
            .bind(user.to_string())
            .execute(&mut **tx)
            .await?;
            vec![Effect::Receipt { user: *user, delivered_seq: *delivered_seq, read_seq: *read_seq }]
        }
    })
}
