-- API keys shared by every node (hybridstore.web.shared_keys): created and revoked with `hybridstore apikey …`
-- against the primary, accepted by any node. Only a key's SHA-256 is stored; the key is shown once.
-- Times are epoch seconds (double precision), as in each node's web.db, which keeps a copy of the keys it has seen
-- so that it still accepts them while the primary cannot be reached.

CREATE TABLE {schema}.api_keys (
    id           text PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    scopes       text NOT NULL,                  -- space-separated: read, write, admin
    token_hash   text NOT NULL UNIQUE,           -- sha256 hex of the whole token
    hint         text NOT NULL,                  -- the token's first characters, to recognise it
    created_at   double precision NOT NULL,
    created_by   text NOT NULL DEFAULT '',       -- the node (or the CLI) that created it
    last_used_at double precision,
    revoked_at   double precision
);
