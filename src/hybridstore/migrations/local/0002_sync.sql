-- Sync engine: rejections of an op by the primary, and dead letters.

ALTER TABLE outbox ADD COLUMN rejections INTEGER NOT NULL DEFAULT 0;

CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids are never reused
    op_id      TEXT NOT NULL,
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT,
    hlc        TEXT NOT NULL,
    origin     TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT,
    dead_at    REAL NOT NULL
);
