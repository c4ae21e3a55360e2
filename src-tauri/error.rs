//! Errors as the UI sees them: a stable `kind` to branch on and a sentence
//! to show, never a stack trace.

use serde::Serialize;
use specta::Type;

#[derive(Debug, Clone, Serialize, Type, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    /// A protocol error code (`not_member`, `invalid_credentials`, …) or one
    /// of `offline`, `not_signed_in`, `invalid_input`, `internal`.
    pub kind: String,
    pub message: String,
}

impl AppError {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        AppError { kind: kind.to_owned(), message: message.into() }
    }
}

impl From<confab_core::Error> for AppError {
    fn from(e: confab_core::Error) -> Self {
        use confab_core::Error as E;
        match &e {
            E::Server { code, message, .. } => AppError::new(code.as_str(), message.clone()),
            E::Disconnected | E::Timeout | E::Unreachable(_) => {
                AppError::new("offline", format!("Can't reach the server ({e})"))
            }
            E::NotSignedIn => AppError::new("not_signed_in", "Sign in first"),
            E::Invalid(m) => AppError::new("invalid_input", m.clone()),
            _ => {
                tracing::error!(%e, "internal error");
                AppError::new("internal", "Something went wrong on this device; details are in the log")
            }
        }
    }
}

pub type Result<T, E = AppError> = std::result::Result<T, E>;
