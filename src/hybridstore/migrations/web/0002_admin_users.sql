-- The admin web UI: its users (argon2id hashes), the one-time setup link, the key that signs session cookies.
CREATE TABLE admin_users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,          -- argon2id, in the PHC string format
    created_at    REAL NOT NULL,
    last_login_at REAL
);
CREATE TABLE setup_tokens (
    token_hash TEXT PRIMARY KEY,          -- sha256 hex of the link's token
    created_at REAL NOT NULL,
    used_at    REAL
);
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
