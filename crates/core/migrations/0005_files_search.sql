-- Attachments, the media cache and offline search.

-- A message's attachments as shown (JSON), NULL when it has none.
ALTER TABLE messages ADD COLUMN attachments TEXT;

-- Files of own messages still to upload: a copy in the profile (the
-- original may move or change) and the upload's URL once created. A row
-- goes when its upload completes; a message is sent once none of its
-- files is left here. (Its attachments, hashes included, are known from
-- the start: they are in messages.attachments.)
CREATE TABLE outgoing_files (
    client_id  TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    path       TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    upload_url TEXT,
    PRIMARY KEY (client_id, idx)
) WITHOUT ROWID;

-- Downloaded files and thumbnails, for the size cap (least recently used
-- go first).
CREATE TABLE media_files (
    key       TEXT PRIMARY KEY,
    bytes     INTEGER NOT NULL,
    last_used INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX media_by_use ON media_files(last_used);

-- Full-text index over cached message texts (the messages table holds the
-- text; the index points at its rows).
CREATE VIRTUAL TABLE message_search USING fts5(
    text, content = 'messages', content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_search_insert AFTER INSERT ON messages BEGIN
    INSERT INTO message_search (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER messages_search_delete AFTER DELETE ON messages BEGIN
    INSERT INTO message_search (message_search, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER messages_search_update AFTER UPDATE OF text ON messages WHEN old.text != new.text BEGIN
    INSERT INTO message_search (message_search, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO message_search (rowid, text) VALUES (new.id, new.text);
END;
INSERT INTO message_search (message_search) VALUES ('rebuild');
