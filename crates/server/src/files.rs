//! Files over HTTP: resumable uploads (tus 1.0: core, `creation`,
//! `termination`) at `/v1/uploads`, downloads with `Range` at
//! `/v1/media/<sha256>` and `/v1/media/<sha256>/thumbnail`.
//!
//! An upload's committed offset lives in the database and moves only after
//! the bytes before it are fsynced, every [`COMMIT_EVERY`] bytes of a
//! request and when the request ends, however it ends. A client that lost
//! its connection (or whose server was killed) asks `HEAD` and resumes from
//! there, never from zero. Only the uploader, and current members of a
//! conversation where a message carries the blob, may download it; anyone
//! else gets the same `not_found` as for a hash that does not exist.

use crate::error::{ApiError, Result};
use crate::locks::ConversationLocks;
use crate::media::{BlobHash, BlobStore};
use crate::store::{now_ms, BlobInfo, Store, Upload};
use crate::thumbs::{self, Thumbnailer};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use confab_protocol::{media::BLOB_HASH_HEADER, media::TUS_VERSION, ErrorCode, UserId};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Bytes received between commits of an upload's offset.
pub const COMMIT_EVERY: usize = 1024 * 1024;
/// A `PATCH` whose body stalls this long ends (what arrived is kept).
const BODY_STALL: Duration = Duration::from_secs(30);
/// Bytes per read of a download.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

/// Files: where their bytes live, and the work around them.
pub struct Media {
    pub blobs: Arc<dyn BlobStore>,
    /// One `PATCH` at a time per upload.
    uploads: ConversationLocks,
    pub thumbs: Thumbnailer,
    pub max_upload_bytes: u64,
    pub quota_bytes: u64,
    /// An unfinished upload untouched this long is discarded; a finished
    /// blob no message carries is removed once unclaimed this long.
    pub upload_ttl: Duration,
    pub grace: Duration,
}

impl Media {
    pub fn new(blobs: Arc<dyn BlobStore>, limits: &crate::Limits) -> Self {
        Media {
            blobs,
            uploads: ConversationLocks::default(),
            thumbs: Thumbnailer::default(),
            max_upload_bytes: limits.max_upload_bytes,
            quota_bytes: limits.quota_bytes,
            upload_ttl: limits.upload_ttl,
            grace: limits.media_grace,
        }
    }

    /// Discards stale uploads and removes blobs nothing refers to; returns
    /// how many blobs went.
    pub async fn sweep(&self, store: &Arc<dyn Store>) -> Result<usize> {
        let now = now_ms();
        for upload in store.expire_uploads(now - self.upload_ttl.as_millis() as i64).await? {
            self.blobs.discard(upload).await?;
        }
        let gone = store.sweep_blobs(now - self.grace.as_millis() as i64).await?;
        for hash in &gone {
            if let Some(h) = BlobHash::parse(hash) {
                self.blobs.delete(h).await?;
            }
        }
        Ok(gone.len())
    }
}

fn tus_headers(headers: &mut HeaderMap) {
    headers.insert(HeaderName::from_static("tus-resumable"), HeaderValue::from_static(TUS_VERSION));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn num(headers: &HeaderMap, name: &str) -> Result<Option<u64>> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, format!("{name} must be a non-negative integer"))),
    }
}

fn require_tus(headers: &HeaderMap) -> Result<()> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        _ => Err(ApiError::new(ErrorCode::UnsupportedProtocol, format!("send Tus-Resumable: {TUS_VERSION}"))),
    }
}

/// The declared SHA-256 from `Upload-Metadata` (`sha256 <base64 of hex>`).
fn declared_sha256(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(meta) = headers.get("upload-metadata") else { return Ok(None) };
    let bad = || ApiError::new(ErrorCode::InvalidRequest, "Upload-Metadata is not tus metadata");
    let meta = meta.to_str().map_err(|_| bad())?;
    for pair in meta.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut parts = pair.splitn(2, ' ');
        let key = parts.next().unwrap_or_default();
        let value = parts.next().unwrap_or_default();
        if key != "sha256" {
            continue;
        }
        let hex = base64::engine::general_purpose::STANDARD.decode(value).map_err(|_| bad())?;
        let hex = String::from_utf8(hex).map_err(|_| bad())?;
        let Some(hash) = BlobHash::parse(&hex) else {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "sha256 metadata is 64 hex digits"));
        };
        return Ok(Some(hash.hex()));
    }
    Ok(None)
}

/// The caller of an HTTP request, from `Authorization: Bearer`, limited
/// like a socket request.
async fn caller(state: &AppState, headers: &HeaderMap) -> Result<UserId> {
    let session = crate::auth::session(state, headers).await?;
    if let Err(wait) = state.request_limiter.check_key(&session.user) {
        return Err(crate::guard::not_until(wait));
    }
    Ok(session.user)
}

