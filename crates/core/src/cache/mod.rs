//! The client's SQLite cache (WAL): conversations, members, messages with
//! their status, sync positions, the outbox and the session. One module per
//! concern:
//!
//! - [`session`]: the signed-in session and the server's epoch;
//! - [`outbox`]: own messages from composing to accepted (or refused);
//! - [`apply`]: server events and snapshots, applied exactly once, in order;
//! - [`messages`]: a server message's row, under the identity rule;
//! - [`files`]: files on their way out, and the media cache's bookkeeping;
//! - [`search`]: offline full-text search over everything cached;
//! - [`views`]: what the UI and CLI read.
//!
//! Identity: a message from the server *is* (conversation, seq). A client
//! id is only its sender's idempotency key — any account can choose any
//! value — so it is kept (`own_client_id`) and matched only for this
//! account's own messages. Each row also has a local `id`, stable from
//! composing to deletion, that views use as a key.

mod apply;
mod files;
mod messages;
mod outbox;
mod search;
mod session;
mod views;

pub use apply::{Applied, Effect, MarksVersion};
pub use files::PendingFile;
pub use outbox::{NewFile, OutboxEntry};
pub use session::StoredSession;

use crate::{Error, Result};
use confab_protocol::{ConvKind, Millis};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// A message's local row id.
pub type LocalId = i64;

#[derive(Clone)]
pub struct Cache {
    pool: SqlitePool,
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
}
