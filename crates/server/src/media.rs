//! Attachment bytes. An upload grows by appends, each durable (fsynced)
//! before it returns, so after any interruption, the client's or the
//! server's, the client resumes from what the server has committed rather
//! than from zero. A finished upload is hashed (SHA-256) and filed under its
//! hash: content-addressed, kept once however often it is sent.
//!
//! Storage sits behind [`BlobStore`], so an S3-compatible store can take the
//! disk's place; [`DiskBlobStore`] keeps everything beside the database.
//! Who may read a blob is not decided here (see the media routes).

use crate::error::{ApiError, Result};
use async_trait::async_trait;
use confab_protocol::ErrorCode;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// A blob's name: the SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    pub fn of(bytes: &[u8]) -> Self {
        BlobHash(Sha256::digest(bytes).into())
    }

    /// Lower-case hex, as in URLs.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn parse(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(BlobHash(out))
    }
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// How many bytes of an unfinished upload are durable (0 before its
    /// first append).
    async fn upload_len(&self, upload: Uuid) -> Result<u64>;
    /// Appends `data` to an upload at `offset`, which must be its current
    /// length (else `offset_mismatch`: the client resumes from the wrong
    /// place). Returns the new length, durable when this returns.
    async fn append(&self, upload: Uuid, offset: u64, data: Vec<u8>) -> Result<u64>;
    /// Cuts an upload back to `len` bytes: after a crash, to what its
    /// record says was committed (a torn append may have left more).
    async fn truncate(&self, upload: Uuid, len: u64) -> Result<()>;
    /// Files a finished upload under the hash of its bytes; returns the
    /// hash and the size. Uploading the same bytes again keeps one copy.
    /// With `expect`, bytes of another hash are discarded instead
    /// (`checksum_mismatch`).
    async fn finish(&self, upload: Uuid, expect: Option<BlobHash>) -> Result<(BlobHash, u64)>;
    /// Forgets an unfinished upload (cancelled, expired, or a mismatch).
    async fn discard(&self, upload: Uuid) -> Result<()>;
    /// A blob's size, or `None` if there is no such blob.
    async fn size(&self, blob: BlobHash) -> Result<Option<u64>>;
    /// At most `len` bytes of a blob from `start` (a download's range).
    async fn read(&self, blob: BlobHash, start: u64, len: usize) -> Result<Vec<u8>>;
    /// Removes a blob (no message refers to it any more).
    async fn delete(&self, blob: BlobHash) -> Result<()>;
}

/// Blobs on the local disk: `uploads/<id>` while unfinished,
/// `blobs/<first two hex digits>/<hash>` once finished.
pub struct DiskBlobStore {
    root: PathBuf,
}

impl DiskBlobStore {
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["uploads", "blobs"] {
            std::fs::create_dir_all(root.join(dir))
                .map_err(|e| ApiError::internal("cannot create the media directory", e))?;
        }
        Ok(DiskBlobStore { root: root.to_owned() })
    }

    fn upload_path(&self, upload: Uuid) -> PathBuf {
        self.root.join("uploads").join(upload.simple().to_string())
    }

    fn blob_path(&self, blob: BlobHash) -> PathBuf {
        let hex = blob.hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }
}

/// File work runs on the blocking pool, never on a runtime worker.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("media task", e))?
        .map_err(|e| ApiError::internal("media storage", e))
}

/// A file's size, `None` if there is no such file.
fn size_of(path: &Path) -> std::io::Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn len_or_zero(path: &Path) -> std::io::Result<u64> {
    Ok(size_of(path)?.unwrap_or(0))
}

