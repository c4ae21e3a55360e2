-- A call's entry in its conversation is a message with the call record
-- (JSON) here; NULL for ordinary messages.
ALTER TABLE messages ADD COLUMN call TEXT;
