//! Files on their way out (uploads still to finish) and files that came
//! in (the media cache's bookkeeping, for its size cap).

use super::{id, now_ms, Cache};
use crate::Result;
use confab_protocol::ClientId;
use sqlx::Row;

/// A file of a queued message whose upload has not completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingFile {
    pub client_id: ClientId,
    pub idx: i64,
    /// The profile's copy of the file.
    pub path: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// The upload's URL once created on the server.
    pub upload_url: Option<String>,
}

impl Cache {
    /// The next file to upload: of the oldest queued message with one.
    /// (A failed message's files wait for its retry.)
    pub async fn next_pending_file(&self) -> Result<Option<PendingFile>> {
        let row = sqlx::query(
            "SELECT f.client_id, f.idx, f.path, f.name, f.size, f.sha256, f.upload_url FROM outgoing_files f
             JOIN outbox o ON o.client_id = f.client_id ORDER BY o.id, f.idx LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(PendingFile {
                client_id: id(r.get("client_id"))?,
                idx: r.get("idx"),
                path: r.get("path"),
                name: r.get("name"),
                size: r.get::<i64, _>("size") as u64,
                sha256: r.get("sha256"),
                upload_url: r.get("upload_url"),
            })
        })
        .transpose()
    }

    pub async fn set_upload_url(&self, client_id: ClientId, idx: i64, url: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE outgoing_files SET upload_url = ? WHERE client_id = ? AND idx = ?")
            .bind(url)
            .bind(client_id.to_string())
            .bind(idx)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The file's upload completed: it no longer holds its message back.
    pub async fn file_uploaded(&self, client_id: ClientId, idx: i64) -> Result<()> {
        sqlx::query("DELETE FROM outgoing_files WHERE client_id = ? AND idx = ?")
            .bind(client_id.to_string())
            .bind(idx)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Files of a message still to upload, with how many bytes each has.
    pub async fn pending_files_of(&self, client_id: ClientId) -> Result<Vec<PendingFile>> {
        let rows = sqlx::query(
            "SELECT client_id, idx, path, name, size, sha256, upload_url FROM outgoing_files WHERE client_id = ?
             ORDER BY idx",
        )
        .bind(client_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingFile {
                    client_id: id(r.get("client_id"))?,
                    idx: r.get("idx"),
                    path: r.get("path"),
                    name: r.get("name"),
                    size: r.get::<i64, _>("size") as u64,
                    sha256: r.get("sha256"),
                    upload_url: r.get("upload_url"),
                })
            })
            .collect()
    }

    /// Drops an own message that is not sent (queued or failed), with its
    /// outbox entry and files; returns the files it had left to upload
    /// (their copies and server uploads are the caller's to remove).
    /// `None` if there is no such unsent message.
    pub async fn discard_unsent(&self, client_id: ClientId) -> Result<Option<Vec<PendingFile>>> {
        let files = self.pending_files_of(client_id).await?;
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM messages WHERE own_client_id = ? AND seq IS NULL")
            .bind(client_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Ok(None);
        }
        for table in ["outbox", "outgoing_files"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE client_id = ?"))
                .bind(client_id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(files))
    }

    /// Records a file now in the media cache (or used again).
    pub async fn media_used(&self, key: &str, bytes: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO media_files (key, bytes, last_used) VALUES (?, ?, ?)
             ON CONFLICT (key) DO UPDATE SET bytes = excluded.bytes, last_used = excluded.last_used",
        )
        .bind(key)
        .bind(bytes as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether the media cache holds `key`, marking it used if so.
    pub async fn media_touch(&self, key: &str) -> Result<bool> {
        let n = sqlx::query("UPDATE media_files SET last_used = ? WHERE key = ?")
            .bind(now_ms())
            .bind(key)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Forgets the least recently used files until the cache holds at most
    /// `cap` bytes; returns their keys (the files are the caller's to
    /// remove).
    pub async fn media_evict(&self, cap: u64) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let total: i64 =
            sqlx::query("SELECT COALESCE(SUM(bytes), 0) AS n FROM media_files").fetch_one(&mut *tx).await?.get("n");
        let mut over = total - cap as i64;
        let mut gone = Vec::new();
        if over > 0 {
            let rows =
                sqlx::query("SELECT key, bytes FROM media_files ORDER BY last_used, key").fetch_all(&mut *tx).await?;
            for r in rows {
                if over <= 0 {
                    break;
                }
                let key: String = r.get("key");
                sqlx::query("DELETE FROM media_files WHERE key = ?").bind(&key).execute(&mut *tx).await?;
                over -= r.get::<i64, _>("bytes");
                gone.push(key);
            }
        }
        tx.commit().await?;
        Ok(gone)
    }
}