/// Removes a file; one already gone is fine.
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a rename or a new file in `dir` survive a power cut.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl BlobStore for DiskBlobStore {
    async fn upload_len(&self, upload: Uuid) -> Result<u64> {
        let path = self.upload_path(upload);
        blocking(move || len_or_zero(&path)).await
    }

    async fn append(&self, upload: Uuid, offset: u64, data: Vec<u8>) -> Result<u64> {
        let path = self.upload_path(upload);
        let outcome = blocking(move || {
            let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
            let len = f.metadata()?.len();
            if len != offset {
                return Ok(Err(len));
            }
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(&data)?;
            f.sync_data()?;
            if offset == 0 {
                // The file is new: its directory entry must survive too.
                sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            }
            Ok(Ok(offset + data.len() as u64))
        })
        .await?;
        outcome.map_err(|len| {
            ApiError::new(
                ErrorCode::OffsetMismatch,
                format!("the upload has {len} bytes, not {offset}: resume from {len}"),
            )
        })
    }

    async fn truncate(&self, upload: Uuid, len: u64) -> Result<()> {
        let path = self.upload_path(upload);
        blocking(move || {
            if len_or_zero(&path)? > len {
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(len)?;
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }

    async fn finish(&self, upload: Uuid, expect: Option<BlobHash>) -> Result<(BlobHash, u64)> {
        let path = self.upload_path(upload);
        let blobs = self.root.join("blobs");
        let outcome = blocking(move || {
            // Hashed from the disk, not from what the requests carried: the
            // upload may have spanned restarts. (An empty file has had no
            // append, so it may not exist yet.)
            let mut f = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            let hash = BlobHash(hasher.finalize().into());
            if expect.is_some_and(|e| e != hash) {
                drop(f);
                remove_if_present(&path)?;
                return Ok(Err(hash));
            }
            let hex = hash.hex();
            let dir = blobs.join(&hex[..2]);
            std::fs::create_dir_all(&dir)?;
            let target = dir.join(&hex);
            if target.exists() {
                std::fs::remove_file(&path)?;
            } else {
                std::fs::rename(&path, &target)?;
                sync_dir(&dir)?;
            }
            Ok(Ok((hash, size)))
        })
        .await?;
        outcome.map_err(|got| {
            ApiError::new(
                ErrorCode::ChecksumMismatch,
                format!("the uploaded bytes have SHA-256 {}; upload the file again", got.hex()),
            )
        })
    }

    async fn discard(&self, upload: Uuid) -> Result<()> {
        let path = self.upload_path(upload);
        blocking(move || remove_if_present(&path)).await
    }

    async fn size(&self, blob: BlobHash) -> Result<Option<u64>> {
        let path = self.blob_path(blob);
        blocking(move || size_of(&path)).await
    }

    async fn read(&self, blob: BlobHash, start: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.blob_path(blob);
        blocking(move || {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(start))?;
            let mut out = Vec::with_capacity(len.min(1 << 20));
            f.take(len as u64).read_to_end(&mut out)?;
            Ok(out)
        })
        .await
    }

    async fn delete(&self, blob: BlobHash) -> Result<()> {
        let path = self.blob_path(blob);
        blocking(move || remove_if_present(&path)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upload_grows_only_at_its_end_is_filed_under_its_hash_and_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskBlobStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let up = Uuid::now_v7();
        assert_eq!(store.upload_len(up).await.unwrap(), 0);
        assert_eq!(store.append(up, 0, data[..100_000].to_vec()).await.unwrap(), 100_000);
        // Resuming from the wrong place is refused and says where to resume.
        let e = store.append(up, 50_000, data[50_000..].to_vec()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::OffsetMismatch);
        assert!(e.message.contains("resume from 100000"), "{}", e.message);
        // A torn append beyond the committed offset is cut back.
        store.append(up, 100_000, vec![0xee; 10]).await.unwrap();
        store.truncate(up, 100_000).await.unwrap();
        assert_eq!(store.upload_len(up).await.unwrap(), 100_000);
        assert_eq!(store.append(up, 100_000, data[100_000..].to_vec()).await.unwrap(), 300_000);
        let (hash, size) = store.finish(up, Some(BlobHash::of(&data))).await.unwrap();
        assert_eq!((hash, size), (BlobHash::of(&data), 300_000));
        assert_eq!(store.upload_len(up).await.unwrap(), 0, "the upload became the blob");
        assert_eq!(store.size(hash).await.unwrap(), Some(300_000));
        assert_eq!(store.read(hash, 299_990, 100).await.unwrap(), data[299_990..]);
        assert_eq!(store.read(hash, 0, 0).await.unwrap(), Vec::<u8>::new());
        // The same bytes again: one copy.
        let again = Uuid::now_v7();
        store.append(again, 0, data.clone()).await.unwrap();
        assert_eq!(store.finish(again, None).await.unwrap().0, hash);
        let files = std::fs::read_dir(dir.path().join("blobs").join(&hash.hex()[..2])).unwrap().count();
        assert_eq!(files, 1);
        store.delete(hash).await.unwrap();
        assert_eq!(store.size(hash).await.unwrap(), None);
        store.delete(hash).await.unwrap();
        // Bytes that are not what the client declared are not filed.
        let wrong = Uuid::now_v7();
        store.append(wrong, 0, b"not the declared bytes".to_vec()).await.unwrap();
        let e = store.finish(wrong, Some(hash)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::ChecksumMismatch);
        assert_eq!(store.upload_len(wrong).await.unwrap(), 0);
        assert_eq!(store.size(BlobHash::of(b"not the declared bytes")).await.unwrap(), None);
        // An empty file is a blob too.
        let empty = Uuid::now_v7();
        assert_eq!(store.finish(empty, None).await.unwrap(), (BlobHash::of(b""), 0));
    }

    #[test]
    fn hashes_parse_only_as_64_hex_digits() {
        let h = BlobHash::of(b"confab");
        assert_eq!(BlobHash::parse(&h.hex()), Some(h));
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(63), &"0".repeat(65), "../../etc/passwd"] {
            assert_eq!(BlobHash::parse(bad), None, "{bad}");
        }
    }
}
