-- The node's local copy: records, the outbox of ops the primary has not accepted yet, and node metadata.

CREATE TABLE records (
    collection  TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT,               -- canonical JSON; NULL = tombstone
    version     INTEGER NOT NULL,   -- last primary version seen (0 = never on the primary)
    hlc         TEXT NOT NULL,
    origin      TEXT NOT NULL,
    updated_at  REAL NOT NULL,
    synced_at   REAL,               -- NULL while local changes are pending
    pending_seq INTEGER,            -- outbox seq of the newest pending op for this key
    base_value  TEXT,               -- while pending: the last value agreed with the primary (merge base)
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;

CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY,
    op_id      TEXT NOT NULL,
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT,
    hlc        TEXT NOT NULL,
    origin     TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);

CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
