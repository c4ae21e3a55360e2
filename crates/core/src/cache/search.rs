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
        // The newest matches are picked first without snippets (a common
        // word matches tens of thousands of rows); snippets are made for
        // the page only.
        let rows = sqlx::query(
            "WITH page AS (
                 SELECT m.id FROM message_search s JOIN messages m ON m.id = s.rowid
                 WHERE message_search MATCH ?1 AND m.deleted = 0 AND m.ts < ?2
                   AND (?3 IS NULL OR m.conversation_id = ?3)
                 ORDER BY m.ts DESC, m.id DESC LIMIT ?4)
             SELECT m.id, m.conversation_id, m.seq, m.sender, COALESCE(u.username, '') AS sender_name, m.ts,
                    snippet(message_search, 0, char(2), char(3), '…', 16) AS snippet
             FROM message_search s
             JOIN messages m ON m.id = s.rowid
             LEFT JOIN users u ON u.id = m.sender
             WHERE message_search MATCH ?1 AND s.rowid IN (SELECT id FROM page)
             ORDER BY m.ts DESC, m.id DESC",
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

    /// The same search without the index: a `LIKE` scan of every message.
    /// Only for the benchmark's comparison.
    #[doc(hidden)]
    pub async fn search_by_scan(&self, query: &str, conversation: Option<ConversationId>, limit: u32) -> Result<usize> {
        let mut sql = String::from("SELECT COUNT(*) AS n FROM (SELECT id FROM messages WHERE deleted = 0 AND (?1 IS NULL OR conversation_id = ?1)");
        let words: Vec<String> = query.split_whitespace().map(|w| format!("%{}%", w.replace(['%', '_'], ""))).collect();
        for i in 0..words.len() {
            sql.push_str(&format!(" AND text LIKE ?{}", i + 3));
        }
        sql.push_str(" ORDER BY ts DESC LIMIT ?2)");
        let mut q = sqlx::query(&sql).bind(conversation.map(|c| c.to_string())).bind(i64::from(limit));
        for w in &words {
            q = q.bind(w);
        }
        Ok(q.fetch_one(&self.pool).await?.get::<i64, _>("n") as usize)
    }
}
