-- A cheaper idempotency record. Until now every op added a row to applied_ops (a uuid b-tree insert and a wide
-- heap row per write): the primary did twice the work of the write itself. What makes a replay detectable now:
--
--   the record row   A node's ops on one key reach the primary in HLC order (per-key order; a node's clock is
--                    strictly increasing), so a row last written by node N with HLC h settles every op of N on
--                    that key with an HLC <= h. Nothing to store: the row already holds origin and hlc.
--   settled_marks    When that coverage would be lost — N's op lost (superseded, manual, conflict), or another
--                    node overwrote N's row — the primary keeps one mark per (key, node): "N's ops on this key up
--                    to hlc are settled", with the outcome of the newest group (a 'conflict' is reported again on
--                    replay: the node may have crashed before pushing its merge). Cross-node overwrites and losses
--                    only: a node that rewrites its own keys adds nothing.
--   node_settled     Each node reports a watermark: every op of its own with an HLC below it is settled and
--                    out of its outbox and journal for good. A replay at or below it is a duplicate whatever
--                    else was pruned, which is what lets the marks (and the old ledger) be pruned.
--
-- applied_ops stays for ops pushed before this migration (and by nodes still running older code, whose
-- hs_push / hs_push_one are unchanged); it is read only on the slow path and pruned by age.
--
-- The fast path (tiers/push.py) is one INSERT … ON CONFLICT per batch of key groups, applied when the primary's
-- version is the group's base version and its HLC is newer, and the node's watermark does not cover it. A row
-- trigger whose WHEN clause is checked without calling any function marks a cross-node overwrite, whichever path
-- wrote it. Everything else goes through hs_settle, one key at a time.

CREATE TABLE {schema}.settled_marks (
    collection text COLLATE "C" NOT NULL,
    key        text COLLATE "C" NOT NULL,
    origin     text NOT NULL,
    first_hlc  text COLLATE "C" NOT NULL,         -- first op of the newest settled group of this node on the key
    hlc        text COLLATE "C" NOT NULL,         -- its last op: every op of origin on the key up to it is settled
    outcome    text NOT NULL,                     -- that group's outcome: applied, superseded, manual, conflict
    marked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, key, origin)
);
CREATE INDEX settled_marks_age_idx ON {schema}.settled_marks (marked_at);

CREATE TABLE {schema}.node_settled (
    origin      text PRIMARY KEY,
    settled     text COLLATE "C" NOT NULL,        -- every op of origin with an HLC < settled is settled
    reported_at timestamptz NOT NULL DEFAULT now()
);

-- Remember that ``p_origin``'s ops on a key up to ``p_hlc`` are settled (outcome of the newest group), unless the
-- node's watermark covers them already. Marks only move forward.
CREATE FUNCTION {schema}.hs_mark(
    p_collection text, p_key text, p_origin text, p_first text, p_hlc text, p_outcome text
) RETURNS void LANGUAGE sql AS $fn$
    INSERT INTO {schema}.settled_marks AS m (collection, key, origin, first_hlc, hlc, outcome)
    SELECT p_collection, p_key, p_origin, p_first, p_hlc, p_outcome
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.node_settled s WHERE s.origin = p_origin AND s.settled > p_hlc COLLATE "C")
    ON CONFLICT (collection, key, origin) DO UPDATE
    SET first_hlc = EXCLUDED.first_hlc, hlc = EXCLUDED.hlc, outcome = EXCLUDED.outcome, marked_at = now()
    WHERE EXCLUDED.hlc >= m.hlc
$fn$;

-- The slow path: ops the fast path did not apply (a conflict, a replay, a watermark-covered op), in input order.
-- For each key, one at a time (sorted, so concurrent pushers lock rows in the same order): the row is locked, each
-- op is classified — settled already (node watermark, the row, a mark, or the old ledger: 'duplicate', or
-- 'conflict' again) or new — and the new ops of the key are written as one group by hs_write (the write rule,
-- migrations 0003/0004). A group that lost is marked; a group that overwrote another node's row marks that node.
-- Returns one row per op, in input order: outcome and, for applied ops, the key's new version.
CREATE FUNCTION {schema}.hs_settle(
    p_op_id uuid[], p_collection text[], p_key text[], p_value text[],
    p_hlc text[], p_origin text[], p_base bigint[], p_strategy text[], p_base_value text[]
) RETURNS TABLE (op_id uuid, outcome text, version bigint, updated_at double precision)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    n integer := cardinality(p_op_id);
    r_outcome text[] := array_fill(NULL::text, ARRAY[n]);
    r_version bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    r_at double precision[] := array_fill(NULL::double precision, ARRAY[n]);
    grp record;
    cur record;
    mark record;
    fresh integer[];
    i integer;
    f integer;
    l integer;
    watermark text;
    prior text;
    h record;
