//! Files: the one home of uploads and of the media cache.
//!
//! A picked file is copied into the profile and hashed before its message
//! is queued ([`prepare`]), so the original may move or change. The upload
//! task then sends each file with tus (see `confab_protocol::media`), one
//! chunk per `PATCH`, asking the server where it stands (`HEAD`) before it
//! resumes: after a dropped link, an app restart or a server kill it goes on
//! from the server's committed offset, never from zero. A message leaves
//! the outbox only once all its files are up ([`crate::cache`] holds it
//! back), so its recipients never see a message whose file is not there.
//!
//! Downloads land in the profile's media cache, checked against their
//! SHA-256, resumed with `Range` if cut short, and evicted least recently
//! used first beyond a size cap.

use crate::backoff::Backoff;
use crate::cache::{Cache, NewFile, PendingFile};
use crate::types::{ClientEvent, ConnectionState};
use crate::{Error, Inner, Result};
use confab_protocol::media::{BLOB_HASH_HEADER, TUS_VERSION};
use confab_protocol::HttpError;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Bytes per `PATCH`: each is committed by the server before it answers,
/// so this is also how much a kill can cost in re-sent bytes at most.
pub const CHUNK: usize = 2 * 1024 * 1024;
/// Default size cap of the media cache.
pub const DEFAULT_MEDIA_CAP: u64 = 512 * 1024 * 1024;

/// How the core talks HTTP to its server.
#[derive(Clone)]
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
    pub(crate) server: String,
    pub(crate) token: String,
}

impl Http {
    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.server)
        }
    }

    fn tus(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.bearer_auth(&self.token).header("tus-resumable", TUS_VERSION)
    }
}

fn unreachable(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout
    } else {
        Error::Unreachable(e.to_string())
    }
}

/// The server's error from a failed response.
async fn refusal(resp: reqwest::Response) -> Error {
    let status = resp.status();
    match resp.json::<HttpError>().await {
        Ok(e) => Error::Server { code: e.code, message: e.message, retry_after_ms: e.retry_after_ms },
        // A proxy's page, a cut connection: worth another try.
        Err(_) if status.is_server_error() => Error::Unreachable(format!("HTTP {status}")),
        Err(_) => Error::Protocol(format!("HTTP {status}")),
    }
}

fn header_u64(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
}

