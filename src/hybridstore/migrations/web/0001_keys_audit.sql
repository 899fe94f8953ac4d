-- web.db: the HTTP service's own SQLite file (data_dir/web.db): API keys and this node's audit log.

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,           -- space-separated
    token_hash   TEXT NOT NULL UNIQUE,    -- sha256 hex of the whole token
    hint         TEXT NOT NULL,           -- the token's first characters, to recognise it
    created_at   REAL NOT NULL,
    last_used_at REAL,
    revoked_at   REAL
);

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    client   TEXT,
    details  TEXT NOT NULL DEFAULT '{}'   -- JSON
);
