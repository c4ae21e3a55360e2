//! Own messages from composing until the server accepts or refuses them.
//! A message row and its outbox entry are written in one transaction, and
//! the entry leaves in the same transaction that marks the message sent.

use super::{id, now_ms, Cache, LocalId};
use crate::types::SendError;
use crate::Result;
use confab_protocol::{Attachment, AttachmentRef, ClientId, ConversationId, ErrorCode, Millis, UserId};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct OutboxEntry {
    pub id: i64,
    pub client_id: ClientId,
    pub conversation: ConversationId,
    pub text: String,
    /// What the message carries (each file uploaded before the entry is
    /// handed out).
    pub attachments: Vec<AttachmentRef>,
    pub attempts: i64,
}

/// A file to attach, copied into the profile and hashed.
#[derive(Clone, Debug)]
pub struct NewFile {
    pub path: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// What this device makes of it (the server sniffs it again).
    pub mime: String,
}

impl Cache {
    /// Saves new own messages and their outbox entries, in order, in one
    /// transaction.
    pub async fn enqueue_all(
        &self,
        conversation: ConversationId,
        sender: UserId,
        texts: &[&str],
    ) -> Result<Vec<ClientId>> {
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(texts.len());
        for text in texts {
            ids.push(enqueue_in(&mut tx, conversation, sender, text).await?);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Saves a new own message with files, its outbox entry and the files
    /// to upload, in one transaction.
    pub async fn enqueue_files(
        &self,
        conversation: ConversationId,
        sender: UserId,
        text: &str,
        files: &[NewFile],
    ) -> Result<ClientId> {
        let attachments: Vec<Attachment> = files
            .iter()
            .map(|f| Attachment {
                hash: f.sha256.clone(),
                name: f.name.clone(),
                size: f.size as i64,
                mime: f.mime.clone(),
                width: None,
                height: None,
                thumbnail: false,
            })
            .collect();
        let json = serde_json::to_string(&attachments).map_err(|e| crate::Error::Protocol(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let client_id = enqueue_in(&mut tx, conversation, sender, text).await?;
        sqlx::query("UPDATE messages SET attachments = ? WHERE own_client_id = ?")
            .bind(json)
            .bind(client_id.to_string())
            .execute(&mut *tx)
            .await?;
        for (idx, f) in files.iter().enumerate() {
            sqlx::query(
                "INSERT INTO outgoing_files (client_id, idx, path, name, size, sha256) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(client_id.to_string())
            .bind(idx as i64)
            .bind(&f.path)
            .bind(&f.name)
            .bind(f.size as i64)
            .bind(&f.sha256)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(client_id)
    }

    /// The oldest entries that go to the same conversation, up to `max`
    /// of them and about `budget` bytes of text (the first in any case):
    /// what one `send_many` carries. A conversation waits at its first
    /// entry with a file still uploading (its order holds); the others go
    /// on.
    pub async fn next_outbox_batch(&self, max: usize, budget: usize) -> Result<Vec<OutboxEntry>> {
        let rows = sqlx::query(
            "SELECT o.id, o.client_id, o.conversation_id, o.text, o.attempts, m.attachments FROM outbox o
             LEFT JOIN messages m ON m.own_client_id = o.client_id
             WHERE NOT EXISTS (SELECT 1 FROM outbox p JOIN outgoing_files f ON f.client_id = p.client_id
                               WHERE p.conversation_id = o.conversation_id AND p.id <= o.id)
             ORDER BY o.id LIMIT ?",
        )
        .bind(max as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut batch: Vec<OutboxEntry> = Vec::new();
        let mut bytes = 0;
        for r in rows {
            let entry = OutboxEntry {
                id: r.get("id"),
                client_id: id(r.get("client_id"))?,
                conversation: id(r.get("conversation_id"))?,
                text: r.get("text"),
                attachments: r
                    .get::<Option<&str>, _>("attachments")
                    .and_then(|j| serde_json::from_str::<Vec<Attachment>>(j).ok())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| AttachmentRef { hash: a.hash, name: a.name })
                    .collect(),
                attempts: r.get("attempts"),
            };
            // As JSON: escapes can make a character up to six bytes.
            let size = serde_json::to_string(&entry.text).map_or(entry.text.len() * 6, |j| j.len())
                + entry.attachments.iter().map(|a| a.name.len() * 6 + 100).sum::<usize>()
                + 80;
            let fits =
                batch.first().is_none_or(|first| first.conversation == entry.conversation && bytes + size <= budget);
            if !fits {
                break;
            }
            bytes += size;
            batch.push(entry);
        }
        Ok(batch)
    }

    pub async fn outbox_len(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM outbox").fetch_one(&self.pool).await?.get("n"))
    }

    /// Where an own message stands: (status, seq, error), cheaply.
    pub async fn send_state(&self, client_id: ClientId) -> Result<Option<(String, Option<i64>, Option<SendError>)>> {
        let row = sqlx::query("SELECT status, seq, error_code, error_message FROM messages WHERE own_client_id = ?")
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

    /// The server accepted the message at `seq`: record it and drop the
    /// entry. Returns the message's local id.
    pub async fn mark_sent(&self, client_id: ClientId, seq: i64, ts: Millis) -> Result<Option<LocalId>> {
        Ok(self.mark_sent_all(&[(client_id, seq, ts)]).await?.pop().flatten())
    }

    /// [`Cache::mark_sent`] for several messages, in one transaction.
    pub async fn mark_sent_all(&self, sent: &[(ClientId, i64, Millis)]) -> Result<Vec<Option<LocalId>>> {
        let mut tx = self.pool.begin().await?;
        let mut locals = Vec::with_capacity(sent.len());
        for &(client_id, seq, ts) in sent {
            locals.push(mark_sent_in(&mut tx, client_id, seq, ts).await?);
        }
        tx.commit().await?;
        Ok(locals)
    }

    /// The server refused the message for good.
    pub async fn mark_failed(&self, client_id: ClientId, code: ErrorCode, message: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE messages SET status = 'failed', error_code = ?, error_message = ? WHERE own_client_id = ? AND seq IS NULL",
        )
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
             WHERE own_client_id = ? AND status = 'failed' RETURNING conversation_id, text",
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
}

/// Removes whatever row holds (`conversation`, `seq`) other than `keep`: an
/// own message there was lost by the server (a rewind) and is queued again
/// under its client id (returned, so the outbox can be woken); anyone
/// else's is stale and dropped.
pub(super) async fn free_slot(
    tx: &mut Transaction<'_, Sqlite>,
    conversation: &str,
    seq: i64,
    keep: LocalId,
) -> Result<Option<LocalId>> {
    let row = sqlx::query("SELECT id, own_client_id FROM messages WHERE conversation_id = ? AND seq = ? AND id != ?")
        .bind(conversation)
        .bind(seq)
        .bind(keep)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let other: LocalId = row.get("id");
    // Its reactions belonged to it, not to the message taking the slot.
    sqlx::query("DELETE FROM reactions WHERE conversation_id = ? AND seq = ?")
        .bind(conversation)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    match row.get::<Option<String>, _>("own_client_id") {
        Some(_) => {
            requeue(tx, other).await?;
            Ok(Some(other))
        }
        None => {
            sqlx::query("DELETE FROM messages WHERE id = ?").bind(other).execute(&mut **tx).await?;
            Ok(None)
        }
    }
}

/// Sends an own message again (same client id, so the server keeps at most
/// one copy): it becomes queued with no seq, at the end of the outbox.
pub(super) async fn requeue(tx: &mut Transaction<'_, Sqlite>, local: LocalId) -> Result<()> {
    let row = sqlx::query(
        "UPDATE messages SET seq = NULL, status = 'queued', error_code = NULL, error_message = NULL, edited_at = NULL,
           pinned = 0
         WHERE id = ? AND own_client_id IS NOT NULL AND deleted = 0 RETURNING own_client_id, conversation_id, text",
    )
    .bind(local)
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some(row) => {
            sqlx::query("INSERT OR IGNORE INTO outbox (client_id, conversation_id, text) VALUES (?, ?, ?)")
                .bind(row.get::<String, _>("own_client_id"))
                .bind(row.get::<String, _>("conversation_id"))
                .bind(row.get::<String, _>("text"))
                .execute(&mut **tx)
                .await?;
        }
        // A deleted own message the server lost needs no resend.
        None => {
            sqlx::query("DELETE FROM messages WHERE id = ?").bind(local).execute(&mut **tx).await?;
        }
    }
    Ok(())
}

async fn mark_sent_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    client_id: ClientId,
    seq: i64,
    ts: Millis,
) -> Result<Option<LocalId>> {
    let row = sqlx::query("SELECT id, conversation_id, seq FROM messages WHERE own_client_id = ?")
        .bind(client_id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    let local = match row {
        Some(r) if r.get::<Option<i64>, _>("seq").is_none() => {
            let local: LocalId = r.get("id");
            // The server says (conversation, seq) is this message: a row
            // still holding that slot is stale.
            free_slot(tx, r.get("conversation_id"), seq, local).await?;
            // (An own message found there was queued again; the outbox
            // task calling this finds it on its next round.)
            sqlx::query(
                "UPDATE messages SET seq = ?, ts = ?, status = 'sent', error_code = NULL, error_message = NULL
                 WHERE id = ?",
            )
            .bind(seq)
            .bind(ts)
            .bind(local)
            .execute(&mut **tx)
            .await?;
            Some(local)
        }
        Some(r) => Some(r.get("id")),
        None => None,
    };
    sqlx::query("DELETE FROM outbox WHERE client_id = ?").bind(client_id.to_string()).execute(&mut **tx).await?;
    Ok(local)
}

async fn enqueue_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    conversation: ConversationId,
    sender: UserId,
    text: &str,
) -> Result<ClientId> {
    let client_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO messages (own_client_id, conversation_id, sender, text, ts, status) VALUES (?, ?, ?, ?, ?, 'queued')",
    )
    .bind(client_id.to_string())
    .bind(conversation.to_string())
    .bind(sender.to_string())
    .bind(text)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO outbox (client_id, conversation_id, text) VALUES (?, ?, ?)")
        .bind(client_id.to_string())
        .bind(conversation.to_string())
        .bind(text)
        .execute(&mut **tx)
        .await?;
    Ok(client_id)
}
