//! Attachments and search.
//!
//! Files travel over HTTP, not the socket: a client uploads with tus 1.0
//! (core protocol plus the `creation` and `termination` extensions) to
//! `/v1/uploads`, then sends a message naming the finished blob by its
//! SHA-256 ([`AttachmentRef`]). The server fills in what it learned from the
//! bytes ([`Attachment`]): size, sniffed type, image dimensions, whether a
//! thumbnail exists. Downloads are `GET /v1/media/<hash>` and
//! `GET /v1/media/<hash>/thumbnail`, with `Range`, for members of a
//! conversation the blob was posted in (and its uploader). See
//! `docs/protocol.md`.

use serde::{Deserialize, Serialize};
use specta::Type;

use crate::{ConversationId, Millis, UserId};

/// The most attachments one message carries.
pub const MAX_ATTACHMENTS: usize = 10;
/// The longest attachment file name, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 255;
/// The longest search query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// The most hits one search reply carries.
pub const MAX_SEARCH_HITS: u32 = 100;

/// The tus version the server speaks (`Tus-Resumable`).
pub const TUS_VERSION: &str = "1.0.0";
/// Extra response header of the `PATCH` that completes an upload: the
/// blob's SHA-256 (hex), which a message then names.
pub const BLOB_HASH_HEADER: &str = "confab-blob";
/// Start of a highlighted term in a search snippet (a control character,
/// so no text can be mistaken for markup).
pub const HIGHLIGHT_START: char = '\u{2}';
/// End of a highlighted term in a search snippet.
pub const HIGHLIGHT_END: char = '\u{3}';

/// An attachment as a sender names it: a blob it uploaded, and the name to
/// show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct AttachmentRef {
    /// SHA-256 of the bytes, 64 lower-case hex digits.
    pub hash: String,
    pub name: String,
}

/// An attachment as it is stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Attachment {
    pub hash: String,
    pub name: String,
    pub size: i64,
    /// Sniffed from the bytes (`application/octet-stream` when unknown),
    /// never taken from the name or the uploader.
    pub mime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A thumbnail can be fetched (it is made in the background, so the
    /// first fetch may wait for it).
    #[serde(default)]
    pub thumbnail: bool,
}

impl Attachment {
    pub fn is_image(&self) -> bool {
        self.width.is_some() && self.mime.starts_with("image/")
    }
}

/// One search hit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct SearchHit {
    pub conversation: ConversationId,
    pub seq: i64,
    pub sender: UserId,
    pub ts: Millis,
    /// A few words around the match, with matched terms between
    /// [`HIGHLIGHT_START`] and [`HIGHLIGHT_END`].
    pub snippet: String,
}

/// Checks a file name: non-empty, at most [`MAX_FILE_NAME_BYTES`], no path
/// separators or control characters.
pub fn validate_file_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.len() <= MAX_FILE_NAME_BYTES
        && !name.chars().any(|c| c.is_control() || c == '/' || c == '\\')
        && name != "."
        && name != ".."
}

/// Turns what a person typed into an FTS5 query that cannot be a syntax
/// error: each word quoted (quotes inside doubled), the last one a prefix,
/// all of them required. `None` when nothing searchable is left.
pub fn fts_query(input: &str) -> Option<String> {
    let words = search_words(input);
    if words.is_empty() {
        return None;
    }
    let mut q = words.iter().map(|w| format!("\"{}\"", w.replace('"', "\"\""))).collect::<Vec<_>>().join(" ");
    q.push('*');
    Some(q)
}

/// The words of a search, at most 16 (the last one is matched as a
/// prefix): split at white space and punctuation other than `'`, `-` and
/// `_`, each with at least one letter or digit.
pub fn search_words(input: &str) -> Vec<String> {
    input
        .split(|c: char| {
            c.is_whitespace() || c.is_control() || (c.is_ascii_punctuation() && c != '\'' && c != '-' && c != '_')
        })
        .filter(|w| w.chars().any(|c| c.is_alphanumeric()))
        .take(16)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_quoted_words() {
        assert_eq!(fts_query("hello world").as_deref(), Some("\"hello\" \"world\"*"));
        assert_eq!(fts_query("  \"or\" NEAR( * ").as_deref(), Some("\"or\" \"NEAR\"*"));
        assert_eq!(fts_query("*** ()"), None);
        assert_eq!(fts_query("c'est l'été").as_deref(), Some("\"c'est\" \"l'été\"*"));
    }

    #[test]
    fn file_names() {
        assert!(validate_file_name("photo.jpg"));
        assert!(!validate_file_name("../etc/passwd"));
        assert!(!validate_file_name(""));
        assert!(!validate_file_name("a\nb"));
        assert!(!validate_file_name(&"x".repeat(256)));
    }
}
