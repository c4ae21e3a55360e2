-- Attachments and full-text search.

-- An upload in progress (tus). `committed` is the truth about how many of
-- its bytes are durable: after a crash the file is cut back to it.
CREATE TABLE uploads (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    length     INTEGER NOT NULL,
    committed  INTEGER NOT NULL DEFAULT 0,
    -- The SHA-256 (hex) the client declared, checked when it completes.
    sha256     TEXT,
    -- Set once complete: the blob it became (kept a while, so a client
    -- that missed the last reply learns the outcome).
    blob       TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX uploads_by_user ON uploads(user_id);

-- A finished blob, filed under its SHA-256 (hex).
CREATE TABLE blobs (
    hash       TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    mime       TEXT NOT NULL,
    width      INTEGER,
    height     INTEGER,
    -- Whether a thumbnail can be made, and the blob holding it once made.
    thumbable  INTEGER NOT NULL DEFAULT 0,
    thumbnail  TEXT,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
-- The sweep asks whether a blob is some other blob's thumbnail.
CREATE INDEX blobs_by_thumbnail ON blobs(thumbnail) WHERE thumbnail IS NOT NULL;

-- Who uploaded a blob (and may attach it): proof of having the bytes, so
-- knowing a hash is not enough to post, or read, someone else's file.
CREATE TABLE blob_owners (
    hash    TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- Last upload or attach: the sweep spares a blob owned this recently.
    at      INTEGER NOT NULL,
    PRIMARY KEY (hash, user_id)
) WITHOUT ROWID;
CREATE INDEX blob_owners_by_user ON blob_owners(user_id);

-- Which messages carry a blob: who may read it, and whether it is still
-- needed.
CREATE TABLE attachments (
    hash            TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    PRIMARY KEY (hash, conversation_id, seq)
) WITHOUT ROWID;
CREATE INDEX attachments_by_message ON attachments(conversation_id, seq);

-- A message's attachments as shown (JSON), NULL when it has none.
ALTER TABLE messages ADD COLUMN attachments TEXT;

-- Full-text search over message texts. `messages` has no rowid, so each
-- message gets one here for the index to point at.
CREATE TABLE message_rowids (
    rowid           INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    UNIQUE (conversation_id, seq)
);
CREATE VIRTUAL TABLE message_search USING fts5(text, tokenize = 'unicode61 remove_diacritics 2');

CREATE TRIGGER messages_search_insert AFTER INSERT ON messages WHEN new.text != '' BEGIN
    INSERT INTO message_rowids (conversation_id, seq) VALUES (new.conversation_id, new.seq);
    INSERT INTO message_search (rowid, text) VALUES (last_insert_rowid(), new.text);
END;

CREATE TRIGGER messages_search_update AFTER UPDATE OF text ON messages WHEN new.text != old.text BEGIN
    DELETE FROM message_search WHERE rowid =
        (SELECT rowid FROM message_rowids WHERE conversation_id = old.conversation_id AND seq = old.seq);
    DELETE FROM message_rowids WHERE conversation_id = old.conversation_id AND seq = old.seq;
    INSERT INTO message_rowids (conversation_id, seq) SELECT new.conversation_id, new.seq WHERE new.text != '';
    INSERT INTO message_search (rowid, text) SELECT last_insert_rowid(), new.text WHERE new.text != '';
END;

INSERT INTO message_rowids (conversation_id, seq)
    SELECT conversation_id, seq FROM messages WHERE text != '' ORDER BY conversation_id, seq;
INSERT INTO message_search (rowid, text)
    SELECT r.rowid, m.text FROM message_rowids r
    JOIN messages m ON m.conversation_id = r.conversation_id AND m.seq = r.seq;