/// `OPTIONS /v1/uploads`: what this server speaks.
pub async fn options(State(state): State<AppState>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    tus_headers(h);
    h.insert(HeaderName::from_static("tus-version"), HeaderValue::from_static(TUS_VERSION));
    h.insert(HeaderName::from_static("tus-extension"), HeaderValue::from_static("creation,termination"));
    h.insert(HeaderName::from_static("tus-max-size"), HeaderValue::from(state.media.max_upload_bytes));
    r
}

/// `POST /v1/uploads` with `Upload-Length` (and optionally `Upload-Metadata`
/// with `sha256`): a new upload, at `Location`.
pub async fn create(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let user = caller(&state, &headers).await?;
    require_tus(&headers)?;
    let Some(length) = num(&headers, "upload-length")? else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "Upload-Length is required (deferred length is not supported)",
        ));
    };
    if length > state.media.max_upload_bytes {
        let why = format!("files are at most {} bytes here", state.media.max_upload_bytes);
        return Err(ApiError::new(ErrorCode::FileTooLarge, why));
    }
    let upload =
        Upload { id: Uuid::now_v7(), user, length, committed: 0, sha256: declared_sha256(&headers)?, blob: None };
    state.service.store.create_upload(&upload, state.media.quota_bytes).await?;
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    tus_headers(h);
    let location = format!("/v1/uploads/{}", upload.id.simple());
    h.insert(header::LOCATION, HeaderValue::from_str(&location).map_err(|e| ApiError::internal("location", e))?);
    Ok(r)
}

/// The caller's upload, or `not_found` (someone else's looks the same as
/// none).
async fn own_upload(state: &AppState, user: UserId, id: &str) -> Result<Upload> {
    let id = Uuid::try_parse(id).map_err(|_| ApiError::from(ErrorCode::NotFound))?;
    match state.service.store.upload(id).await? {
        Some(u) if u.user == user => Ok(u),
        _ => Err(ErrorCode::NotFound.into()),
    }
}

fn offset_response(status: StatusCode, upload: &Upload) -> Result<Response> {
    let mut r = status.into_response();
    let h = r.headers_mut();
    tus_headers(h);
    h.insert(HeaderName::from_static("upload-offset"), HeaderValue::from(upload.committed));
    h.insert(HeaderName::from_static("upload-length"), HeaderValue::from(upload.length));
    if let Some(blob) = &upload.blob {
        let v = HeaderValue::from_str(blob).map_err(|e| ApiError::internal("blob header", e))?;
        h.insert(HeaderName::from_static(BLOB_HASH_HEADER), v);
    }
    Ok(r)
}

/// `HEAD /v1/uploads/<id>`: the committed offset, and the blob once done.
pub async fn head(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response> {
    let user = caller(&state, &headers).await?;
    let upload = own_upload(&state, user, &id).await?;
    offset_response(StatusCode::OK, &upload)
}

/// `DELETE /v1/uploads/<id>`: cancels an unfinished upload.
pub async fn terminate(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response> {
    let user = caller(&state, &headers).await?;
    let upload = own_upload(&state, user, &id).await?;
    let _one = state.media.uploads.lock(upload.id).await;
    state.service.store.delete_upload(upload.id).await?;
    if upload.blob.is_none() {
        state.media.blobs.discard(upload.id).await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    tus_headers(r.headers_mut());
    Ok(r)
}

/// `PATCH /v1/uploads/<id>` with `Upload-Offset` (the committed offset) and
/// an `application/offset+octet-stream` body: appends, committing as it
/// goes; the request that completes the upload files the blob and answers
/// with its hash (header `confab-blob`).
pub async fn patch(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let user = caller(&state, &headers).await?;
    require_tus(&headers)?;
    let is_stream = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/offset+octet-stream"));
    if !is_stream {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the bytes as application/offset+octet-stream",
        ));
    }
    let Some(offset) = num(&headers, "upload-offset")? else {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "Upload-Offset is required"));
    };
    let upload = own_upload(&state, user, &id).await?;
    // A previous request for this upload may still be draining (its client
    // gone); it ends within the stall limit.
    let Ok(_one) = tokio::time::timeout(BODY_STALL + Duration::from_secs(5), state.media.uploads.lock(upload.id)).await
    else {
        return Err(ApiError::new(ErrorCode::RateLimited, "this upload is busy; retry"));
    };
    // Read again under the lock: the committed offset is the truth.
    let mut upload = own_upload(&state, user, &id).await?;
    if upload.blob.is_some() {
        return offset_response(StatusCode::NO_CONTENT, &upload);
    }
    if offset != upload.committed {
        let why = format!("the upload is at {}; resume from there", upload.committed);
        return Err(ApiError::new(ErrorCode::OffsetMismatch, why));
    }
    let media = &state.media;
    // Bytes past the committed offset are a torn write from before a crash.
    media.blobs.truncate(upload.id, upload.committed).await?;
    let mut stream = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::with_capacity(COMMIT_EVERY.min(upload.length as usize));
    let mut too_long = false;
    loop {
        let next = tokio::time::timeout(BODY_STALL, stream.next()).await;
        let (chunk, ended) = match next {
            Ok(Some(Ok(chunk))) => (Some(chunk), false),
            // The client went away or stalled: keep what came.
            Ok(Some(Err(_))) | Err(_) => (None, true),
            Ok(None) => (None, true),
        };
        if let Some(chunk) = chunk {
            let room = (upload.length - upload.committed) as usize - buffer.len();
            if chunk.len() > room {
                too_long = true;
            }
            buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if buffer.len() >= COMMIT_EVERY || (ended || too_long) && !buffer.is_empty() {
            let data = std::mem::replace(&mut buffer, Vec::with_capacity(COMMIT_EVERY));
            upload.committed = media.blobs.append(upload.id, upload.committed, data).await?;
            state.service.store.commit_upload(upload.id, upload.committed).await?;
        }
        if ended || too_long {
            break;
        }
    }
    if too_long {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "the body goes past Upload-Length"));
    }
    if upload.committed == upload.length {
        let blob = finish(&state, &upload).await?;
        upload.blob = Some(blob);
    }
    offset_response(StatusCode::NO_CONTENT, &upload)
}

