//! Accounts and sessions: `POST /v1/register`, `/v1/login`, `/v1/logout`.
//!
//! Passwords are hashed with argon2id on a fixed pool ([`crate::hasher`]):
//! it is CPU and memory work by design, so it is bounded. Sessions are opaque 256-bit random tokens, one per device; the
//! database keeps only their SHA-256, and logout deletes the row and closes
//! that session's live sockets.

use crate::error::{ApiError, ApiJson, Result};
use crate::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use base64::Engine;
use confab_protocol::{validate_username, AuthRequest, AuthResponse, ErrorCode};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;

pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn bearer(headers: &HeaderMap) -> Result<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ErrorCode::Unauthenticated.into())
}

fn device(req: &AuthRequest) -> Option<&str> {
    req.device.as_deref().map(str::trim).filter(|d| !d.is_empty() && d.len() <= 100 && !d.chars().any(char::is_control))
}

pub async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<AuthRequest>,
) -> Result<(StatusCode, Json<AuthResponse>)> {
    validate_username(&req.username)?;
    if req.password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ErrorCode::WeakPassword.into());
    }
    if req.password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "the password is too long"));
    }
    // Limited before anything else, so probing which names exist costs
    // the same as creating accounts.
    state.auth_guard.check_register(state.auth_guard.client_address(peer, &headers))?;
    let store = &state.service.store;
    // Cheap early answer; the unique index decides races.
    if store.user_by_name(&req.username).await?.is_some() {
        return Err(ErrorCode::UsernameTaken.into());
    }
    let hash = state.hasher.hash(req.password.clone()).await?;
    let user = store.create_user(&req.username, &hash).await?;
    let token = new_token();
    store.create_session(user, &token_hash(&token), device(&req)).await?;
    tracing::info!(%user, username = %req.username, "registered");
    Ok((StatusCode::CREATED, Json(AuthResponse { user, username: req.username, token })))
}

pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<AuthRequest>,
) -> Result<Json<AuthResponse>> {
    // A name that cannot exist is refused before it keys any limiter or
    // costs a hash.
    if validate_username(&req.username).is_err() || req.password.len() > MAX_PASSWORD_BYTES {
        return Err(ErrorCode::InvalidCredentials.into());
    }
    state.auth_guard.check_login(state.auth_guard.client_address(peer, &headers), &req.username)?;
    let store = &state.service.store;
    let found = store.credentials(&req.username).await?;
    let (user, ok) = match found {
        Some((user, hash)) => (Some(user), state.hasher.verify(req.password.clone(), hash).await?),
        None => {
            // Spend the same time as a real check, so timing does not tell
            // which usernames exist (and be refused the same way when busy).
            state.hasher.verify(req.password.clone(), state.dummy_hash.to_string()).await?;
            (None, false)
        }
    };
    let (Some(user), true) = (user, ok) else {
        return Err(ErrorCode::InvalidCredentials.into());
    };
    let token = new_token();
    let (_, evicted) = store.create_session(user, &token_hash(&token), device(&req)).await?;
    state.service.kick_sessions(&evicted);
    Ok(Json(AuthResponse { user, username: req.username, token }))
}

/// The session of an HTTP request (`Authorization: Bearer <token>`).
pub async fn session(state: &AppState, headers: &HeaderMap) -> Result<crate::store::Session> {
    let token = bearer(headers)?;
    let session = state.service.store.session(&token_hash(token)).await?;
    let ttl = state.limits.session_ttl.as_millis() as i64;
    match session {
        Some(s) if s.last_seen >= crate::store::now_ms() - ttl => Ok(s),
        _ => Err(ErrorCode::InvalidToken.into()),
    }
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<StatusCode> {
    let token = bearer(&headers)?;
    match state.service.store.delete_session(&token_hash(token)).await? {
        Some(session) => {
            state.service.kick_sessions(&[session]);
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ErrorCode::InvalidToken.into()),
    }
}

/// A valid argon2 hash of a random password, for constant-time login misses.
pub async fn make_dummy_hash(hasher: &crate::hasher::Hasher) -> Result<String> {
    hasher.hash(new_token()).await
}
