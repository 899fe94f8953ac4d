-- Under last_wins the greatest HLC wins, whatever the push order and batching. Migration 0003 also applied a
-- last_wins write whose base version matched the primary's, whatever its HLC: a node whose first queued write
-- lost learned the winner's version, and its second (older) queued write was then taken for a follow-up and
-- overwrote the newer, acknowledged winner. Now:
--   last_wins     a write applies when the key is new or its HLC is greater than the primary's; the base version
--                 only says whether it was a conflict. A write that loses is always logged as a resolved conflict.
--   merge, manual a write applies when its base version is the primary's (unchanged).
-- A follow-up write always carries a greater HLC than the row it follows (a node's clock observes every stamp it
-- reads), so this changes nothing for writes that were not in conflict. hs_write and hs_push are replaced;
-- hs_push_one calls hs_write, so write-through follows the same rule.

-- The write rule, for one key: write ``p_value`` (the last of ``p_n`` new ops for the key, the first of which was
-- based on version ``p_base``) under the strategy above. A conflict — the primary's version is not ``p_base``, or
-- a last_wins write that loses — is logged in the same statement:
--   last_wins  the newer HLC wins; logged as resolved (conflicts + audit_log);
--   manual     nothing is written; queued (status 'open') with base / local / remote values;
--   merge, custom   nothing is written nor logged: the client merges and pushes the result.
-- Returns the outcome (applied, superseded, manual, conflict) and, when applied, the key's new version. The
-- caller records the op ids in applied_ops first (and their outcome after): this function does not.
CREATE OR REPLACE FUNCTION {schema}.hs_write(
    p_collection text, p_key text, p_value text, p_hlc text, p_origin text, p_base bigint, p_n bigint,
    p_strategy text, p_base_value text, OUT outcome text, OUT version bigint, OUT updated_at double precision
) LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    WITH cur AS (  -- the row as it was before this statement
        SELECT r.value, r.version, r.hlc FROM {schema}.records r WHERE r.collection = p_collection AND r.key = p_key
    ), up AS (
        INSERT INTO {schema}.records AS r (collection, key, value, version, base_version, hlc, origin)
        VALUES (p_collection, p_key, p_value::jsonb, p_n, p_base, p_hlc, p_origin)
        ON CONFLICT ON CONSTRAINT records_pkey DO UPDATE
        SET value = EXCLUDED.value, version = r.version + EXCLUDED.version, base_version = EXCLUDED.base_version,
            hlc = EXCLUDED.hlc, origin = EXCLUDED.origin, updated_at = now(), stamp = pg_current_xact_id()
        WHERE CASE WHEN p_strategy = 'last_wins' THEN EXCLUDED.hlc > r.hlc ELSE r.version = EXCLUDED.base_version END
        RETURNING r.version, extract(epoch FROM r.updated_at)::float8 AS at
    ), logged AS (
        INSERT INTO {schema}.conflicts AS k
            (collection, key, strategy, base, local, remote, local_hlc, remote_hlc, status, resolution,
             resolved_at, resolved_by)
        SELECT p_collection, p_key, p_strategy, p_base_value::jsonb, p_value::jsonb, c.value, p_hlc, c.hlc,
               CASE WHEN p_strategy = 'manual' THEN 'open' ELSE 'resolved' END,
               CASE WHEN p_strategy = 'manual' THEN NULL
                    ELSE jsonb_build_object('winner', CASE WHEN EXISTS (SELECT 1 FROM up) THEN 'local' ELSE 'remote' END)
               END,
               CASE WHEN p_strategy = 'manual' THEN NULL ELSE now() END,
               CASE WHEN p_strategy = 'manual' THEN NULL ELSE 'system:last_wins' END
        FROM cur c
        WHERE (p_strategy = 'last_wins' AND (c.version <> p_base OR NOT EXISTS (SELECT 1 FROM up)))
           OR (p_strategy = 'manual' AND c.version <> p_base AND NOT EXISTS (SELECT 1 FROM up))
        RETURNING k.id, k.status, k.resolution
    ), audited AS (
        INSERT INTO {schema}.audit_log (actor, action, target, details)
        SELECT CASE WHEN l.status = 'open' THEN 'system:sync' ELSE 'system:last_wins' END,
               CASE WHEN l.status = 'open' THEN 'conflict.queued' ELSE 'conflict.resolved' END,
               p_collection || '/' || p_key,
               jsonb_build_object('conflict_id', l.id, 'strategy', p_strategy, 'resolution', l.resolution)
        FROM logged l
    )
    SELECT CASE WHEN up.version IS NOT NULL THEN 'applied'
                WHEN p_strategy = 'last_wins' THEN 'superseded'
                WHEN p_strategy = 'manual' THEN 'manual'
                ELSE 'conflict' END,
           up.version, up.at
    INTO outcome, version, updated_at
    FROM (SELECT 1) AS one LEFT JOIN up ON true;
