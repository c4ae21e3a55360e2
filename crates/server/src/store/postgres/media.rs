//! [`MediaStore`] on Postgres: uploads, blobs, their owners and the
//! messages that carry them, and full-text search (a GIN index over
//! `to_tsvector('confab', text)`: words, lower case, accents removed).

use super::PostgresStore;
use crate::error::{ApiError, Result};
use crate::store::{now_ms, BlobInfo, MediaStore, SearchQuery, Upload, SWEEP_BATCH};
use async_trait::async_trait;
use confab_protocol::{media, ErrorCode, Millis, SearchHit, UserId};
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

fn upload_from_row(r: &PgRow) -> Upload {
    Upload {
        id: r.get("id"),
        user: r.get("user_id"),
        length: r.get::<i64, _>("length") as u64,
        committed: r.get::<i64, _>("committed") as u64,
        sha256: r.get("sha256"),
        blob: r.get("blob"),
    }
}

fn blob_from_row(r: &PgRow) -> BlobInfo {
    BlobInfo {
        hash: r.get("hash"),
        size: r.get::<i64, _>("size") as u64,
        mime: r.get("mime"),
        width: r.get::<Option<i64>, _>("width").map(|w| w as u32),
        height: r.get::<Option<i64>, _>("height").map(|h| h as u32),
        thumbable: r.get("thumbable"),
        thumbnail: r.get("thumbnail"),
    }
}

/// A `to_tsquery` of the words, all required, the last one a prefix. Each
/// is split at punctuation as the index splits the text (`c'est` is `c`
/// and `est`), and each part is a quoted lexeme, so nothing in it is an
/// operator.
fn ts_query(words: &[String]) -> Option<String> {
    let parts: Vec<String> = words
        .iter()
        .flat_map(|w| w.split(|c: char| !c.is_alphanumeric()).filter(|p| !p.is_empty()).map(|p| format!("'{p}'")))
        .collect();
    if parts.is_empty() {
        return None;
    }
    Some(format!("{}:*", parts.join(" & ")))
}

