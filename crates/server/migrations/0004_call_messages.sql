-- A call's outcome is also a message of its conversation (its entry:
-- "Missed voice call"), so history and unread counts see it. NULL for
-- ordinary messages; the call record as JSON for call entries.
ALTER TABLE messages ADD COLUMN call TEXT;
