//! One error type for the server: a stable [`ErrorCode`] plus a message for
//! people. Internal details (SQL errors, I/O) go to the log, never to clients.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use confab_protocol::{ErrorCode, HttpError};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: Option<u64>,
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), retry_after_ms: None }
    }

    pub fn rate_limited(retry_after_ms: u64) -> Self {
        ApiError { retry_after_ms: Some(retry_after_ms), ..ApiError::from(ErrorCode::RateLimited) }
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(%err, "{context}");
        ErrorCode::Internal.into()
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        ApiError::new(code, code.describe())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        ApiError::internal("database error", err)
    }
}

impl From<sqlx::migrate::MigrateError> for ApiError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        ApiError::internal("migration error", err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.code {
            ErrorCode::InvalidCredentials | ErrorCode::InvalidToken | ErrorCode::Unauthenticated => {
                StatusCode::UNAUTHORIZED
            }
            ErrorCode::UsernameTaken => StatusCode::CONFLICT,
            ErrorCode::RateLimited | ErrorCode::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::NotFound | ErrorCode::UnknownUser => StatusCode::NOT_FOUND,
            ErrorCode::Forbidden | ErrorCode::NotMember => StatusCode::FORBIDDEN,
            ErrorCode::FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, Json(HttpError { code: self.code, message: self.message })).into_response()
    }
}
