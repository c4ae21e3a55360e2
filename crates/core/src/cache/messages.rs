//! Messages from the server, stored under the identity rule: a message is
//! (conversation, seq); a client id is matched only for this account's
//! own messages. The one place that writes a server message's row.

use super::outbox::free_slot;
use super::{id, LocalId};
use crate::Result;
use confab_protocol::{ConversationId, Message, Reaction, UserId};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

/// What storing a server message did.
pub(super) struct Stored {
    pub(super) id: LocalId,
    pub(super) new: bool,
    /// An own message that held its slot, queued again.
    pub(super) requeued: Option<LocalId>,
}

/// Inserts or refreshes a message from the server.
///
/// The identity rule: the message is (conversation, seq). Only when it is
/// this account's own (`sender == me`) is its client id used, to find the
/// row its outbox entry made. Nothing another account sends can match,
/// change or displace a row by choosing a client id.
pub(super) async fn store_message(tx: &mut Transaction<'_, Sqlite>, me: UserId, m: &Message) -> Result<Stored> {
    let conv = m.conversation.to_string();
    let own_row = if m.sender == me {
        sqlx::query("SELECT id FROM messages WHERE own_client_id = ? AND conversation_id = ?")
            .bind(m.client_id.to_string())
            .bind(&conv)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.get::<LocalId, _>("id"))
    } else {
        None
    };
    let mut requeued = None;
    let (local, new) = match own_row {
        Some(local) => {
            requeued = free_slot(tx, &conv, m.seq, local).await?;
            sqlx::query(
                "UPDATE messages SET seq = ?, sender = ?, text = ?, ts = ?, edited_at = ?, deleted = ?, pinned = ?,
                   status = CASE WHEN status IN ('queued', 'failed') THEN 'sent' ELSE status END,
                   error_code = NULL, error_message = NULL
                 WHERE id = ?",
            )
            .bind(m.seq)
            .bind(m.sender.to_string())
            .bind(&m.text)
            .bind(m.ts)
            .bind(m.edited_at)
            .bind(m.deleted)
            .bind(m.pinned)
            .bind(local)
            .execute(&mut **tx)
            .await?;
            // Its reply was lost, or it came from another of our devices:
            // either way it is sent.
            sqlx::query("DELETE FROM outbox WHERE client_id = ?")
                .bind(m.client_id.to_string())
                .execute(&mut **tx)
                .await?;
            (local, false)
        }
        None => {
            let existing =
                sqlx::query("SELECT id, sender, own_client_id FROM messages WHERE conversation_id = ? AND seq = ?")
                    .bind(&conv)
                    .bind(m.seq)
                    .fetch_optional(&mut **tx)
                    .await?;
            // An own message from another device keeps its client id, unless
            // that id is already taken here (then it is not ours to match).
            let own_id = if m.sender == me {
                let taken = sqlx::query("SELECT 1 FROM messages WHERE own_client_id = ?")
                    .bind(m.client_id.to_string())
                    .fetch_optional(&mut **tx)
                    .await?
                    .is_some();
                (!taken).then(|| m.client_id.to_string())
            } else {
                None
            };
            let status = if m.sender == me { "sent" } else { "received" };
            match existing {
                Some(row)
                    if row.get::<String, _>("sender") == m.sender.to_string()
                        && row.get::<Option<String>, _>("own_client_id") == own_id =>
                {
                    let local: LocalId = row.get("id");
                    sqlx::query(
                        "UPDATE messages SET text = ?, ts = ?, edited_at = ?, deleted = ?, pinned = ? WHERE id = ?",
                    )
                    .bind(&m.text)
                    .bind(m.ts)
                    .bind(m.edited_at)
                    .bind(m.deleted)
                    .bind(m.pinned)
                    .bind(local)
                    .execute(&mut **tx)
                    .await?;
                    (local, false)
                }
                other => {
                    if other.is_some() {
                        // The slot holds some other message: stale.
                        requeued = free_slot(tx, &conv, m.seq, -1).await?;
                    }
                    let local: LocalId = sqlx::query(
                        "INSERT INTO messages (conversation_id, seq, sender, own_client_id, text, ts, edited_at, deleted,
                           pinned, status)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    )
                    .bind(&conv)
                    .bind(m.seq)
                    .bind(m.sender.to_string())
                    .bind(own_id)
                    .bind(&m.text)
                    .bind(m.ts)
                    .bind(m.edited_at)
                    .bind(m.deleted)
                    .bind(m.pinned)
                    .bind(status)
                    .fetch_one(&mut **tx)
                    .await?
                    .get("id");
                    (local, true)
                }
            }
        }
    };
    save_reactions(tx, &conv, m.seq, &m.reactions).await?;
    if let Some(call) = &m.call {
        let json = serde_json::to_string(call).map_err(|e| crate::Error::Protocol(e.to_string()))?;
        sqlx::query("UPDATE messages SET call = ? WHERE id = ?").bind(json).bind(local).execute(&mut **tx).await?;
    }
    // The server's word on the files (sniffed type, image size), or none
    // once deleted.
    if !m.attachments.is_empty() || m.deleted {
        sqlx::query("UPDATE messages SET attachments = ? WHERE id = ?")
            .bind(attachments_json(&m.attachments)?)
            .bind(local)
            .execute(&mut **tx)
            .await?;
    }
    Ok(Stored { id: local, new, requeued })
}

