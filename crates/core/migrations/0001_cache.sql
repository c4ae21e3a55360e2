-- Confab client cache, version 1: what the client knows, for instant start and
-- offline reading, plus the outbox. UUIDs as text, times as Unix ms.

-- Session and settings: server_url, token, user_id, username.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id        TEXT PRIMARY KEY,
    username  TEXT NOT NULL,
    online    INTEGER NOT NULL DEFAULT 0,
    last_seen INTEGER
);

CREATE TABLE conversations (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    name        TEXT,
    -- Every event up to this position has been applied here.
    applied_pos INTEGER NOT NULL DEFAULT 0,
    last_seq    INTEGER NOT NULL DEFAULT 0,
    -- 1 once we were removed: history stays readable, sync stops.
    left        INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    admin           INTEGER NOT NULL DEFAULT 0,
    delivered_seq   INTEGER NOT NULL DEFAULT 0,
    read_seq        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);

-- Local and remote messages alike, keyed by client id. seq is NULL until the
-- server accepts the message.
CREATE TABLE messages (
    client_id       TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    seq             INTEGER,
    sender          TEXT NOT NULL,
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
CREATE UNIQUE INDEX messages_by_seq ON messages(conversation_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX messages_unsent ON messages(conversation_id, ts) WHERE seq IS NULL;

CREATE TABLE reactions (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    user_id         TEXT NOT NULL,
    emoji           TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq, user_id, emoji)
) WITHOUT ROWID;

-- The send queue, in order. A row is written in the same transaction as its
-- local message and deleted in the same transaction that marks it sent.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id       TEXT NOT NULL UNIQUE,
    conversation_id TEXT NOT NULL,
    text            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0
);