#[async_trait]
impl MediaStore for PostgresStore {
    async fn create_upload(&self, upload: &Upload, quota: u64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // One account's uploads are created one at a time, so two at once
        // cannot both fit under the quota.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 1))")
            .bind(upload.user)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "SELECT
                COALESCE((SELECT SUM(b.size) FROM blob_owners o JOIN blobs b ON b.hash = o.hash WHERE o.user_id = $1), 0)::BIGINT
                + COALESCE((SELECT SUM(length) FROM uploads WHERE user_id = $1 AND blob IS NULL), 0)::BIGINT AS used,
                (SELECT COUNT(*) FROM uploads WHERE user_id = $1 AND blob IS NULL) AS open",
        )
        .bind(upload.user)
        .fetch_one(&mut *tx)
        .await?;
        crate::store::check_quota(row.get("used"), row.get("open"), upload.length, quota)?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO uploads (id, user_id, length, committed, sha256, created_at, updated_at)
             VALUES ($1, $2, $3, 0, $4, $5, $5)",
        )
        .bind(upload.id)
        .bind(upload.user)
        .bind(upload.length as i64)
        .bind(&upload.sha256)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn upload(&self, id: Uuid) -> Result<Option<Upload>> {
        let row = sqlx::query("SELECT id, user_id, length, committed, sha256, blob FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(upload_from_row))
    }

    async fn commit_upload(&self, id: Uuid, committed: u64) -> Result<()> {
        sqlx::query("UPDATE uploads SET committed = $1, updated_at = $2 WHERE id = $3")
            .bind(committed as i64)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_upload(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn expire_uploads(&self, before: Millis) -> Result<Vec<Uuid>> {
        let rows = sqlx::query("DELETE FROM uploads WHERE updated_at < $1 RETURNING id, blob")
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().filter(|r| r.get::<Option<&str>, _>("blob").is_none()).map(|r| r.get("id")).collect())
    }

    async fn file_blob(&self, upload: Uuid, owner: UserId, blob: &BlobInfo) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO blobs (hash, size, mime, width, height, thumbable, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
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
            "INSERT INTO blob_owners (hash, user_id, at) VALUES ($1, $2, $3)
             ON CONFLICT (hash, user_id) DO UPDATE SET at = excluded.at",
        )
        .bind(&blob.hash)
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE uploads SET blob = $1, committed = length, updated_at = $2 WHERE id = $3")
            .bind(&blob.hash)
            .bind(now)
            .bind(upload)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn blob(&self, hash: &str) -> Result<Option<BlobInfo>> {
        let row =
            sqlx::query("SELECT hash, size, mime, width, height, thumbable, thumbnail FROM blobs WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.as_ref().map(blob_from_row))
    }

    async fn claim_blob(&self, user: UserId, hash: &str) -> Result<Option<BlobInfo>> {
        // The blob's row lock: a sweep on another node that is removing it
        // finishes first (and then there is nothing to claim).
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT hash, size, mime, width, height, thumbable, thumbnail FROM blobs WHERE hash = $1 FOR SHARE",
        )
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let claimed = sqlx::query("UPDATE blob_owners SET at = $1 WHERE hash = $2 AND user_id = $3")
            .bind(now_ms())
            .bind(hash)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        tx.commit().await?;
        Ok(claimed.then(|| blob_from_row(&row)))
    }

    async fn set_thumbnail(&self, hash: &str, thumbnail: &str) -> Result<()> {
        sqlx::query("UPDATE blobs SET thumbnail = $1 WHERE hash = $2")
            .bind(thumbnail)
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn no_thumbnail(&self, hash: &str) -> Result<()> {
        sqlx::query("UPDATE blobs SET thumbable = false WHERE hash = $1").bind(hash).execute(&self.pool).await?;
        Ok(())
    }

    async fn may_read_blob(&self, user: UserId, hash: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM attachments a
                            JOIN members m ON m.conversation_id = a.conversation_id AND m.user_id = $1
                            WHERE a.hash = $2)
                 OR EXISTS (SELECT 1 FROM blob_owners WHERE hash = $2 AND user_id = $1) AS ok",
        )
        .bind(user)
        .bind(hash)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get("ok"))
    }

    async fn sweep_blobs(&self, claimed_before: Millis) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        // Unreferenced, unclaimed, and not some other blob's thumbnail;
        // SKIP LOCKED lets two nodes sweep at once without waiting.
        let rows = sqlx::query(
            "SELECT b.hash, b.thumbnail FROM blobs b
             WHERE NOT EXISTS (SELECT 1 FROM attachments a WHERE a.hash = b.hash)
               AND NOT EXISTS (SELECT 1 FROM blob_owners o WHERE o.hash = b.hash AND o.at >= $1)
               AND NOT EXISTS (SELECT 1 FROM blobs t WHERE t.thumbnail = b.hash)
             LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(claimed_before)
        .bind(SWEEP_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let candidates: Vec<String> = rows.iter().map(|r| r.get("hash")).collect();
        // Checked again now that the rows are locked (a claim or a message
        // on another node may have committed since the select's snapshot;
        // later ones wait for the lock, see claim_blob).
        let deleted = sqlx::query(
            "DELETE FROM blobs b WHERE b.hash = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.hash = b.hash)
               AND NOT EXISTS (SELECT 1 FROM blob_owners o WHERE o.hash = b.hash AND o.at >= $2)
               AND NOT EXISTS (SELECT 1 FROM blobs t WHERE t.thumbnail = b.hash)
             RETURNING b.hash",
        )
        .bind(&candidates)
        .bind(claimed_before)
        .fetch_all(&mut *tx)
        .await?;
        let hashes: Vec<String> = deleted.iter().map(|r| r.get("hash")).collect();
        sqlx::query("DELETE FROM blob_owners WHERE hash = ANY($1)").bind(&hashes).execute(&mut *tx).await?;
        let rows: Vec<_> = rows.into_iter().filter(|r| hashes.contains(&r.get::<String, _>("hash"))).collect();
        let mut gone = hashes;
        for r in &rows {
            let Some(thumb) = r.get::<Option<String>, _>("thumbnail") else { continue };
            let used = sqlx::query("SELECT 1 FROM blobs WHERE thumbnail = $1 OR hash = $1 LIMIT 1")
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
        let Some(tsquery) = ts_query(&q.words) else { return Ok(Vec::new()) };
        let options = format!(
            "StartSel=\"{}\", StopSel=\"{}\", MaxWords=16, MinWords=4, ShortWord=0, MaxFragments=1, FragmentDelimiter=\"…\"",
            media::HIGHLIGHT_START,
            media::HIGHLIGHT_END
        );
        let rows = sqlx::query(
            "SELECT m.conversation_id, m.seq, m.sender, m.ts, ts_headline('confab', m.text, q, $6) AS snippet
             FROM messages m
             JOIN members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = $1,
             to_tsquery('confab', $2) q
             WHERE to_tsvector('confab', regexp_replace(m.text, '[[:punct:]]', ' ', 'g')) @@ q AND m.ts < $3 AND ($4::uuid IS NULL OR m.conversation_id = $4)
             ORDER BY m.ts DESC, m.seq DESC
             LIMIT $5",
        )
        .bind(q.user)
        .bind(&tsquery)
        .bind(q.before.unwrap_or(Millis::MAX))
        .bind(q.conversation)
        .bind(limit)
        .bind(options)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| match &e {
            // A query our quoting let through but the parser still refuses.
            sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("42")) => {
                ApiError::new(ErrorCode::InvalidRequest, "cannot search for that")
            }
            _ => ApiError::from(e),
        })?;
        Ok(rows
            .iter()
            .map(|r| SearchHit {
                conversation: r.get("conversation_id"),
                seq: r.get("seq"),
                sender: r.get("sender"),
                ts: r.get("ts"),
                snippet: r.get("snippet"),
            })
            .collect())
    }
}
