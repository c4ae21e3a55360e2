//! What the UI and CLI read: conversation summaries, message pages, single
//! messages, members with presence. Read-only, except presence.

use super::{id, kind_from, Cache, LocalId};
use crate::types::{ChatMessage, ConversationSummary, MemberView, MessageStatus, SendError};
use crate::Result;
use confab_protocol::{ClientId, ConvKind, ConversationId, ErrorCode, Millis, Presence, Reaction, UserId};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use std::collections::HashMap;

const MESSAGE_COLUMNS: &str =
    "m.id, m.own_client_id, m.conversation_id, m.seq, m.sender, COALESCE(u.username, '') AS sender_name,
     m.text, m.ts, m.edited_at, m.deleted, m.pinned, m.status, m.error_code, m.error_message, m.call, m.attachments";

/// Which messages count as unread besides ordinary ones: calls the user
/// did not take (missed, or cancelled while ringing), not the ones they
/// answered or declined.
const UNREAD_CALL: &str = "(m.call IS NULL OR json_extract(m.call, '$.outcome.type') IN ('missed', 'cancelled'))";

const MEMBER_SELECT: &str = "SELECT m.conversation_id, m.user_id, COALESCE(u.username, '') AS username, m.admin,
       m.delivered_seq, m.read_seq, COALESCE(u.online, 0) AS online, u.last_seen
     FROM members m LEFT JOIN users u ON u.id = m.user_id";

fn member_view(r: &SqliteRow) -> Result<MemberView> {
    Ok(MemberView {
        user: id(r.get("user_id"))?,
        username: r.get("username"),
        admin: r.get::<i64, _>("admin") != 0,
        delivered_seq: r.get("delivered_seq"),
        read_seq: r.get("read_seq"),
        online: r.get::<i64, _>("online") != 0,
        last_seen: r.get("last_seen"),
    })
}

/// Records a user's presence (a known `last_seen` is kept when none is
/// given): the one presence write, for a pool or a transaction.
pub(super) async fn write_presence<'c, E: sqlx::Executor<'c, Database = sqlx::Sqlite>>(
    executor: E,
    user: UserId,
    online: bool,
    last_seen: Option<Millis>,
) -> Result<()> {
    sqlx::query("UPDATE users SET online = ?, last_seen = COALESCE(?, last_seen) WHERE id = ?")
        .bind(online)
        .bind(last_seen)
        .bind(user.to_string())
        .execute(executor)
        .await?;
    Ok(())
}

impl Cache {
    pub async fn set_presence(&self, user: UserId, online: bool, last_seen: Option<Millis>) -> Result<()> {
        write_presence(&self.pool, user, online, last_seen).await
    }

    /// Presence from a `presence_list`; a snapshot (the one right after
    /// connecting) first marks everyone offline.
    pub async fn set_presence_list(&self, list: &[Presence], snapshot: bool) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if snapshot {
            sqlx::query("UPDATE users SET online = 0").execute(&mut *tx).await?;
        }
        for p in list {
            write_presence(&mut *tx, p.user, p.online, p.last_seen).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Messages from others after `read` (`me`'s read position).
    pub async fn unread_after(&self, conversation: ConversationId, me: UserId, read: i64) -> Result<i64> {
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM messages m WHERE m.conversation_id = ? AND m.seq > ? AND m.sender != ?
             AND m.deleted = 0 AND {UNREAD_CALL}"
        ))
        .bind(conversation.to_string())
        .bind(read)
        .bind(me.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get("n"))
    }

