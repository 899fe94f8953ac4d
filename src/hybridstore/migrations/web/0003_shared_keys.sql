-- With a primary configured, API keys live there (primary migration 0007) and api_keys here also holds a copy of
-- each shared key this node has seen (shared = 1), refreshed at every check the primary answers, so the node
-- still accepts them while the primary cannot be reached. shared = 0: a key of this node alone (created without
-- a primary).

ALTER TABLE api_keys ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN checked_at REAL;  -- when the primary last confirmed the copy (shared keys)
