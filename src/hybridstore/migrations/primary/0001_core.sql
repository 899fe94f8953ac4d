-- Core tables of hybridstore on the primary.

CREATE TABLE {schema}.records (
    collection   text COLLATE "C" NOT NULL,
    key          text COLLATE "C" NOT NULL,
    value        jsonb,                       -- NULL = tombstone
    version      bigint NOT NULL,             -- +1 for every accepted write
    base_version bigint NOT NULL DEFAULT 0,   -- version the last accepted write was based on
    hlc          text COLLATE "C" NOT NULL,   -- hybrid logical clock of the last accepted write
    origin       text NOT NULL,               -- node that made it
    updated_at   timestamptz NOT NULL DEFAULT now(),
    stamp        xid8 NOT NULL DEFAULT pg_current_xact_id(),  -- change-feed cursor
    PRIMARY KEY (collection, key)
);
CREATE INDEX records_stamp_idx ON {schema}.records (stamp);

-- Every op id ever applied: replaying an op is a no-op.
CREATE TABLE {schema}.applied_ops (
    op_id      uuid PRIMARY KEY,
    collection text NOT NULL,
    key        text NOT NULL,
    origin     text NOT NULL,
    outcome    text NOT NULL DEFAULT 'applied',
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {schema}.conflicts (
    id          bigserial PRIMARY KEY,
    collection  text NOT NULL,
    key         text NOT NULL,
    strategy    text NOT NULL,
    base        jsonb,
    local       jsonb,
    remote      jsonb,
    local_hlc   text,
    remote_hlc  text,
    status      text NOT NULL DEFAULT 'open',
    resolution  jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolved_by text
);

CREATE TABLE {schema}.audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text,
    details jsonb
);

-- As in the original platform's migration, plus metadata columns.
CREATE TABLE {schema}.system_backups (
    id          text PRIMARY KEY,
    data        text NOT NULL DEFAULT '',
    kind        text,
    label       text,
    description text,
    manifest    jsonb,
    size_bytes  bigint,
    verified    boolean NOT NULL DEFAULT false,
    pinned      boolean NOT NULL DEFAULT false,
    blob        bytea,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {schema}.system_config (
    key        text PRIMARY KEY,
    settings   jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Apply a batch of ops in one statement (one round trip, one transaction).
-- Ops for the same key are applied as a group in array order: the group is accepted when the primary's
-- version equals the group's base version (no conflict) or, on a conflict, when the group's last write is
-- newer by HLC (last writer wins). Ops already in applied_ops are reported as duplicates and change nothing.
-- Returns one row per op, in input order, with the key's new version for applied ops.
CREATE FUNCTION {schema}.hs_apply(
    p_op_id uuid[], p_collection text[], p_key text[], p_value text[],
    p_hlc text[], p_origin text[], p_base bigint[]
) RETURNS TABLE (op_id uuid, outcome text, version bigint, updated_at double precision)
LANGUAGE sql AS $fn$
    WITH input AS (
        SELECT *
        FROM unnest(p_op_id, p_collection, p_key, p_value, p_hlc, p_origin, p_base)
             WITH ORDINALITY AS i(op_id, collection, key, value, hlc, origin, base, ord)
    ), fresh AS (
        INSERT INTO {schema}.applied_ops AS a (op_id, collection, key, origin)
        SELECT i.op_id, i.collection, i.key, i.origin FROM input i
        ON CONFLICT DO NOTHING
        RETURNING a.op_id
    ), grp AS (
        SELECT DISTINCT ON (i.collection, i.key)
               i.collection, i.key, i.value, i.hlc, i.origin,
               first_value(i.base) OVER w AS base, count(*) OVER w AS n
        FROM input i JOIN fresh f ON f.op_id = i.op_id
        WINDOW w AS (PARTITION BY i.collection, i.key ORDER BY i.ord
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        ORDER BY i.collection, i.key, i.ord DESC
    ), up AS (
        INSERT INTO {schema}.records AS r (collection, key, value, version, base_version, hlc, origin)
        SELECT g.collection, g.key, g.value::jsonb, g.n, g.base, g.hlc, g.origin
        FROM grp g
        ORDER BY g.collection, g.key
        ON CONFLICT ON CONSTRAINT records_pkey DO UPDATE
        SET value = EXCLUDED.value, version = r.version + EXCLUDED.version, base_version = EXCLUDED.base_version,
            hlc = EXCLUDED.hlc, origin = EXCLUDED.origin, updated_at = now(), stamp = pg_current_xact_id()
        WHERE r.version = EXCLUDED.base_version OR EXCLUDED.hlc > r.hlc
        RETURNING r.collection, r.key, r.version, extract(epoch FROM r.updated_at)::float8 AS updated_at
    )
    SELECT i.op_id,
           CASE WHEN f.op_id IS NULL THEN 'duplicate' WHEN u.key IS NOT NULL THEN 'applied' ELSE 'superseded' END,
           u.version, u.updated_at
    FROM input i
    LEFT JOIN fresh f ON f.op_id = i.op_id
    LEFT JOIN up u ON u.collection = i.collection AND u.key = i.key
    ORDER BY i.ord
$fn$;