    /// How far `user` has read in a conversation.
    pub async fn read_seq(&self, conversation: ConversationId, user: UserId) -> Result<i64> {
        let row = sqlx::query("SELECT read_seq FROM members WHERE conversation_id = ? AND user_id = ?")
            .bind(conversation.to_string())
            .bind(user.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("read_seq")).unwrap_or(0))
    }

    pub async fn username(&self, user: UserId) -> Result<Option<String>> {
        let row = sqlx::query("SELECT username FROM users WHERE id = ?")
            .bind(user.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("username")))
    }

    /// The other member of a direct conversation, as far as the cache knows.
    pub async fn other_member(&self, conversation: ConversationId, me: UserId) -> Result<Option<UserId>> {
        let row = sqlx::query("SELECT user_id FROM members WHERE conversation_id = ? AND user_id != ? LIMIT 1")
            .bind(conversation.to_string())
            .bind(me.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| id(&r.get::<String, _>("user_id"))).transpose()
    }

    async fn members(&self, conversation: &str) -> Result<Vec<MemberView>> {
        let rows = sqlx::query(&format!("{MEMBER_SELECT} WHERE m.conversation_id = ? ORDER BY username"))
            .bind(conversation)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(member_view).collect()
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
            id: r.get("id"),
            conversation: id(r.get("conversation_id"))?,
            client_id: r.get::<Option<String>, _>("own_client_id").map(|s| id(&s)).transpose()?,
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
            call: super::messages::call_record(r.get("call")),
            attachments: super::messages::attachments(r.get("attachments")),
        })
    }

    /// One of this account's own messages, by its client id.
    pub async fn own_message(&self, me: UserId, client_id: ClientId) -> Result<Option<ChatMessage>> {
        let row = sqlx::query("SELECT id FROM messages WHERE own_client_id = ?")
            .bind(client_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => self.message(me, r.get("id")).await,
            None => Ok(None),
        }
    }

    /// Several own messages of one conversation by client id (as
    /// [`Cache::own_message`], in a constant number of queries), in the
    /// order given; ids not found are left out.
    pub async fn own_messages(
        &self,
        me: UserId,
        conversation: ConversationId,
        client_ids: &[ClientId],
    ) -> Result<Vec<ChatMessage>> {
        if client_ids.is_empty() {
            return Ok(Vec::new());
        }
        let conv = conversation.to_string();
        let marks = vec!["?"; client_ids.len()].join(",");
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN users u ON u.id = m.sender
             WHERE m.conversation_id = ? AND m.own_client_id IN ({marks})"
        );
        let mut query = sqlx::query(&sql).bind(&conv);
        for id in client_ids {
            query = query.bind(id.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        let members = self.members(&conv).await?;
        let seqs: Vec<i64> = rows.iter().filter_map(|r| r.get::<Option<i64>, _>("seq")).collect();
        let mut reactions = match (seqs.iter().min(), seqs.iter().max()) {
            (Some(lo), Some(hi)) => self.reactions(&conv, *lo, *hi).await?,
            _ => HashMap::new(),
        };
        let mut by_id = HashMap::new();
        for row in &rows {
            let view = self.view(me, row, &members, &mut reactions)?;
            if let Some(id) = view.client_id {
                by_id.insert(id, view);
            }
        }
        Ok(client_ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    /// A message by its local id.
    pub async fn message(&self, me: UserId, local: LocalId) -> Result<Option<ChatMessage>> {
        let row = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN users u ON u.id = m.sender WHERE m.id = ?"
        ))
        .bind(local)
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

    /// The local id of the cached message at (`conversation`, `seq`).
    pub async fn message_by_seq_id(&self, conversation: ConversationId, seq: i64) -> Result<Option<LocalId>> {
        let row = sqlx::query("SELECT id FROM messages WHERE conversation_id = ? AND seq = ?")
            .bind(conversation.to_string())
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("id")))
    }

    pub async fn message_by_seq(
        &self,
        me: UserId,
        conversation: ConversationId,
        seq: i64,
    ) -> Result<Option<ChatMessage>> {
        let row = sqlx::query("SELECT id FROM messages WHERE conversation_id = ? AND seq = ?")
            .bind(conversation.to_string())
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => self.message(me, r.get("id")).await,
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
                 WHERE m.conversation_id = ? AND m.seq IS NULL ORDER BY m.id"
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

    /// Every conversation, most recent activity first. A fixed number of
    /// queries whatever the number of conversations: the list is reloaded
    /// after every burst of events.
    pub async fn conversations(&self, me: UserId) -> Result<Vec<ConversationSummary>> {
        self.summaries(me, None).await
    }

    /// Unread messages in all conversations (the list's counts, summed), in
    /// one query.
    pub async fn unread_total(&self, me: UserId) -> Result<i64> {
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n {}", unread_from()))
            .bind(me.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get("n"))
    }

    /// One conversation's summary, in the same few queries as the list but
    /// for it alone.
    pub async fn conversation(&self, me: UserId, conversation: ConversationId) -> Result<Option<ConversationSummary>> {
        Ok(self.summaries(me, Some(conversation)).await?.pop())
    }

    /// Summaries of every conversation, or of `only`: a constant number of
    /// queries however many there are.
    async fn summaries(&self, me: UserId, only: Option<ConversationId>) -> Result<Vec<ConversationSummary>> {
        let only = only.map(|c| c.to_string());
        let rows = sqlx::query(
            "SELECT c.id, c.kind, c.name, c.left,
               COALESCE((SELECT id FROM messages WHERE conversation_id = c.id AND seq IS NULL ORDER BY id DESC LIMIT 1),
                        (SELECT id FROM messages WHERE conversation_id = c.id AND seq IS NOT NULL
                         ORDER BY seq DESC LIMIT 1)) AS last_id
             FROM conversations c WHERE ?1 IS NULL OR c.id = ?1",
        )
        .bind(&only)
        .fetch_all(&self.pool)
        .await?;
        let mut members: HashMap<String, Vec<MemberView>> = HashMap::new();
        let member_rows =
            sqlx::query(&format!("{MEMBER_SELECT} WHERE ?1 IS NULL OR m.conversation_id = ?1 ORDER BY username"))
                .bind(&only)
                .fetch_all(&self.pool)
                .await?;
        for r in &member_rows {
            members.entry(r.get("conversation_id")).or_default().push(member_view(r)?);
        }
        let unread_rows = sqlx::query(&format!(
            "SELECT m.conversation_id, COUNT(*) AS n {} AND (?2 IS NULL OR m.conversation_id = ?2)
             GROUP BY m.conversation_id",
            unread_from()
        ))
        .bind(me.to_string())
        .bind(&only)
        .fetch_all(&self.pool)
        .await?;
        let unread: HashMap<String, i64> = unread_rows.iter().map(|r| (r.get("conversation_id"), r.get("n"))).collect();
        let last_ids: Vec<LocalId> = rows.iter().filter_map(|r| r.get::<Option<LocalId>, _>("last_id")).collect();
        let ids = serde_json::to_string(&last_ids).map_err(|e| crate::Error::Protocol(e.to_string()))?;
        let last_rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN users u ON u.id = m.sender
             WHERE m.id IN (SELECT value FROM json_each(?))"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let reaction_rows = sqlx::query(
            "SELECT r.conversation_id, r.seq, r.emoji, r.user_id FROM reactions r
             JOIN messages m ON m.conversation_id = r.conversation_id AND m.seq = r.seq
             WHERE m.id IN (SELECT value FROM json_each(?)) ORDER BY r.seq, r.emoji, r.user_id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut reactions: HashMap<String, HashMap<i64, Vec<Reaction>>> = HashMap::new();
        for r in &reaction_rows {
            let list = reactions.entry(r.get("conversation_id")).or_default().entry(r.get("seq")).or_default();
            Reaction::add_to(list, r.get("emoji"), id(r.get("user_id"))?);
        }
        let mut last: HashMap<String, ChatMessage> = HashMap::new();
        for r in &last_rows {
            let conv: String = r.get("conversation_id");
            let conv_members = members.get(&conv).map(Vec::as_slice).unwrap_or_default();
            let mut conv_reactions = reactions.remove(&conv).unwrap_or_default();
            last.insert(conv, self.view(me, r, conv_members, &mut conv_reactions)?);
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let key: String = r.get("id");
            let kind = kind_from(r.get("kind"));
            let members = members.remove(&key).unwrap_or_default();
            let title = match (kind, r.get::<Option<String>, _>("name")) {
                (ConvKind::Group, Some(name)) => name,
                _ => members.iter().find(|m| m.user != me).map(|m| m.username.clone()).unwrap_or_default(),
            };
            out.push(ConversationSummary {
                id: id(&key)?,
                kind,
                title,
                members,
                last_message: last.remove(&key),
                unread: unread.get(&key).copied().unwrap_or(0),
                left: r.get::<i64, _>("left") != 0,
            });
        }
        // Most recent activity first.
        out.sort_by_key(|c| std::cmp::Reverse(c.last_message.as_ref().map(|m| m.ts).unwrap_or(0)));
        Ok(out)
    }
}

/// Which messages `?1` has not read: the one definition the list's counts
/// and the total share.
fn unread_from() -> String {
    format!(
        "FROM messages m JOIN members me ON me.conversation_id = m.conversation_id AND me.user_id = ?1
         WHERE m.seq > me.read_seq AND m.sender != ?1 AND m.deleted = 0 AND {UNREAD_CALL}"
    )
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