BEGIN
    FOR grp IN
        SELECT t.collection, t.key, array_agg(t.ord::integer ORDER BY t.ord) AS ords
        FROM unnest(p_collection, p_key) WITH ORDINALITY AS t(collection, key, ord)
        GROUP BY t.collection, t.key
        ORDER BY t.collection COLLATE "C", t.key COLLATE "C"
    LOOP
        SELECT r.origin, r.hlc INTO cur
        FROM {schema}.records r WHERE r.collection = grp.collection AND r.key = grp.key FOR UPDATE;
        fresh := '{}';
        FOREACH i IN ARRAY grp.ords LOOP
            SELECT s.settled INTO watermark FROM {schema}.node_settled s WHERE s.origin = p_origin[i];
            IF watermark IS NOT NULL AND p_hlc[i] COLLATE "C" < watermark THEN
                r_outcome[i] := 'duplicate';
            ELSIF cur.origin = p_origin[i] AND cur.hlc >= p_hlc[i] COLLATE "C" THEN
                r_outcome[i] := 'duplicate';
            ELSE
                SELECT m.first_hlc, m.hlc, m.outcome INTO mark FROM {schema}.settled_marks m
                WHERE m.collection = grp.collection AND m.key = grp.key AND m.origin = p_origin[i];
                IF FOUND AND mark.hlc >= p_hlc[i] COLLATE "C" THEN
                    r_outcome[i] := CASE WHEN mark.outcome = 'conflict' AND p_hlc[i] COLLATE "C" >= mark.first_hlc
                                         THEN 'conflict' ELSE 'duplicate' END;
                ELSE
                    SELECT a.outcome INTO prior FROM {schema}.applied_ops a WHERE a.op_id = p_op_id[i];
                    IF FOUND THEN
                        r_outcome[i] := CASE WHEN prior = 'conflict' THEN 'conflict' ELSE 'duplicate' END;
                    ELSE
                        fresh := fresh || i;
                    END IF;
                END IF;
            END IF;
        END LOOP;
        CONTINUE WHEN cardinality(fresh) = 0;
        f := fresh[1];
        l := fresh[cardinality(fresh)];
        h := {schema}.hs_write(grp.collection, grp.key, p_value[l], p_hlc[l], p_origin[l], p_base[f],
                               cardinality(fresh), p_strategy[l], p_base_value[f]);
        IF h.outcome <> 'applied' THEN  -- (an overwrite of another node's row is marked by records_mark)
            PERFORM {schema}.hs_mark(grp.collection, grp.key, p_origin[l], p_hlc[f], p_hlc[l], h.outcome);
        END IF;
        FOREACH i IN ARRAY fresh LOOP
            r_outcome[i] := CASE WHEN h.outcome = 'applied' THEN 'applied'
                                 WHEN p_strategy[i] = 'last_wins' THEN 'superseded'
                                 WHEN p_strategy[i] = 'manual' THEN 'manual'
                                 ELSE 'conflict' END;
            r_version[i] := h.version;
            r_at[i] := h.updated_at;
        END LOOP;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(p_op_id, r_outcome, r_version, r_at);
END
$fn$;

-- Another node overwrote this node's row: the old writer keeps its coverage as a mark.
CREATE FUNCTION {schema}.hs_mark_overwritten() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM {schema}.hs_mark(OLD.collection, OLD.key, OLD.origin, OLD.hlc, OLD.hlc, 'applied');
    RETURN NULL;
END
$fn$;
CREATE TRIGGER records_mark AFTER UPDATE ON {schema}.records
    FOR EACH ROW WHEN (OLD.origin IS DISTINCT FROM NEW.origin) EXECUTE FUNCTION {schema}.hs_mark_overwritten();

-- Every write to records is an INSERT (… ON CONFLICT DO UPDATE), which fires INSERT statement triggers whatever
-- path each row takes, and UPDATE ones as well when a row is updated: notify once. (A plain UPDATE by hand is
-- seen by the pullers' periodic poll.)
DROP TRIGGER records_notify ON {schema}.records;
CREATE TRIGGER records_notify AFTER INSERT ON {schema}.records
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.hs_notify();

-- A node's watermark only moves forward.
CREATE FUNCTION {schema}.hs_report_settled(p_origin text, p_settled text) RETURNS void LANGUAGE sql AS $fn$
    INSERT INTO {schema}.node_settled AS s (origin, settled) VALUES (p_origin, p_settled)
    ON CONFLICT (origin) DO UPDATE SET settled = greatest(s.settled, EXCLUDED.settled), reported_at = now()
$fn$;

-- Conflict counts kept as they change, so a status view reads a few rows instead of a GROUP BY over every conflict
-- ever logged. A trigger appends +1 / -1 rows (never an update of a shared row: two pushers logging conflicts would
-- otherwise wait on each other's counter row while holding record locks — a deadlock); hs_compact_counts folds
-- them into one row per (strategy, status), run by each node's housekeeping every minute (one node at a time).
CREATE TABLE {schema}.conflict_counts (
    strategy text NOT NULL,
    status   text NOT NULL,
    n        bigint NOT NULL
);
INSERT INTO {schema}.conflict_counts (strategy, status, n)
SELECT strategy, status, count(*) FROM {schema}.conflicts GROUP BY 1, 2;

CREATE FUNCTION {schema}.hs_count_conflicts() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO {schema}.conflict_counts (strategy, status, n) VALUES (OLD.strategy, OLD.status, -1);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO {schema}.conflict_counts (strategy, status, n) VALUES (NEW.strategy, NEW.status, 1);
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER conflicts_count AFTER INSERT OR DELETE OR UPDATE OF strategy, status ON {schema}.conflicts
    FOR EACH ROW EXECUTE FUNCTION {schema}.hs_count_conflicts();

CREATE FUNCTION {schema}.hs_compact_counts() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('hybridstore-counts:' || '{schema}')) THEN
        RETURN;  -- another node is compacting
    END IF;
    WITH folded AS (DELETE FROM {schema}.conflict_counts RETURNING strategy, status, n)
    INSERT INTO {schema}.conflict_counts (strategy, status, n)
    SELECT strategy, status, sum(n) FROM folded GROUP BY 1, 2 HAVING sum(n) <> 0;
END
$fn$;

CREATE INDEX conflicts_resolved_at_idx ON {schema}.conflicts (resolved_at) WHERE status <> 'open';
CREATE INDEX audit_log_at_idx ON {schema}.audit_log (at);

-- Retention, run by any node (one at a time: the caller takes an advisory lock). Deletes at most p_limit rows per
-- table per call, oldest first, so a call stays short; returns what it deleted. Open conflicts are never pruned.
--   settled_marks   covered by their node's watermark (any age), or older than p_ledger
--   applied_ops     older than p_ledger (the old ledger: nothing adds to it any more)
--   conflicts       resolved ones older than p_conflicts
--   audit_log       older than p_audit
CREATE FUNCTION {schema}.hs_prune(p_ledger interval, p_conflicts interval, p_audit interval, p_limit integer)
RETURNS TABLE (what text, deleted bigint) LANGUAGE plpgsql AS $fn$
DECLARE
    k bigint;
BEGIN
    DELETE FROM {schema}.settled_marks m USING {schema}.node_settled s
    WHERE s.origin = m.origin AND m.hlc < s.settled;
    GET DIAGNOSTICS k = ROW_COUNT;
    what := 'settled_marks_covered'; deleted := k; RETURN NEXT;
    DELETE FROM {schema}.settled_marks WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {schema}.settled_marks WHERE marked_at < now() - p_ledger ORDER BY marked_at LIMIT p_limit));
    GET DIAGNOSTICS k = ROW_COUNT;
    what := 'settled_marks_expired'; deleted := k; RETURN NEXT;
    -- No index on applied_at (building one on a big old ledger would hold the migration up): nothing is added to
    -- the table any more, and a scan that stops after p_limit old rows is cheap.
    DELETE FROM {schema}.applied_ops WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {schema}.applied_ops WHERE applied_at < now() - p_ledger LIMIT p_limit));
    GET DIAGNOSTICS k = ROW_COUNT;
    what := 'applied_ops'; deleted := k; RETURN NEXT;
    DELETE FROM {schema}.conflicts WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {schema}.conflicts WHERE status <> 'open' AND resolved_at < now() - p_conflicts
        ORDER BY resolved_at LIMIT p_limit));
    GET DIAGNOSTICS k = ROW_COUNT;
    what := 'conflicts'; deleted := k; RETURN NEXT;
    DELETE FROM {schema}.audit_log WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {schema}.audit_log WHERE at < now() - p_audit ORDER BY at LIMIT p_limit));
    GET DIAGNOSTICS k = ROW_COUNT;
    what := 'audit_log'; deleted := k; RETURN NEXT;
END
$fn$;
