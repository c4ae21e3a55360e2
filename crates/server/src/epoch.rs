//! The store epoch: an id that changes whenever the server's log may have
//! been rewound, so clients know to sync from scratch instead of trusting
//! positions the server no longer has (see `docs/protocol.md`).
//!
//! The epoch lives in the database. A new database gets a new one, and so
//! does a restore that this module can detect: beside the database a small
//! sidecar file records the epoch and how many events the log held
//! (`Store::log_total`, which only grows). It is written at start, every few
//! seconds while running and at shutdown. A database that comes back with
//! the same epoch but fewer events than the sidecar saw was restored from an
//! older copy, and gets a new epoch; so does one whose epoch is not the
//! sidecar's (a copy from before a rotation, another server's). A restore the sidecar cannot see (both
//! files restored together) needs `confab-server --new-epoch`.

use crate::error::{ApiError, Result};
use crate::store::Store;
use std::path::{Path, PathBuf};

pub fn sidecar_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".epoch");
    db.with_file_name(name)
}

fn read_sidecar(path: &Path) -> Option<(String, i64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let epoch = parts.next()?.to_owned();
    let total = parts.next()?.parse().ok()?;
    Some((epoch, total))
}

/// The sidecar file. Writes are serialised and never record a smaller total
/// than one already written, whoever calls (the periodic task, shutdown).
pub struct Sidecar {
    path: PathBuf,
    written: tokio::sync::Mutex<i64>,
}

impl Sidecar {
    pub fn new(db: &Path) -> Sidecar {
        Sidecar { path: sidecar_path(db), written: tokio::sync::Mutex::new(-1) }
    }

    /// Records `epoch` and `total`, atomically and durably.
    pub async fn record(&self, epoch: &str, total: i64) -> std::io::Result<()> {
        let mut written = self.written.lock().await;
        if total <= *written {
            return Ok(());
        }
        write(self.path.clone(), epoch.to_owned(), total).await?;
        *written = total;
        Ok(())
    }
}

async fn write(path: PathBuf, epoch: String, total: i64) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("epoch.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{epoch} {total}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The epoch to serve with, and the log's size now. Rotates the epoch for a
/// new database, a detected rewind, or when `force_new` (an operator who
/// restored a backup) asks for it.
///
/// `db` is the SQLite file whose sidecar is checked and written; `None`
/// (a shared Postgres database) checks only the stored epoch.
pub async fn establish(store: &dyn Store, db: Option<&Path>, force_new: bool) -> Result<(String, i64)> {
    let total = store.log_total().await?;
    let stored = store.meta("epoch").await?;
    let sidecar = db.map(sidecar_path);
    // A sidecar that saw more events than the database holds now, or saw
    // another epoch (a database from before a rotation, or
    // another server's), means clients may hold positions this log lacks.
    let rewound = match (&stored, sidecar.as_deref().and_then(read_sidecar)) {
        (Some(epoch), Some((seen_epoch, seen_total))) => *epoch != seen_epoch || total < seen_total,
        _ => false,
    };
    let epoch = match stored {
        Some(epoch) if !force_new && !rewound => epoch,
        previous => {
            let epoch = uuid::Uuid::now_v7().to_string();
            if previous.is_some() {
                tracing::warn!(%epoch, rewound, "new store epoch: clients will sync from scratch");
            }
            store.set_meta("epoch", &epoch).await?;
            epoch
        }
    };
    if let Some(sidecar) = sidecar {
        write(sidecar, epoch.clone(), total)
            .await
            .map_err(|e| ApiError::internal("cannot write the epoch sidecar", e))?;
    }
    Ok((epoch, total))
}
