-- Sync engine: a change-feed index that pages inside one transaction, change notifications, and hs_push,
-- which applies a batch under a per-collection conflict strategy.

-- The change feed pages on (stamp, collection, key): one transaction may write more rows than a page holds.
CREATE INDEX records_feed_idx ON {schema}.records (stamp, collection, key);
DROP INDEX {schema}.records_stamp_idx;

-- One notification per writing statement, on the channel "hs_<schema>", delivered at commit (identical
-- notifications of one transaction are delivered once).
CREATE FUNCTION {schema}.hs_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    -- The payload names the writer (its application_name), so a node can skip notifications of its own writes.
    PERFORM pg_notify('hs_' || TG_TABLE_SCHEMA, current_setting('application_name'));
    RETURN NULL;
END
$fn$;
CREATE TRIGGER records_notify AFTER INSERT OR UPDATE ON {schema}.records
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.hs_notify();

CREATE INDEX conflicts_status_idx ON {schema}.conflicts (status, id);

-- Apply a batch of ops in one transaction. Ops for one key form a group, applied in array order as one write
-- based on the group's first base version. A group whose base version equals the primary's version applies.
-- Otherwise it is a conflict, settled by the group's strategy:
--   last_wins  the newer HLC wins; the conflict is logged as resolved (conflicts + audit_log);
--   manual     nothing applies; the conflict is queued (status 'open') with base / local / remote values;
--   merge, custom   nothing applies; outcome 'conflict': the client merges and pushes the result.
-- The outcome of every op is kept in applied_ops, so a replayed op changes nothing; a replayed op whose
-- outcome was 'conflict' reports 'conflict' again (the client may have crashed before pushing its merge).
-- Returns one row per op, in input order: outcome (applied, superseded, manual, conflict, duplicate), and the
-- key's new version for applied ops.
CREATE FUNCTION {schema}.hs_push(
    p_op_id uuid[], p_collection text[], p_key text[], p_value text[],
    p_hlc text[], p_origin text[], p_base bigint[], p_strategy text[], p_base_value text[]
) RETURNS TABLE (op_id uuid, outcome text, version bigint, updated_at double precision)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_fresh uuid[];
    r_op uuid[];
    r_outcome text[];
    r_version bigint[];
    r_at double precision[];
