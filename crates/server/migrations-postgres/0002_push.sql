-- Push targets: see migrations/0007_push.sql (SQLite) for the why.
CREATE TABLE push_targets (
    session_id UUID PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    address    TEXT NOT NULL UNIQUE,
    target     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX push_targets_by_user ON push_targets(user_id);