/// Files a complete upload: hashed (and checked against the declared
/// hash), sniffed, measured; its thumbnail is made in the background.
async fn finish(state: &AppState, upload: &Upload) -> Result<String> {
    let media = &state.media;
    let store = &state.service.store;
    let expect = upload.sha256.as_deref().and_then(BlobHash::parse);
    let have = media.blobs.upload_len(upload.id).await?;
    let filed = if have == upload.length {
        media.blobs.finish(upload.id, expect).await
    } else {
        match expect {
            // Filed just before a crash, and not yet recorded: the bytes
            // already sit under their hash.
            Some(h) if media.blobs.size(h).await? == Some(upload.length) => Ok((h, upload.length)),
            // Bytes the record counted are gone: resume from what is there.
            _ => {
                store.commit_upload(upload.id, have.min(upload.committed)).await?;
                let why = format!("the upload is at {}; resume from there", have.min(upload.committed));
                return Err(ApiError::new(ErrorCode::OffsetMismatch, why));
            }
        }
    };
    let (hash, size) = match filed {
        Ok(done) => done,
        Err(e) => {
            if e.code == ErrorCode::ChecksumMismatch {
                store.delete_upload(upload.id).await?;
            }
            return Err(e);
        }
    };
    let head = media.blobs.read(hash, 0, thumbs::HEAD_BYTES).await?;
    let mime = thumbs::sniff(&head);
    let dims = thumbs::dimensions(&mime, &head);
    let info = BlobInfo {
        hash: hash.hex(),
        size,
        thumbable: thumbs::thumbable(&mime, size, dims),
        mime,
        width: dims.map(|d| d.0),
        height: dims.map(|d| d.1),
        thumbnail: None,
    };
    store.file_blob(upload.id, upload.user, &info).await?;
    if info.thumbable {
        let state = state.clone();
        let hash = info.hash.clone();
        tokio::spawn(async move {
            let media = &state.media;
            if let Err(e) = media.thumbs.get(&state.service.store, &media.blobs, &hash).await {
                tracing::warn!(%e, blob = %hash, "cannot make a thumbnail");
            }
        });
    }
    Ok(info.hash)
}

/// `GET /v1/media/<sha256>`: the blob, for those who may see it.
pub async fn download(State(state): State<AppState>, Path(hash): Path<String>, headers: HeaderMap) -> Result<Response> {
    let (_, info) = readable(&state, &hash, &headers).await?;
    serve(&state, &info.hash, info.size, &info.mime, &headers).await
}

/// `GET /v1/media/<sha256>/thumbnail`: its thumbnail (made now if it is not
/// yet), for the same people.
pub async fn thumbnail(
    State(state): State<AppState>,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let (_, info) = readable(&state, &hash, &headers).await?;
    let media = &state.media;
    let Some(thumb) = media.thumbs.get(&state.service.store, &media.blobs, &info.hash).await? else {
        return Err(ApiError::new(ErrorCode::NotFound, "this file has no thumbnail"));
    };
    let Some(blob) = BlobHash::parse(&thumb) else {
        return Err(ApiError::internal("thumbnail", "a stored thumbnail hash does not parse"));
    };
    let Some(size) = media.blobs.size(blob).await? else {
        return Err(ApiError::internal("thumbnail", "a thumbnail's bytes are missing"));
    };
    let head = media.blobs.read(blob, 0, 16).await?;
    serve(&state, &thumb, size, &thumbs::sniff(&head), &headers).await
}

