-- When each device session was last used, so idle ones expire and a user
-- can see which devices are signed in. Use was not tracked before: count
-- every existing session as used now, or an upgrade would sign out devices
-- that were active yesterday.
ALTER TABLE sessions ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET last_seen = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