END
$fn$;

-- Apply a batch of ops in one transaction. Ops for one key form a group, applied in array order as one write based
-- on the group's first base version. Ops already in applied_ops change nothing ('duplicate', or 'conflict' again
-- when that was their outcome: the client may have crashed before pushing its merge). Groups based on the
-- primary's version and newer by HLC (no conflict, the common case) are written in one statement; the others are
-- settled one key at a time by hs_write (a last_wins group whose base matches but whose HLC is older loses there). Returns one row per op, in input order: outcome (applied, superseded, manual, conflict,
-- duplicate) and the key's new version for applied ops.
CREATE OR REPLACE FUNCTION {schema}.hs_push(
    p_op_id uuid[], p_collection text[], p_key text[], p_value text[],
    p_hlc text[], p_origin text[], p_base bigint[], p_strategy text[], p_base_value text[]
) RETURNS TABLE (op_id uuid, outcome text, version bigint, updated_at double precision)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    r_outcome text[];  -- per op, in input order; NULL: its key is in conflict
    r_version bigint[];
    r_at double precision[];
    c_collection text[];  -- the groups in conflict
    c_key text[];
    c_value text[];
    c_hlc text[];
    c_origin text[];
    c_base bigint[];
    c_n bigint[];
    c_strategy text[];
    c_base_value text[];
    s_outcome text[] := '{}';  -- what hs_write made of each group in conflict
    s_version bigint[] := '{}';
    s_at double precision[] := '{}';
    w record;
    h record;
