-- Server-owned message identity. A stored message is (conversation, seq),
-- assigned by the server; a client id is only its sender's idempotency key,
-- which any account can choose. So messages get a local row id, others'
-- messages are keyed by (conversation, seq) alone, and a client id is kept
-- (own_client_id) only for this account's own messages, to match outbox
-- entries with their echoes.
CREATE TABLE messages_v2 (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    seq             INTEGER,
    sender          TEXT NOT NULL,
    own_client_id   TEXT UNIQUE,
    text            TEXT NOT NULL,
    ts              INTEGER NOT NULL,
    edited_at       INTEGER,
    deleted         INTEGER NOT NULL DEFAULT 0,
    pinned          INTEGER NOT NULL DEFAULT 0,
    -- queued | sent | failed (own) or received (others').
    status          TEXT NOT NULL,
    error_code      TEXT,
    error_message   TEXT
);

-- Keep own messages (the outbox refers to them by client id); others'
-- messages from a cache that trusted client ids may be spoofed, so they go,
-- and every conversation syncs again from the start.
INSERT INTO messages_v2 (conversation_id, seq, sender, own_client_id, text, ts, edited_at, deleted, pinned,
                         status, error_code, error_message)
SELECT conversation_id, seq, sender, client_id, text, ts, edited_at, deleted, pinned, status, error_code, error_message
FROM messages WHERE sender = (SELECT value FROM meta WHERE key = 'user_id')
ORDER BY seq IS NULL, seq, ts;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
CREATE UNIQUE INDEX messages_by_seq ON messages(conversation_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX messages_unsent ON messages(conversation_id, ts) WHERE seq IS NULL;
DELETE FROM reactions;
UPDATE conversations SET applied_pos = 0, last_seq = 0;
-- The server's epoch is unknown to this cache: the next connection starts
-- a clean sync (see sync.rs).
DELETE FROM meta WHERE key = 'epoch';
