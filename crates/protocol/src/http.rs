//! Bodies of the HTTP endpoints (`/v1/register`, `/v1/login`, `/v1/logout`).

use crate::{ErrorCode, UserId};
use serde::{Deserialize, Serialize};
use specta::Type;

#[derive(Clone, Debug, Serialize, Deserialize, Type)]
pub struct AuthRequest {
    pub username: String,
    pub password: String,
    /// A label for this device's session, shown when listing sessions.
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Type)]
pub struct AuthResponse {
    pub user: UserId,
    pub username: String,
    /// Opaque session token for this device; send it in `hello`.
    pub token: String,
}

/// The body of every HTTP error response.
#[derive(Clone, Debug, Serialize, Deserialize, Type)]
pub struct HttpError {
    pub code: ErrorCode,
    pub message: String,
    /// With `rate_limited`: when a retry may succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}