pub(super) async fn save_reactions(
    tx: &mut Transaction<'_, Sqlite>,
    conv: &str,
    seq: i64,
    reactions: &[Reaction],
) -> Result<()> {
    sqlx::query("DELETE FROM reactions WHERE conversation_id = ? AND seq = ?")
        .bind(conv)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    for r in reactions {
        for u in &r.users {
            sqlx::query("INSERT OR IGNORE INTO reactions (conversation_id, seq, user_id, emoji) VALUES (?, ?, ?, ?)")
                .bind(conv)
                .bind(seq)
                .bind(u.to_string())
                .bind(&r.emoji)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// A cached message as the protocol's [`Message`], for the shared rules.
pub(super) async fn load_message(
    tx: &mut Transaction<'_, Sqlite>,
    conversation: ConversationId,
    seq: i64,
) -> Result<Option<(LocalId, Message)>> {
    let conv = conversation.to_string();
    let Some(r) = sqlx::query(
        "SELECT id, own_client_id, sender, text, ts, edited_at, deleted, pinned, call, attachments FROM messages
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
        Reaction::add_to(&mut reactions, row.get("emoji"), id(row.get("user_id"))?);
    }
    let message = Message {
        conversation,
        seq,
        pos: 0,
        client_id: r.get::<Option<String>, _>("own_client_id").map(|s| id(&s)).transpose()?.unwrap_or(Uuid::nil()),
        sender: id(r.get("sender"))?,
        text: r.get("text"),
        ts: r.get("ts"),
        edited_at: r.get("edited_at"),
        deleted: r.get::<i64, _>("deleted") != 0,
        pinned: r.get::<i64, _>("pinned") != 0,
        reactions,
        call: call_record(r.get("call")),
        attachments: attachments(r.get("attachments")),
    };
    Ok(Some((r.get("id"), message)))
}

/// Stored attachments; ones that no longer parse are left out.
pub(super) fn attachments(json: Option<&str>) -> Vec<confab_protocol::Attachment> {
    json.and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default()
}

pub(super) fn attachments_json(list: &[confab_protocol::Attachment]) -> Result<Option<String>> {
    if list.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(list).map(Some).map_err(|e| crate::Error::Protocol(e.to_string()))
}

/// A stored call record; one that no longer parses is shown as a plain row.
pub(super) fn call_record(json: Option<&str>) -> Option<confab_protocol::CallRecord> {
    json.and_then(|j| serde_json::from_str(j).ok())
}