BEGIN
    WITH ins AS (
        INSERT INTO {schema}.applied_ops AS a (op_id, collection, key, origin)
        SELECT * FROM unnest(p_op_id, p_collection, p_key, p_origin)
        ON CONFLICT DO NOTHING
        RETURNING a.op_id
    )
    SELECT coalesce(array_agg(ins.op_id), '{}') INTO v_fresh FROM ins;

    WITH input AS (
        SELECT i.*, f.op_id IS NOT NULL AS fresh
        FROM unnest(p_op_id, p_collection, p_key, p_value, p_hlc, p_origin, p_base, p_strategy, p_base_value)
             WITH ORDINALITY AS i(op_id, collection, key, value, hlc, origin, base, strategy, base_value, ord)
        LEFT JOIN unnest(v_fresh) AS f(op_id) ON f.op_id = i.op_id
    ), grp AS (
        SELECT DISTINCT ON (i.collection, i.key)
               i.collection, i.key, i.value, i.hlc, i.origin, i.strategy,
               first_value(i.base) OVER w AS base, first_value(i.base_value) OVER w AS base_value,
               count(*) OVER w AS n
        FROM input i WHERE i.fresh
        WINDOW w AS (PARTITION BY i.collection, i.key ORDER BY i.ord
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        ORDER BY i.collection, i.key, i.ord DESC
    ), cur AS (
        SELECT r.collection, r.key, r.value, r.version, r.hlc
        FROM {schema}.records r JOIN grp g ON g.collection = r.collection AND g.key = r.key
    ), lww AS (
        INSERT INTO {schema}.records AS r (collection, key, value, version, base_version, hlc, origin)
        SELECT g.collection, g.key, g.value::jsonb, g.n, g.base, g.hlc, g.origin
        FROM grp g WHERE g.strategy = 'last_wins'
        ORDER BY g.collection, g.key
        ON CONFLICT ON CONSTRAINT records_pkey DO UPDATE
        SET value = EXCLUDED.value, version = r.version + EXCLUDED.version, base_version = EXCLUDED.base_version,
            hlc = EXCLUDED.hlc, origin = EXCLUDED.origin, updated_at = now(), stamp = pg_current_xact_id()
        WHERE r.version = EXCLUDED.base_version OR EXCLUDED.hlc > r.hlc
        RETURNING r.collection, r.key, r.version, extract(epoch FROM r.updated_at)::float8 AS at
    ), strict AS (
        INSERT INTO {schema}.records AS r (collection, key, value, version, base_version, hlc, origin)
        SELECT g.collection, g.key, g.value::jsonb, g.n, g.base, g.hlc, g.origin
        FROM grp g WHERE g.strategy <> 'last_wins'
        ORDER BY g.collection, g.key
        ON CONFLICT ON CONSTRAINT records_pkey DO UPDATE
        SET value = EXCLUDED.value, version = r.version + EXCLUDED.version, base_version = EXCLUDED.base_version,
            hlc = EXCLUDED.hlc, origin = EXCLUDED.origin, updated_at = now(), stamp = pg_current_xact_id()
        WHERE r.version = EXCLUDED.base_version
        RETURNING r.collection, r.key, r.version, extract(epoch FROM r.updated_at)::float8 AS at
    ), up AS (
        SELECT * FROM lww UNION ALL SELECT * FROM strict
    ), logged AS (
        -- Conflicts: every group whose base version was not the primary's, except merges left to the client.
        INSERT INTO {schema}.conflicts AS k
            (collection, key, strategy, base, local, remote, local_hlc, remote_hlc, status, resolution,
             resolved_at, resolved_by)
        SELECT g.collection, g.key, g.strategy, g.base_value::jsonb, g.value::jsonb, c.value, g.hlc, c.hlc,
               CASE WHEN g.strategy = 'manual' THEN 'open' ELSE 'resolved' END,
               CASE WHEN g.strategy = 'manual' THEN NULL
                    ELSE jsonb_build_object('winner', CASE WHEN u.key IS NULL THEN 'remote' ELSE 'local' END) END,
               CASE WHEN g.strategy = 'manual' THEN NULL ELSE now() END,
               CASE WHEN g.strategy = 'manual' THEN NULL ELSE 'system:last_wins' END
        FROM grp g
        JOIN cur c ON c.collection = g.collection AND c.key = g.key
        LEFT JOIN up u ON u.collection = g.collection AND u.key = g.key
        WHERE c.version <> g.base AND (g.strategy = 'last_wins' OR (g.strategy = 'manual' AND u.key IS NULL))
        RETURNING k.id, k.collection, k.key, k.strategy, k.status, k.resolution
    ), audited AS (
        INSERT INTO {schema}.audit_log (actor, action, target, details)
        SELECT CASE WHEN l.status = 'open' THEN 'system:sync' ELSE 'system:last_wins' END,
               CASE WHEN l.status = 'open' THEN 'conflict.queued' ELSE 'conflict.resolved' END,
               l.collection || '/' || l.key,
               jsonb_build_object('conflict_id', l.id, 'strategy', l.strategy, 'resolution', l.resolution)
        FROM logged l
    ), led AS (
        SELECT a.op_id, a.outcome FROM {schema}.applied_ops a JOIN input i ON i.op_id = a.op_id AND NOT i.fresh
    )
    SELECT array_agg(i.op_id ORDER BY i.ord),
           array_agg(CASE WHEN NOT i.fresh THEN CASE WHEN l.outcome = 'conflict' THEN 'conflict' ELSE 'duplicate' END
                          WHEN u.key IS NOT NULL THEN 'applied'
                          WHEN i.strategy = 'last_wins' THEN 'superseded'
                          WHEN i.strategy = 'manual' THEN 'manual'
                          ELSE 'conflict' END ORDER BY i.ord),
           array_agg(u.version ORDER BY i.ord),
           array_agg(u.at ORDER BY i.ord)
    INTO r_op, r_outcome, r_version, r_at
    FROM input i
    LEFT JOIN up u ON i.fresh AND u.collection = i.collection AND u.key = i.key
    LEFT JOIN led l ON NOT i.fresh AND l.op_id = i.op_id;

    IF 'superseded' = ANY (r_outcome) OR 'manual' = ANY (r_outcome) OR 'conflict' = ANY (r_outcome) THEN
        UPDATE {schema}.applied_ops a SET outcome = t.outcome
        FROM unnest(r_op, r_outcome) AS t(op_id, outcome)
        WHERE a.op_id = t.op_id AND t.outcome IN ('superseded', 'manual', 'conflict') AND a.outcome = 'applied';
    END IF;

    RETURN QUERY SELECT * FROM unnest(r_op, r_outcome, r_version, r_at);
END
$fn$;
