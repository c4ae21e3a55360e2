-- When each device session was last used, so idle ones expire and a user
-- can see which devices are signed in.
ALTER TABLE sessions ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET last_seen = created_at;
