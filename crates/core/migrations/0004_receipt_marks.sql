-- The version of the members' receipt watermarks this device holds (see
-- `marks` in the protocol's sync heads); 0 fetches them at the next sync.
ALTER TABLE conversations ADD COLUMN marks INTEGER NOT NULL DEFAULT 0;
