-- Confab server schema on Postgres: the same tables as the SQLite schema
-- after all its migrations (see migrations/), in Postgres's types.
-- Times are Unix milliseconds.

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen     BIGINT
);

-- One row per signed-in device; only a SHA-256 of the token is kept.
CREATE TABLE sessions (
    id         UUID PRIMARY KEY,
    token_hash BYTEA NOT NULL UNIQUE,
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device     TEXT,
    created_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions(user_id);
CREATE INDEX sessions_by_last_seen ON sessions(last_seen);

CREATE TABLE conversations (
    id         UUID PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name       TEXT,
    -- "<smaller user id>:<larger user id>" for direct conversations.
    direct_key TEXT UNIQUE,
    -- Newest event position and message sequence number. Appends take
    -- this row's lock to hand out the next ones, so positions stay
    -- gap-free however many nodes write (a sequence would leave gaps on
    -- rollback).
    last_pos   BIGINT NOT NULL DEFAULT 0,
    last_seq   BIGINT NOT NULL DEFAULT 0,
    -- Version of the members' receipt watermarks.
    marks      BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE members (
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id         UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    admin           BOOLEAN NOT NULL DEFAULT false,
    delivered_seq   BIGINT NOT NULL DEFAULT 0,
    read_seq        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members(user_id);

-- The per-conversation log, gap-free by pos.
CREATE TABLE events (
    conversation_id UUID NOT NULL,
    pos             BIGINT NOT NULL,
    ts              BIGINT NOT NULL,
    actor           UUID NOT NULL,
    body            TEXT NOT NULL,
    PRIMARY KEY (conversation_id, pos)
);
-- A node whose bus lost messages reads back what was committed since.
CREATE INDEX events_by_ts ON events(ts, conversation_id, pos);

-- Current state of each message.
CREATE TABLE messages (
    conversation_id UUID NOT NULL,
    seq             BIGINT NOT NULL,
    pos             BIGINT NOT NULL,
    sender          UUID NOT NULL,
    client_id       UUID NOT NULL,
    text            TEXT NOT NULL,
    ts              BIGINT NOT NULL,
    edited_at       BIGINT,
    deleted         BOOLEAN NOT NULL DEFAULT false,
    pinned          BOOLEAN NOT NULL DEFAULT false,
    -- A call entry's record (JSON); NULL for ordinary messages.
    call            TEXT,
    -- Attachments as shown (JSON); NULL when none.
    attachments     TEXT,
    PRIMARY KEY (conversation_id, seq),
    -- Idempotent sends, across every node.
    UNIQUE (sender, client_id)
);
-- Full-text search, tokenized as the SQLite store's FTS5 does: split at
-- every punctuation mark (so `bob@example.com` is three words, as in a
-- query), lower case, accents removed. The same expression is in the
-- search query, so the index serves it.
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE TEXT SEARCH CONFIGURATION confab (COPY = simple);
ALTER TEXT SEARCH CONFIGURATION confab ALTER MAPPING
    FOR word, hword, hword_part, numword, numhword, hword_numpart, asciiword, asciihword, hword_asciipart
    WITH unaccent, simple;
CREATE INDEX messages_search ON messages
    USING GIN (to_tsvector('confab', regexp_replace(text, '[[:punct:]]', ' ', 'g')));

CREATE TABLE reactions (
    conversation_id UUID NOT NULL,
    seq             BIGINT NOT NULL,
    user_id         UUID NOT NULL,
    emoji           TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq, user_id, emoji)
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE uploads (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    length     BIGINT NOT NULL,
    committed  BIGINT NOT NULL DEFAULT 0,
    sha256     TEXT,
    blob       TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX uploads_by_user ON uploads(user_id);
CREATE INDEX uploads_by_update ON uploads(updated_at);

CREATE TABLE blobs (
    hash       TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    mime       TEXT NOT NULL,
    width      BIGINT,
    height     BIGINT,
    thumbable  BOOLEAN NOT NULL DEFAULT false,
    thumbnail  TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX blobs_by_thumbnail ON blobs(thumbnail) WHERE thumbnail IS NOT NULL;

CREATE TABLE blob_owners (
    hash    TEXT NOT NULL,
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    at      BIGINT NOT NULL,
    PRIMARY KEY (hash, user_id)
);
CREATE INDEX blob_owners_by_user ON blob_owners(user_id);

CREATE TABLE attachments (
    hash            TEXT NOT NULL,
    conversation_id UUID NOT NULL,
    seq             BIGINT NOT NULL,
    PRIMARY KEY (hash, conversation_id, seq)
);
CREATE INDEX attachments_by_message ON attachments(conversation_id, seq);
