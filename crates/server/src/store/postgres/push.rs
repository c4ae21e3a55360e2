//! [`PushStore`] on Postgres.

use super::PostgresStore;
use crate::error::Result;
use crate::store::{now_ms, parse_push_target, PushRow, PushStore, SessionId};
use async_trait::async_trait;
use confab_protocol::{PushTarget, UserId};
use sqlx::Row;

#[async_trait]
impl PushStore for PostgresStore {
    async fn set_push(&self, session: SessionId, user: UserId, target: &PushTarget) -> Result<()> {
        let json = serde_json::to_string(target).map_err(|e| crate::error::ApiError::internal("push target", e))?;
        let mut tx = self.pool.begin().await?;
        // The device now belongs to this session only.
        sqlx::query("DELETE FROM push_targets WHERE address = $1 AND session_id <> $2")
            .bind(target.address())
            .bind(session)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO push_targets (session_id, user_id, address, target, updated_at)
             SELECT id, user_id, $1, $2, $3 FROM sessions WHERE id = $4 AND user_id = $5
             ON CONFLICT (session_id) DO UPDATE SET
                address = excluded.address, target = excluded.target, updated_at = excluded.updated_at",
        )
        .bind(target.address())
        .bind(json)
        .bind(now_ms())
        .bind(session)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn clear_push(&self, session: SessionId) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM push_targets WHERE session_id = $1").bind(session).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn push_targets(&self, users: &[UserId]) -> Result<Vec<PushRow>> {
        let rows = sqlx::query("SELECT session_id, user_id, target FROM push_targets WHERE user_id = ANY($1)")
            .bind(users)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PushRow {
                    session: r.get("session_id"),
                    user: r.get("user_id"),
                    target: parse_push_target(r.get("target"))?,
                })
            })
            .collect()
    }

    async fn drop_push(&self, session: SessionId, target: &PushTarget) -> Result<bool> {
        let done = sqlx::query("DELETE FROM push_targets WHERE session_id = $1 AND address = $2")
            .bind(session)
            .bind(target.address())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
