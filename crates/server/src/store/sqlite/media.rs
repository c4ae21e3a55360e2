//! [`MediaStore`] on SQLite: uploads, blobs, their owners and the messages
//! that carry them, and full-text search (FTS5, kept by triggers on
//! `messages`; see migration 0006).

use super::{parse_id, SqliteStore};
use crate::error::{ApiError, Result};
use crate::store::{now_ms, BlobInfo, MediaStore, SearchQuery, Upload, SWEEP_BATCH};
use async_trait::async_trait;
use confab_protocol::{media, ErrorCode, Millis, SearchHit, UserId};
use sqlx::Row;
use uuid::Uuid;

fn upload_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Upload> {
    Ok(Upload {
        id: parse_id(r.get("id"))?,
        user: parse_id(r.get("user_id"))?,
        length: r.get::<i64, _>("length") as u64,
        committed: r.get::<i64, _>("committed") as u64,
        sha256: r.get("sha256"),
        blob: r.get("blob"),
    })
}

fn blob_from_row(r: &sqlx::sqlite::SqliteRow) -> BlobInfo {
    BlobInfo {
        hash: r.get("hash"),
        size: r.get::<i64, _>("size") as u64,
        mime: r.get("mime"),
        width: r.get::<Option<i64>, _>("width").map(|w| w as u32),
        height: r.get::<Option<i64>, _>("height").map(|h| h as u32),
        thumbable: r.get::<i64, _>("thumbable") != 0,
        thumbnail: r.get("thumbnail"),
    }
}

const BLOB_COLUMNS: &str = "b.hash, b.size, b.mime, b.width, b.height, b.thumbable, b.thumbnail";

