//! The signed-in session kept in the profile, and the server epoch the
//! cache was synced against.

use super::{id, Cache};
use crate::Result;
use confab_protocol::UserId;
use sqlx::{Row, Sqlite, Transaction};

/// The signed-in session kept in the profile.
#[derive(Clone, Debug)]
pub struct StoredSession {
    pub server: String,
    pub token: String,
    pub user: UserId,
    pub username: String,
}

impl Cache {
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
            sqlx::query("DELETE FROM meta WHERE key = 'epoch'").execute(&mut *tx).await?;
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

    /// The server epoch this cache's positions belong to.
    pub async fn epoch(&self) -> Result<Option<String>> {
        self.meta("epoch").await
    }
}

pub(super) async fn upsert_user(tx: &mut Transaction<'_, Sqlite>, user: UserId, username: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (id, username) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET username = excluded.username",
    )
    .bind(user.to_string())
    .bind(username)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
