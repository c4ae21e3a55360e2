//! `confab-media://localhost/<sha256>[/thumbnail]`: attachments for the
//! webview, from the core's media cache (downloaded into it on first use).
//! The webview never sees the session token or the server's URLs.

use crate::shell::Shell;
use tauri::http::{header, Request, Response, StatusCode};
use tauri::Manager;

pub const SCHEME: &str = "confab-media";

/// The type to serve, from the bytes (the server sniffed them the same way).
fn content_type(head: &[u8]) -> &'static str {
    match head {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xff, 0xd8, 0xff, ..] => "image/jpeg",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        _ => "application/octet-stream",
    }
}

fn reply(status: StatusCode, kind: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, kind)
        .header("x-content-type-options", "nosniff")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

pub async fn serve(app: &tauri::AppHandle, request: Request<Vec<u8>>) -> Response<Vec<u8>> {
    let path = request.uri().path().trim_matches('/').to_owned();
    let (hash, thumbnail) = match path.split_once('/') {
        Some((hash, "thumbnail")) => (hash.to_owned(), true),
        None => (path, false),
        Some(_) => return reply(StatusCode::NOT_FOUND, "text/plain", b"no such media".to_vec()),
    };
    let client = match app.state::<Shell>().client().await {
        Ok(c) => c,
        Err(_) => return reply(StatusCode::UNAUTHORIZED, "text/plain", b"signed out".to_vec()),
    };
    let file = match client.media(&hash, thumbnail).await {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(%e, %hash, "media not available");
            return reply(StatusCode::NOT_FOUND, "text/plain", e.to_string().into_bytes());
        }
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let kind = content_type(&bytes[..bytes.len().min(16)]);
            reply(StatusCode::OK, kind, bytes)
        }
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e.to_string().into_bytes()),
    }
}
