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
            ErrorCode::NotFound | ErrorCode::UnknownUser | ErrorCode::NoSuchEndpoint => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Forbidden | ErrorCode::NotMember => StatusCode::FORBIDDEN,
            ErrorCode::FrameTooLarge | ErrorCode::FileTooLarge | ErrorCode::QuotaExceeded => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ErrorCode::OffsetMismatch => StatusCode::CONFLICT,
            // tus: a missing or unknown Tus-Resumable.
            ErrorCode::UnsupportedProtocol => StatusCode::PRECONDITION_FAILED,
            // tus's checksum extension answers 460 for this.
            ErrorCode::ChecksumMismatch => StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut response =
            (status, Json(HttpError { code: self.code, message: self.message, retry_after_ms: self.retry_after_ms }))
                .into_response();
        if let Some(ms) = self.retry_after_ms {
            // The standard header too, in whole seconds (rounded up).
            if let Ok(v) = axum::http::HeaderValue::from_str(&ms.div_ceil(1000).to_string()) {
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// `Json<T>` whose rejection is an [`ApiError`], so a bad body gets the same
/// `{code, message}` shape as every other error.
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection;
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::new(ErrorCode::MalformedJson, e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::from(ErrorCode::UnsupportedMediaType)),
            Err(JsonRejection::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(ErrorCode::FrameTooLarge, "the request body is too large"))
            }
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::new(ErrorCode::InvalidRequest, e.body_text())),
            Err(e) => Err(ApiError::new(ErrorCode::InvalidRequest, e.body_text())),
        }
    }
}

/// The last line of the contract that every HTTP error has a JSON body
/// with a stable code: any error response without one (from a layer or an
/// extractor outside our handlers) gets one that matches its status.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NoSuchEndpoint,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::FrameTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    };
    let (mut parts, _) = response.into_parts();
    let body = HttpError { code, message: code.describe().to_owned(), retry_after_ms: None };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    parts.headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(json))
}