/// The blob, if the caller may read it; `not_found` otherwise, the same
/// whether it exists or not.
async fn readable(state: &AppState, hash: &str, headers: &HeaderMap) -> Result<(UserId, BlobInfo)> {
    let user = caller(state, headers).await?;
    let hash = BlobHash::parse(hash).ok_or_else(|| ApiError::from(ErrorCode::NotFound))?.hex();
    let store = &state.service.store;
    if !store.may_read_blob(user, &hash).await? {
        return Err(ErrorCode::NotFound.into());
    }
    let info = store.blob(&hash).await?.ok_or_else(|| ApiError::from(ErrorCode::NotFound))?;
    Ok((user, info))
}

/// A single byte range from a `Range` header: `None` for the whole blob
/// (no header, or one we do not serve partially, such as several ranges),
/// `Err` when it cannot be satisfied.
fn range(headers: &HeaderMap, size: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = spec.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // The last `b` bytes.
        (true, false) => b.parse::<u64>().ok().map(|n| (size.saturating_sub(n), size.saturating_sub(1), n > 0)),
        (false, true) => a.parse::<u64>().ok().map(|s| (s, size.saturating_sub(1), true)),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => Some((s, e.min(size.saturating_sub(1)), true)),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => Ok(None),
        Some((start, end, nonempty)) if nonempty && start < size && start <= end => Ok(Some((start, end))),
        Some(_) => Err(()),
    }
}

/// Streams a blob (or one range of it).
async fn serve(state: &AppState, hash: &str, size: u64, mime: &str, headers: &HeaderMap) -> Result<Response> {
    let blob = BlobHash::parse(hash).ok_or_else(|| ApiError::internal("serve", "bad stored hash"))?;
    let (status, start, len) = match range(headers, size) {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Err(()) => {
            let mut r = ApiError::new(ErrorCode::InvalidRequest, "the range is outside the file").into_response();
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let v = HeaderValue::from_str(&format!("bytes */{size}")).map_err(|e| ApiError::internal("range", e))?;
            r.headers_mut().insert(header::CONTENT_RANGE, v);
            return Ok(r);
        }
    };
    let blobs = state.media.blobs.clone();
    let end = start + len;
    let chunks = futures_util::stream::unfold(start, move |at| {
        let blobs = blobs.clone();
        async move {
            if at >= end {
                return None;
            }
            let n = DOWNLOAD_CHUNK.min((end - at) as usize);
            match blobs.read(blob, at, n).await {
                Ok(bytes) if !bytes.is_empty() => {
                    let next = at + bytes.len() as u64;
                    Some((Ok::<_, std::io::Error>(bytes), next))
                }
                Ok(_) => Some((Err(std::io::Error::other("blob shorter than recorded")), end)),
                Err(e) => Some((Err(std::io::Error::other(e.message)), end)),
            }
        }
    });
    let mut r = Response::new(Body::from_stream(chunks));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let mime = HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, mime);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content-addressed: it never changes, but it is nobody else's to keep.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{hash}\"")).map_err(|e| ApiError::internal("etag", e))?);
    h.insert(HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    if status == StatusCode::PARTIAL_CONTENT {
        let v = format!("bytes {start}-{}/{size}", end - 1);
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&v).map_err(|e| ApiError::internal("range", e))?);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn ranges() {
        assert_eq!(range(&HeaderMap::new(), 100), Ok(None));
        assert_eq!(range(&with_range("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(range(&with_range("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(range(&with_range("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(range(&with_range("bytes=-1000"), 100), Ok(Some((0, 99))));
        assert_eq!(range(&with_range("bytes=50-1000"), 100), Ok(Some((50, 99))));
        assert_eq!(range(&with_range("bytes=100-"), 100), Err(()));
        assert_eq!(range(&with_range("bytes=-0"), 100), Err(()));
        assert_eq!(range(&with_range("bytes=0-0"), 0), Err(()));
        // Not served partially: the whole file.
        assert_eq!(range(&with_range("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(range(&with_range("bytes=9-3"), 100), Ok(None));
        assert_eq!(range(&with_range("items=0-3"), 100), Ok(None));
        assert_eq!(range(&with_range("bytes=x-3"), 100), Ok(None));
    }
}
