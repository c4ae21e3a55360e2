-- Receipts are watermarks beside the log (members.delivered_seq/read_seq),
-- no longer events in it. `marks` is their version per conversation: it
-- grows with every change, so `sync` can tell a device its copy is stale.
ALTER TABLE conversations ADD COLUMN marks INTEGER NOT NULL DEFAULT 0;
