use serde::{Deserialize, Serialize};
use specta::Type;

/// Stable, machine-readable error codes. Clients branch on these; the
/// accompanying message is for people and may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Type, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON (or not UTF-8 text).
    #[error("malformed_json")]
    MalformedJson,
    /// The frame's `type` is not one the server knows.
    #[error("unknown_type")]
    UnknownType,
    /// A known request with missing or invalid fields.
    #[error("invalid_request")]
    InvalidRequest,
    #[error("frame_too_large")]
    FrameTooLarge,
    #[error("message_too_long")]
    MessageTooLong,
    /// A request other than `hello` before authenticating.
    #[error("unauthenticated")]
    Unauthenticated,
    /// Unknown, expired or revoked session token.
    #[error("invalid_token")]
    InvalidToken,
    #[error("invalid_credentials")]
    InvalidCredentials,
    #[error("unsupported_protocol")]
    UnsupportedProtocol,
    #[error("username_taken")]
    UsernameTaken,
    #[error("invalid_username")]
    InvalidUsername,
    #[error("weak_password")]
    WeakPassword,
    #[error("unknown_user")]
    UnknownUser,
    /// No such conversation, message or resource.
    #[error("not_found")]
    NotFound,
    /// The caller is not a member of the conversation.
    #[error("not_member")]
    NotMember,
    /// The caller is a member but may not do this (not the sender, not admin).
    #[error("forbidden")]
    Forbidden,
    #[error("rate_limited")]
    RateLimited,
    #[error("too_many_connections")]
    TooManyConnections,
    /// The server cannot replay from the requested position; refetch.
    #[error("replay_unavailable")]
    ReplayUnavailable,
    #[error("internal")]
    Internal,
    /// The callee (or the caller) is already in a call.
    #[error("busy")]
    Busy,
    /// HTTP: no such endpoint.
    #[error("no_such_endpoint")]
    NoSuchEndpoint,
    /// HTTP: the endpoint exists but not with this method.
    #[error("method_not_allowed")]
    MethodNotAllowed,
    /// HTTP: the body is not `application/json`.
    #[error("unsupported_media_type")]
    UnsupportedMediaType,
    /// An upload's `PATCH` starts somewhere other than the committed
    /// offset: ask (`HEAD`) and resume from there.
    #[error("offset_mismatch")]
    OffsetMismatch,
    /// A finished upload's SHA-256 is not the one declared at creation.
    #[error("checksum_mismatch")]
    ChecksumMismatch,
    /// The file is larger than the server accepts.
    #[error("file_too_large")]
    FileTooLarge,
    /// The account's storage quota is used up.
    #[error("quota_exceeded")]
    QuotaExceeded,
    /// This server is shutting down (draining): connect again, the load
    /// balancer sends the new connection to another node.
    #[error("unavailable")]
    Unavailable,
    /// `set_push` names a kind of push target this server is not
    /// configured to push to (no FCM, APNs or WebPush credentials).
    #[error("push_unavailable")]
    PushUnavailable,
}

impl ErrorCode {
    /// Whether retrying the same request later may succeed. The client's
    /// outbox retries these and marks the message failed on the others.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::Internal | ErrorCode::TooManyConnections | ErrorCode::Unavailable
        )
    }

    /// The code for its wire name, if it is one.
    pub fn parse(name: &str) -> Option<ErrorCode> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::MessageTooLong => "message_too_long",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::InvalidUsername => "invalid_username",
            ErrorCode::WeakPassword => "weak_password",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotMember => "not_member",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::ReplayUnavailable => "replay_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Busy => "busy",
            ErrorCode::NoSuchEndpoint => "no_such_endpoint",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::OffsetMismatch => "offset_mismatch",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::FileTooLarge => "file_too_large",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::PushUnavailable => "push_unavailable",
        }
    }

    /// A sentence a person understands, used when the server has nothing
    /// more specific to say.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "the frame is not valid JSON",
            ErrorCode::UnknownType => "unknown request type",
            ErrorCode::InvalidRequest => "the request is missing fields or has invalid values",
            ErrorCode::FrameTooLarge => "the frame is too large",
            ErrorCode::MessageTooLong => "the message is too long",
            ErrorCode::Unauthenticated => "sign in first",
            ErrorCode::InvalidToken => "the session has expired or was signed out; sign in again",
            ErrorCode::InvalidCredentials => "wrong username or password",
            ErrorCode::UnsupportedProtocol => "this client is too old or too new for the server",
            ErrorCode::UsernameTaken => "that username is taken",
            ErrorCode::InvalidUsername => {
                "usernames are 3-32 characters: a-z, 0-9, '_', '.', '-', starting with a letter or digit"
            }
            ErrorCode::WeakPassword => "the password must be at least 8 characters",
            ErrorCode::UnknownUser => "no such user",
            ErrorCode::NotFound => "not found",
            ErrorCode::NotMember => "you are not a member of this conversation",
            ErrorCode::Forbidden => "you are not allowed to do that",
            ErrorCode::RateLimited => "too many requests; slow down",
            ErrorCode::TooManyConnections => "too many connections for this account",
            ErrorCode::ReplayUnavailable => "the server cannot replay from there; refetch",
            ErrorCode::Internal => "internal server error",
            ErrorCode::Busy => "they are in another call",
            ErrorCode::NoSuchEndpoint => "no such endpoint",
            ErrorCode::MethodNotAllowed => "this endpoint does not take that method",
            ErrorCode::UnsupportedMediaType => "send the body as application/json",
            ErrorCode::OffsetMismatch => "the upload is not at that offset; ask where it stands and resume from there",
            ErrorCode::ChecksumMismatch => "the uploaded bytes do not match the declared SHA-256",
            ErrorCode::FileTooLarge => "the file is larger than this server accepts",
            ErrorCode::QuotaExceeded => "your storage quota is used up",
            ErrorCode::Unavailable => "this server is shutting down; connect again",
            ErrorCode::PushUnavailable => "this server cannot push to that kind of device",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde() {
        for code in [
            ErrorCode::MalformedJson,
            ErrorCode::UnknownType,
            ErrorCode::InvalidRequest,
            ErrorCode::FrameTooLarge,
            ErrorCode::MessageTooLong,
            ErrorCode::Unauthenticated,
            ErrorCode::InvalidToken,
            ErrorCode::InvalidCredentials,
            ErrorCode::UnsupportedProtocol,
            ErrorCode::UsernameTaken,
            ErrorCode::InvalidUsername,
            ErrorCode::WeakPassword,
            ErrorCode::UnknownUser,
            ErrorCode::NotFound,
            ErrorCode::NotMember,
            ErrorCode::Forbidden,
            ErrorCode::RateLimited,
            ErrorCode::TooManyConnections,
            ErrorCode::ReplayUnavailable,
            ErrorCode::Internal,
            ErrorCode::Busy,
            ErrorCode::NoSuchEndpoint,
            ErrorCode::MethodNotAllowed,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::OffsetMismatch,
            ErrorCode::ChecksumMismatch,
            ErrorCode::FileTooLarge,
            ErrorCode::QuotaExceeded,
            ErrorCode::Unavailable,
            ErrorCode::PushUnavailable,
        ] {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(code.to_string(), code.as_str());
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
    }
}
