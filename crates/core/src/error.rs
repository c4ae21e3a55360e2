use confab_protocol::ErrorCode;

/// Everything the client core can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the request with a stable code.
    #[error("{message}")]
    Server { code: ErrorCode, message: String, retry_after_ms: Option<u64> },
    /// Not connected right now (or the link dropped mid-request).
    #[error("not connected to the server")]
    Disconnected,
    #[error("the server did not answer in time")]
    Timeout,
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    #[error("not signed in: run `login` or `register` first")]
    NotSignedIn,
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("local cache: {0}")]
    Cache(#[from] sqlx::Error),
    #[error("local cache migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the same request may succeed later (the outbox retries these).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Server { code, .. } => code.is_transient(),
            Error::Disconnected | Error::Timeout | Error::Unreachable(_) => true,
            _ => false,
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn server(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Server { code, message: message.into(), retry_after_ms: None }
    }
}
