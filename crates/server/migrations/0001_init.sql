-- Confab server schema, version 1.
-- UUIDs are stored as their hyphenated text form; times as Unix milliseconds.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seen     INTEGER
);

-- One row per signed-in device. Only a SHA-256 of the token is kept, so a
-- leaked database does not leak usable sessions.
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device     TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX sessions_by_user ON sessions(user_id);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name       TEXT,
    -- "<smaller user id>:<larger user id>" for direct conversations, so a
    -- pair of users has exactly one.
    direct_key TEXT UNIQUE,
    -- Newest event position and newest message sequence number.
    last_pos   INTEGER NOT NULL DEFAULT 0,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    admin           INTEGER NOT NULL DEFAULT 0,
    delivered_seq   INTEGER NOT NULL DEFAULT 0,
    read_seq        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members(user_id);

-- The per-conversation log: every persisted change, gap-free by pos. Clients
-- resume from it.
CREATE TABLE events (
    conversation_id TEXT NOT NULL,
    pos             INTEGER NOT NULL,
    ts              INTEGER NOT NULL,
    actor           TEXT NOT NULL,
    body            TEXT NOT NULL,
    PRIMARY KEY (conversation_id, pos)
) WITHOUT ROWID;

-- Current state of each message (the log has its history).
CREATE TABLE messages (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    pos             INTEGER NOT NULL,
    sender          TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    text            TEXT NOT NULL,
    ts              INTEGER NOT NULL,
    edited_at       INTEGER,
    deleted         INTEGER NOT NULL DEFAULT 0,
    pinned          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, seq),
    -- Idempotent sends: a retry with the same client id finds this row.
    UNIQUE (sender, client_id)
) WITHOUT ROWID;

CREATE TABLE reactions (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    user_id         TEXT NOT NULL,
    emoji           TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq, user_id, emoji)
) WITHOUT ROWID;
