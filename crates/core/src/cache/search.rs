//! Offline search: the cache's FTS5 index over every message it holds,
//! read or not, kept by triggers on `messages` (migration 0005).

use super::{id, Cache};
use crate::types::SearchResult;
use crate::Result;
use confab_protocol::{media, ConversationId, Millis};
use sqlx::Row;

impl Cache {
    /// Cached messages matching `query` (words; the last may be a prefix),
    /// newest first, at most `limit`, with `ts < before` if given.
    pub async fn search(
        &self,
        query: &str,
        conversation: Option<ConversationId>,
        before: Option<Millis>,
        limit: u32,
    ) -> Result<Vec<SearchResult>> {
        let Some(fts) = media::fts_query(query) else { return Ok(Vec::new()) };
        let rows = sqlx::query(
            "SELECT m.id, m.conversation_id, m.seq, m.sender, COALESCE(u.username, '') AS sender_name, m.ts,
                    snippet(message_search, 0, char(2), char(3), '…', 16) AS snippet
             FROM message_search s
             JOIN messages m ON m.id = s.rowid
             LEFT JOIN users u ON u.id = m.sender
             WHERE message_search MATCH ?1 AND m.deleted = 0 AND m.ts < ?2
               AND (?3 IS NULL OR m.conversation_id = ?3)
             ORDER BY m.ts DESC, m.id DESC
             LIMIT ?4",
        )
        .bind(fts)
        .bind(before.unwrap_or(Millis::MAX))
        .bind(conversation.map(|c| c.to_string()))
        .bind(i64::from(limit.clamp(1, media::MAX_SEARCH_HITS)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SearchResult {
                    conversation: id(r.get("conversation_id"))?,
                    seq: r.get("seq"),
                    local_id: Some(r.get("id")),
                    sender: id(r.get("sender"))?,
                    sender_name: r.get("sender_name"),
                    ts: r.get("ts"),
                    snippet: r.get("snippet"),
                    on_device: true,
                })
            })
            .collect()
    }
}