#[async_trait]
impl MediaStore for SqliteStore {
    async fn create_upload(&self, upload: &Upload, quota: u64) -> Result<()> {
        let user = upload.user.to_string();
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(
            "SELECT
                COALESCE((SELECT SUM(b.size) FROM blob_owners o JOIN blobs b ON b.hash = o.hash WHERE o.user_id = ?1), 0)
                + COALESCE((SELECT SUM(length) FROM uploads WHERE user_id = ?1 AND blob IS NULL), 0) AS used,
                (SELECT COUNT(*) FROM uploads WHERE user_id = ?1 AND blob IS NULL) AS open",
        )
        .bind(&user)
        .fetch_one(&mut *tx)
        .await?;
        crate::store::check_quota(row.get("used"), row.get("open"), upload.length, quota)?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO uploads (id, user_id, length, committed, sha256, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?, ?)",
        )
        .bind(upload.id.to_string())
        .bind(&user)
        .bind(upload.length as i64)
        .bind(&upload.sha256)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn upload(&self, id: Uuid) -> Result<Option<Upload>> {
        let row = sqlx::query("SELECT id, user_id, length, committed, sha256, blob FROM uploads WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(upload_from_row).transpose()
    }

    async fn commit_upload(&self, id: Uuid, committed: u64) -> Result<()> {
        sqlx::query("UPDATE uploads SET committed = ?, updated_at = ? WHERE id = ?")
            .bind(committed as i64)
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn delete_upload(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE id = ?").bind(id.to_string()).execute(&self.write).await?;
        Ok(())
    }

    async fn expire_uploads(&self, before: Millis) -> Result<Vec<Uuid>> {
        let rows = sqlx::query("DELETE FROM uploads WHERE updated_at < ? RETURNING id, blob")
            .bind(before)
            .fetch_all(&self.write)
            .await?;
        rows.iter().filter(|r| r.get::<Option<&str>, _>("blob").is_none()).map(|r| parse_id(r.get("id"))).collect()
    }

    async fn file_blob(&self, upload: Uuid, owner: UserId, blob: &BlobInfo) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let now = now_ms();
        sqlx::query(
            "INSERT OR IGNORE INTO blobs (hash, size, mime, width, height, thumbable, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&blob.hash)
        .bind(blob.size as i64)
        .bind(&blob.mime)
        .bind(blob.width.map(i64::from))
        .bind(blob.height.map(i64::from))
        .bind(blob.thumbable)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO blob_owners (hash, user_id, at) VALUES (?, ?, ?)
             ON CONFLICT (hash, user_id) DO UPDATE SET at = excluded.at",
        )
        .bind(&blob.hash)
        .bind(owner.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE uploads SET blob = ?, committed = length, updated_at = ? WHERE id = ?")
            .bind(&blob.hash)
            .bind(now)
            .bind(upload.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn blob(&self, hash: &str) -> Result<Option<BlobInfo>> {
        let sql = format!("SELECT {BLOB_COLUMNS} FROM blobs b WHERE b.hash = ?");
        let row = sqlx::query(&sql).bind(hash).fetch_optional(&self.read).await?;
        Ok(row.as_ref().map(blob_from_row))
    }

    async fn claim_blob(&self, user: UserId, hash: &str) -> Result<Option<BlobInfo>> {
        let claimed = sqlx::query("UPDATE blob_owners SET at = ? WHERE hash = ? AND user_id = ?")
            .bind(now_ms())
            .bind(hash)
            .bind(user.to_string())
            .execute(&self.write)
            .await?
            .rows_affected()
            > 0;
        if !claimed {
            return Ok(None);
        }
        self.blob(hash).await
    }

    async fn set_thumbnail(&self, hash: &str, thumbnail: &str) -> Result<()> {
        sqlx::query("UPDATE blobs SET thumbnail = ? WHERE hash = ?")
            .bind(thumbnail)
            .bind(hash)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn no_thumbnail(&self, hash: &str) -> Result<()> {
        sqlx::query("UPDATE blobs SET thumbable = 0 WHERE hash = ?").bind(hash).execute(&self.write).await?;
        Ok(())
    }

    async fn may_read_blob(&self, user: UserId, hash: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM attachments a
                            JOIN members m ON m.conversation_id = a.conversation_id AND m.user_id = ?1
                            WHERE a.hash = ?2)
                 OR EXISTS (SELECT 1 FROM blob_owners WHERE hash = ?2 AND user_id = ?1) AS ok",
        )
        .bind(user.to_string())
        .bind(hash)
        .fetch_one(&self.read)
        .await?;
        Ok(row.get::<i64, _>("ok") != 0)
    }

    async fn sweep_blobs(&self, claimed_before: Millis) -> Result<Vec<String>> {
        let mut tx = self.write.begin().await?;
        // Unreferenced, unclaimed, and not some other blob's thumbnail
        // (a thumbnail's bytes can be uploaded as a file of their own).
        let rows = sqlx::query(
            "SELECT b.hash, b.thumbnail FROM blobs b
             WHERE NOT EXISTS (SELECT 1 FROM attachments a WHERE a.hash = b.hash)
               AND NOT EXISTS (SELECT 1 FROM blob_owners o WHERE o.hash = b.hash AND o.at >= ?)
               AND NOT EXISTS (SELECT 1 FROM blobs t WHERE t.thumbnail = b.hash)
             LIMIT ?",
        )
        .bind(claimed_before)
        .bind(SWEEP_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let mut gone = Vec::new();
        for r in &rows {
            let hash: String = r.get("hash");
            sqlx::query("DELETE FROM blob_owners WHERE hash = ?").bind(&hash).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM blobs WHERE hash = ?").bind(&hash).execute(&mut *tx).await?;
            gone.push(hash);
        }
        for r in &rows {
            let Some(thumb) = r.get::<Option<String>, _>("thumbnail") else { continue };
            let used = sqlx::query("SELECT 1 FROM blobs WHERE thumbnail = ?1 OR hash = ?1 LIMIT 1")
                .bind(&thumb)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !used && !gone.contains(&thumb) {
                gone.push(thumb);
            }
        }
        tx.commit().await?;
        Ok(gone)
    }

    async fn search(&self, q: &SearchQuery) -> Result<Vec<SearchHit>> {
        let limit = q.limit.clamp(1, media::MAX_SEARCH_HITS) as i64 + 1;
        let Some(fts) = media::fts_query(&q.words.join(" ")) else { return Ok(Vec::new()) };
        let in_conversation = if q.conversation.is_some() { "AND r.conversation_id = ?4" } else { "" };
        let sql = format!(
            "SELECT r.conversation_id, r.seq, m.sender, m.ts,
                    snippet(message_search, 0, char(2), char(3), '…', 16) AS snippet
             FROM message_search s
             JOIN message_rowids r ON r.rowid = s.rowid
             JOIN members mb ON mb.conversation_id = r.conversation_id AND mb.user_id = ?1
             JOIN messages m ON m.conversation_id = r.conversation_id AND m.seq = r.seq
             WHERE message_search MATCH ?2 AND m.ts < ?3 {in_conversation}
             ORDER BY m.ts DESC, r.seq DESC
             LIMIT ?5"
        );
        let rows = sqlx::query(&sql)
            .bind(q.user.to_string())
            .bind(&fts)
            .bind(q.before.unwrap_or(Millis::MAX))
            .bind(q.conversation.map(|c| c.to_string()))
            .bind(limit)
            .fetch_all(&self.read)
            .await
            .map_err(|e| match &e {
                // A query our quoting let through but FTS5 still refuses.
                sqlx::Error::Database(d) if d.message().contains("fts5") => {
                    ApiError::new(ErrorCode::InvalidRequest, "cannot search for that")
                }
                _ => ApiError::from(e),
            })?;
        rows.iter()
            .map(|r| {
                Ok(SearchHit {
                    conversation: parse_id(r.get("conversation_id"))?,
                    seq: r.get("seq"),
                    sender: parse_id(r.get("sender"))?,
                    ts: r.get("ts"),
                    snippet: r.get("snippet"),
                })
            })
            .collect()
    }
}
