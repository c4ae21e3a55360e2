//! [`PushStore`] on SQLite.

use super::{parse_id, SqliteStore, ROWS_PER_STATEMENT};
use crate::error::Result;
use crate::store::{now_ms, parse_push_target, PushRow, PushStore, SessionId};
use async_trait::async_trait;
use confab_protocol::{PushTarget, UserId};
use sqlx::Row;

#[async_trait]
impl PushStore for SqliteStore {
    async fn set_push(&self, session: SessionId, user: UserId, target: &PushTarget) -> Result<()> {
        let json = serde_json::to_string(target).map_err(|e| crate::error::ApiError::internal("push target", e))?;
        let mut tx = self.write.begin().await?;
        // The device now belongs to this session only.
        sqlx::query("DELETE FROM push_targets WHERE address = ? AND session_id != ?")
            .bind(target.address())
            .bind(session.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO push_targets (session_id, user_id, address, target, updated_at)
             SELECT id, user_id, ?, ?, ? FROM sessions WHERE id = ? AND user_id = ?
             ON CONFLICT (session_id) DO UPDATE SET
                address = excluded.address, target = excluded.target, updated_at = excluded.updated_at",
        )
        .bind(target.address())
        .bind(json)
        .bind(now_ms())
        .bind(session.to_string())
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn clear_push(&self, session: SessionId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM push_targets WHERE session_id = ?")
            .bind(session.to_string())
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn push_targets(&self, users: &[UserId]) -> Result<Vec<PushRow>> {
        let mut rows = Vec::new();
        for chunk in users.chunks(ROWS_PER_STATEMENT) {
            let ids = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT session_id, user_id, target FROM push_targets WHERE user_id IN ({ids})");
            let mut q = sqlx::query(&sql);
            for u in chunk {
                q = q.bind(u.to_string());
            }
            for r in q.fetch_all(&self.read).await? {
                rows.push(PushRow {
                    session: parse_id(r.get("session_id"))?,
                    user: parse_id(r.get("user_id"))?,
                    target: parse_push_target(r.get("target"))?,
                });
            }
        }
        Ok(rows)
    }

    async fn drop_push(&self, session: SessionId, target: &PushTarget) -> Result<bool> {
        let done = sqlx::query("DELETE FROM push_targets WHERE session_id = ? AND address = ?")
            .bind(session.to_string())
            .bind(target.address())
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