BEGIN
    WITH input AS (
        SELECT *
        FROM unnest(p_op_id, p_collection, p_key, p_value, p_hlc, p_origin, p_base, p_strategy, p_base_value)
             WITH ORDINALITY AS i(op_id, collection, key, value, hlc, origin, base, strategy, base_value, ord)
    ), fresh AS (
        INSERT INTO {schema}.applied_ops AS a (op_id, collection, key, origin)
        SELECT i.op_id, i.collection, i.key, i.origin FROM input i
        ON CONFLICT DO NOTHING
        RETURNING a.op_id
    ), grp AS (
        SELECT DISTINCT ON (i.collection, i.key)
               i.collection, i.key, i.value, i.hlc, i.origin, i.strategy,
               first_value(i.base) OVER w AS base, first_value(i.base_value) OVER w AS base_value,
               count(*) OVER w AS n
        FROM input i JOIN fresh f ON f.op_id = i.op_id
        WINDOW w AS (PARTITION BY i.collection, i.key ORDER BY i.ord
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        ORDER BY i.collection, i.key, i.ord DESC
    ), up AS (  -- no conflict: the group's base version is the primary's and its HLC newer (or the key is new)
        INSERT INTO {schema}.records AS r (collection, key, value, version, base_version, hlc, origin)
        SELECT g.collection, g.key, g.value::jsonb, g.n, g.base, g.hlc, g.origin
        FROM grp g
        ORDER BY g.collection, g.key
        ON CONFLICT ON CONSTRAINT records_pkey DO UPDATE
        SET value = EXCLUDED.value, version = r.version + EXCLUDED.version, base_version = EXCLUDED.base_version,
            hlc = EXCLUDED.hlc, origin = EXCLUDED.origin, updated_at = now(), stamp = pg_current_xact_id()
        WHERE r.version = EXCLUDED.base_version AND EXCLUDED.hlc > r.hlc
        RETURNING r.collection, r.key, r.version, extract(epoch FROM r.updated_at)::float8 AS at
    ), per_op AS (
        SELECT array_agg(CASE WHEN f.op_id IS NULL THEN 'duplicate' WHEN u.key IS NOT NULL THEN 'applied' END
                         ORDER BY i.ord) AS outcome,
               array_agg(u.version ORDER BY i.ord) AS version,
               array_agg(u.at ORDER BY i.ord) AS at
        FROM input i
        LEFT JOIN fresh f ON f.op_id = i.op_id
        LEFT JOIN up u ON f.op_id IS NOT NULL AND u.collection = i.collection AND u.key = i.key
    ), in_conflict AS (
        SELECT array_agg(g.collection) AS collection, array_agg(g.key) AS key, array_agg(g.value) AS value,
               array_agg(g.hlc) AS hlc, array_agg(g.origin) AS origin, array_agg(g.base) AS base,
               array_agg(g.n) AS n, array_agg(g.strategy) AS strategy, array_agg(g.base_value) AS base_value
        FROM grp g
        WHERE NOT EXISTS (SELECT 1 FROM up u WHERE u.collection = g.collection AND u.key = g.key)
    )
    SELECT p.outcome, p.version, p.at, c.collection, c.key, c.value, c.hlc, c.origin, c.base, c.n, c.strategy,
           c.base_value
    INTO r_outcome, r_version, r_at, c_collection, c_key, c_value, c_hlc, c_origin, c_base, c_n, c_strategy,
         c_base_value
    FROM per_op p, in_conflict c;

    IF c_key IS NOT NULL THEN
        FOR w IN
            SELECT * FROM unnest(c_collection, c_key, c_value, c_hlc, c_origin, c_base, c_n, c_strategy, c_base_value)
                AS t(collection, key, value, hlc, origin, base, n, strategy, base_value)
        LOOP
            h := {schema}.hs_write(w.collection, w.key, w.value, w.hlc, w.origin, w.base, w.n, w.strategy,
                                   w.base_value);
            s_outcome := s_outcome || h.outcome;
            s_version := s_version || h.version;
            s_at := s_at || h.updated_at;
        END LOOP;
        -- Each op of a group reports the group's outcome, named after the op's own strategy when not applied.
        SELECT array_agg(CASE WHEN o.outcome IS NOT NULL THEN o.outcome
                              WHEN s.outcome = 'applied' THEN 'applied'
                              WHEN o.strategy = 'last_wins' THEN 'superseded'
                              WHEN o.strategy = 'manual' THEN 'manual'
                              ELSE 'conflict' END ORDER BY o.ord),
               array_agg(coalesce(o.version, s.version) ORDER BY o.ord),
               array_agg(coalesce(o.at, s.at) ORDER BY o.ord)
        INTO r_outcome, r_version, r_at
        FROM unnest(p_collection, p_key, p_strategy, r_outcome, r_version, r_at) WITH ORDINALITY
             AS o(collection, key, strategy, outcome, version, at, ord)
        LEFT JOIN unnest(c_collection, c_key, s_outcome, s_version, s_at) AS s(collection, key, outcome, version, at)
             ON o.outcome IS NULL AND s.collection = o.collection AND s.key = o.key;
        UPDATE {schema}.applied_ops a SET outcome = t.outcome
        FROM unnest(p_op_id, r_outcome) AS t(op_id, outcome)
        WHERE a.op_id = t.op_id AND t.outcome IN ('superseded', 'manual', 'conflict') AND a.outcome = 'applied';
    END IF;

    IF 'duplicate' = ANY (r_outcome) THEN
        SELECT array_agg(CASE WHEN t.outcome = 'duplicate' AND a.outcome = 'conflict' THEN 'conflict' ELSE t.outcome END
                         ORDER BY t.ord)
        INTO r_outcome
        FROM unnest(p_op_id, r_outcome) WITH ORDINALITY AS t(op_id, outcome, ord)
        LEFT JOIN {schema}.applied_ops a ON t.outcome = 'duplicate' AND a.op_id = t.op_id;
    END IF;

    RETURN QUERY SELECT * FROM unnest(p_op_id, r_outcome, r_version, r_at);
END
$fn$;