fn header_str(resp: &reqwest::Response, name: &str) -> Option<String> {
    Some(resp.headers().get(name)?.to_str().ok()?.to_owned())
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A type for showing a file before the server has sniffed it.
fn guess_mime(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Copies a picked file into `dir` (the profile's outgoing files) and
/// hashes it on the way.
pub(crate) async fn prepare(dir: &Path, source: &Path, name: Option<&str>) -> Result<NewFile> {
    let name = match name {
        Some(n) => n.to_owned(),
        None => source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into()),
    };
    if !confab_protocol::media::validate_file_name(&name) {
        return Err(Error::Invalid(format!("{name:?} is not a file name that can be sent")));
    }
    let (dir, source) = (dir.to_owned(), source.to_owned());
    let (path, size, sha256) = tokio::task::spawn_blocking(move || -> Result<(PathBuf, u64, String)> {
        std::fs::create_dir_all(&dir)?;
        let mut src = std::fs::File::open(&source)
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", source.display())))?;
        if !src.metadata()?.is_file() {
            return Err(Error::Invalid(format!("{} is not a file", source.display())));
        }
        let path = dir.join(uuid::Uuid::now_v7().simple().to_string());
        let mut out = std::fs::File::create(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
        // The copy is what the outbox promises to send: it must survive
        // a crash as well as the queued message does.
        out.sync_all()?;
        Ok((path, size, hex(&hasher.finalize())))
    })
    .await
    .map_err(|e| Error::Protocol(format!("file task: {e}")))??;
    let mime = guess_mime(&name).to_owned();
    Ok(NewFile { path: path.to_string_lossy().into_owned(), name, size, sha256, mime })
}

/// Uploads queued files, oldest message first, while connected.
pub(crate) async fn run(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(300), Duration::from_secs(15));
    let mut state = inner.link().state();
    loop {
        if state.wait_for(|s| matches!(s, ConnectionState::Connected)).await.is_err() {
            return;
        }
        let file = match inner.cache.next_pending_file().await {
            Ok(Some(file)) => file,
            Ok(None) => {
                tokio::select! {
                    _ = inner.uploads_wakeup.notified() => {}
                    r = state.changed() => if r.is_err() { return },
                }
                continue;
            }
            Err(e) => {
                tracing::error!(%e, "cannot read the files to upload");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        match upload(&inner, &file).await {
            Ok(()) => {
                backoff.reset();
                if let Err(e) = inner.cache.file_uploaded(file.client_id, file.idx).await {
                    tracing::error!(%e, "cannot record an upload");
                    continue;
                }
                keep_as_media(&inner.cache, &inner.media_dir, &file).await;
                inner.outbox_wakeup.notify_one();
            }
            Err(e) if e.is_transient() => {
                let delay = match &e {
                    Error::Server { retry_after_ms: Some(ms), .. } => Duration::from_millis(*ms),
                    _ => backoff.next_delay(),
                };
                tracing::debug!(%e, ?delay, "upload interrupted; will resume");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                // Refused for good (too large, over quota, changed bytes):
                // the message fails with the reason and can be retried.
                let (code, message) = match &e {
                    Error::Server { code, message, .. } => (*code, message.clone()),
                    other => (confab_protocol::ErrorCode::InvalidRequest, other.to_string()),
                };
                tracing::info!(%e, client_id = %file.client_id, "upload refused");
                if inner.cache.mark_failed(file.client_id, code, &message).await.is_ok() {
                    if let Ok(Some(message)) = inner.cache.own_message(inner.me, file.client_id).await {
                        inner.emit(ClientEvent::MessageUpdated { message });
                    }
                }
            }
        }
    }
}

/// Where an upload stands on the server.
enum Standing {
    At(u64),
    Done(String),
    /// Unknown there (expired, cancelled): start a new one.
    Gone,
}

async fn standing(http: &Http, url: &str) -> Result<Standing> {
    let resp = http.tus(http.client.head(http.url(url))).send().await.map_err(unreachable)?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(Standing::Gone);
    }
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    if let Some(blob) = header_str(&resp, BLOB_HASH_HEADER) {
        return Ok(Standing::Done(blob));
    }
    header_u64(&resp, "upload-offset")
        .map(Standing::At)
        .ok_or_else(|| Error::Protocol("the server did not say where the upload stands".into()))
}

/// Uploads one file from wherever the server has it; `Ok` once complete.
async fn upload(inner: &Inner, file: &PendingFile) -> Result<()> {
    let http = &inner.http;
    let mut url = file.upload_url.clone();
    for _ in 0..3 {
        let Some(at) = url.clone() else {
            let meta = {
                use base64::Engine;
                format!("sha256 {}", base64::engine::general_purpose::STANDARD.encode(&file.sha256))
            };
            let resp = http
                .tus(http.client.post(http.url("/v1/uploads")))
                .header("upload-length", file.size.to_string())
                .header("upload-metadata", meta)
                .send()
                .await
                .map_err(unreachable)?;
            if resp.status() != reqwest::StatusCode::CREATED {
                return Err(refusal(resp).await);
            }
            let location = header_str(&resp, "location")
                .ok_or_else(|| Error::Protocol("the server did not say where the upload is".into()))?;
            inner.cache.set_upload_url(file.client_id, file.idx, Some(&location)).await?;
            url = Some(location);
            continue;
        };
        let mut offset = match standing(http, &at).await? {
            Standing::Done(blob) => return check_blob(file, &blob),
            Standing::Gone => {
                inner.cache.set_upload_url(file.client_id, file.idx, None).await?;
                url = None;
                continue;
            }
            Standing::At(offset) => offset,
        };
        let mut source = tokio::fs::File::open(&file.path).await?;
        loop {
            let n = CHUNK.min((file.size - offset.min(file.size)) as usize);
            let mut chunk = vec![0u8; n];
            source.seek(std::io::SeekFrom::Start(offset)).await?;
            source.read_exact(&mut chunk).await?;
            let resp = http
                .tus(http.client.patch(http.url(&at)))
                .header("upload-offset", offset.to_string())
                .header("content-type", "application/offset+octet-stream")
                .body(chunk)
                .send()
                .await
                .map_err(unreachable)?;
            if resp.status() == reqwest::StatusCode::CONFLICT {
                // Not where we thought (a request of ours died half way):
                // ask again.
                break;
            }
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                inner.cache.set_upload_url(file.client_id, file.idx, None).await?;
                url = None;
                break;
            }
            if !resp.status().is_success() {
                return Err(refusal(resp).await);
            }
            offset = header_u64(&resp, "upload-offset")
                .ok_or_else(|| Error::Protocol("the server did not say how much it has".into()))?;
            inner.emit(ClientEvent::UploadProgress {
                client_id: file.client_id,
                file: file.idx as u32,
                sent: offset,
                total: file.size,
            });
            if let Some(blob) = header_str(&resp, BLOB_HASH_HEADER) {
                return check_blob(file, &blob);
            }
            if offset >= file.size {
                return Err(Error::Protocol("the upload is complete but has no blob".into()));
            }
        }
    }
    Err(Error::Unreachable("the upload keeps moving; will try again".into()))
}

fn check_blob(file: &PendingFile, blob: &str) -> Result<()> {
    if blob == file.sha256 {
        Ok(())
    } else {
        Err(Error::Server {
            code: confab_protocol::ErrorCode::ChecksumMismatch,
            message: "the server got other bytes than the file's".into(),
            retry_after_ms: None,
        })
    }
}

/// An uploaded file's copy becomes the cached blob: its sender shows it
/// without downloading it again.
async fn keep_as_media(cache: &Cache, media_dir: &Path, file: &PendingFile) {
    let target = media_dir.join(&file.sha256);
    let moved = tokio::fs::create_dir_all(media_dir).await.is_ok()
        && tokio::fs::rename(&file.path, &target).await.is_ok()
        && cache.media_used(&file.sha256, file.size).await.is_ok();
    if !moved {
        let _ = tokio::fs::remove_file(&file.path).await;
    }
}

/// Downloads (or finds in the cache) a blob or its thumbnail; returns its
/// path in the media cache.
pub(crate) async fn fetch(
    cache: &Cache,
    http: &Http,
    media_dir: &Path,
    hash: &str,
    thumbnail: bool,
    cap: u64,
) -> Result<PathBuf> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid("a file hash is 64 hex digits".into()));
    }
    let hash = hash.to_ascii_lowercase();
    let key = if thumbnail { format!("{hash}.thumb") } else { hash.clone() };
    let path = media_dir.join(&key);
    if cache.media_touch(&key).await? && tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(path);
    }
    tokio::fs::create_dir_all(media_dir).await?;
    let part = media_dir.join(format!("{key}.part"));
    let have = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
    let route = if thumbnail { format!("/v1/media/{hash}/thumbnail") } else { format!("/v1/media/{hash}") };
    let mut req = http.client.get(http.url(&route)).bearer_auth(&http.token);
    // A download cut short goes on where it stopped (thumbnails are small).
    if have > 0 && !thumbnail {
        req = req.header("range", format!("bytes={have}-"));
    }
    let mut resp = req.send().await.map_err(unreachable)?;
    let append = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    let mut out =
        tokio::fs::OpenOptions::new().create(true).append(append).write(true).truncate(!append).open(&part).await?;
    while let Some(bytes) = resp.chunk().await.map_err(unreachable)? {
        out.write_all(&bytes).await?;
    }
    out.flush().await?;
    out.sync_all().await?;
    drop(out);
    if !thumbnail {
        let part2 = part.clone();
        let got = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut f = std::fs::File::open(&part2)?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut f, &mut hasher)?;
            Ok(hex(&hasher.finalize()))
        })
        .await
        .map_err(|e| Error::Protocol(format!("hash task: {e}")))??;
        if got != hash {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Error::Protocol("the downloaded file is not the one asked for".into()));
        }
    }
    let bytes = tokio::fs::metadata(&part).await?.len();
    tokio::fs::rename(&part, &path).await?;
    cache.media_used(&key, bytes).await?;
    for old in cache.media_evict(cap).await? {
        if old != key {
            let _ = tokio::fs::remove_file(media_dir.join(old)).await;
        }
    }
    Ok(path)
}
