-- Push targets: how to wake each device session while it has no socket.
-- One per session, deleted with it (logout, revocation, expiry); one
-- session per device (`address`: the provider's token or endpoint), so a
-- phone signed into another account is not woken for the old one.
CREATE TABLE push_targets (
    session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    address    TEXT NOT NULL UNIQUE,
    -- The confab_protocol::PushTarget, as JSON.
    target     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX push_targets_by_user ON push_targets(user_id);
