-- Server facts that are not chat data: the store epoch (see docs/protocol.md).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
