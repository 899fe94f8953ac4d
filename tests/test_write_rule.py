"""The primary's write rule lives in one SQL home (``hs_write``, migration 0003): write-through of one op and a
pushed batch (``tiers/push.py``: the fast statement, else ``hs_settle``) reach the same outcomes and keep the same
settled marks, and the one-op path is atomic."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from hybridstore.errors import PrimaryUnavailableError
from hybridstore.migrations import migrations_for
from hybridstore.model import ApplyOutcome, Op
from hybridstore.tiers.primary import PrimaryTier

FUNCTIONS = {
    "hs_apply": "uuid[], text[], text[], text[], text[], text[], bigint[]",
    "hs_push": "uuid[], text[], text[], text[], text[], text[], bigint[], text[], text[]",
    "hs_push_one": "uuid, text, text, text, text, text, bigint, text, text",
    "hs_write": "text, text, text, text, text, bigint, bigint, text, text",
}


def has_function(pg: psycopg.Connection[Any], schema: str, name: str) -> bool:
    row = pg.execute("SELECT to_regprocedure(%s) IS NOT NULL", (f'"{schema}".{name}({FUNCTIONS[name]})',)).fetchone()
    return bool(row and row[0])


def test_migrated_primary_has_one_write_rule(pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]) -> None:
    tier = PrimaryTier(pg_dsn, schema=pg_schema)
    try:
        assert tier.migrate() == [m.version for m in migrations_for("primary")]
    finally:
        tier.close()
    assert not has_function(pg, pg_schema, "hs_apply")
    assert all(has_function(pg, pg_schema, name) for name in ("hs_push", "hs_push_one", "hs_write"))


def test_schema_of_the_previous_release_upgrades(pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]) -> None:
    # the schema as the previous release left it: migrations 1 and 2, with data written by its hs_push
    q = f'"{pg_schema}"'
    with pg.transaction():
        pg.execute(f"CREATE SCHEMA {q}")
        pg.execute(
            f"CREATE TABLE {q}.hs_migrations (version int PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for mig in migrations_for("primary")[:2]:
            pg.execute(mig.sql.replace("{schema}", q).encode())
            pg.execute(f"INSERT INTO {q}.hs_migrations (version, name) VALUES (%s, %s)", (mig.version, mig.name))
    old_op = str(uuid.uuid4())
    pg.execute(
        f"SELECT * FROM {q}.hs_push(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
        "%s::bigint[], %s::text[], %s::text[])",
        ([old_op], ["c"], ["k"], ['"old"'], ["h1"], ["n0"], [0], ["last_wins"], [None]),
    )
    assert has_function(pg, pg_schema, "hs_apply")
    tier = PrimaryTier(pg_dsn, schema=pg_schema)
    try:
        assert tier.migrate() == [m.version for m in migrations_for("primary")[2:]]
        row = tier.get("c", "k")
        assert row is not None and (row.value_json, row.version) == ('"old"', 1)
        assert tier.put_one(Op(old_op, "c", "k", '"old"', "h1", "n0", 0, 1.0)).outcome == "duplicate"
        assert tier.put_one(Op(str(uuid.uuid4()), "c", "k", '"new"', "h2", "n1", 1, 2.0)).outcome == "applied"
    finally:
        tier.close()
    assert not has_function(pg, pg_schema, "hs_apply")


# -- one rule, two paths ----------------------------------------------------------------------------------------

# (op label, value, hlc, base version, strategy, node); a label seen before replays that op (same op id). A node's
# own ops on a key reach the primary in the order of its clock, so the stale writes come from other nodes.
SCENARIO: list[tuple[str, str | None, str, int, str, str]] = [
    ("new key", '{"v":1}', "h05", 0, "last_wins", "n1"),
    ("based on the primary's version", '{"v":2}', "h06", 1, "last_wins", "n1"),
    ("stale base, newer HLC: wins", '{"v":3}', "h09", 1, "last_wins", "n3"),
    ("stale base, older HLC: loses", '{"v":4}', "h07", 2, "last_wins", "n4"),
    ("stale base, newer HLC: wins", '{"v":3}', "h09", 1, "last_wins", "n3"),
    ("stale base, older HLC: loses", '{"v":4}', "h07", 2, "last_wins", "n4"),
    ("delete", None, "h10", 3, "last_wins", "n1"),
    ("manual conflict", '{"v":5}', "h11", 2, "manual", "n1"),
    ("merge conflict", '{"v":6}', "h12", 1, "merge", "n1"),
    ("merge conflict", '{"v":6}', "h12", 1, "merge", "n1"),
    ("based on the primary's version again", '{"v":7}', "h13", 4, "last_wins", "n1"),
]
EXPECTED = [
    "applied",
    "applied",
    "applied",
    "superseded",
    "duplicate",
    "duplicate",
    "applied",
    "manual",
    "conflict",
    "conflict",
    "applied",
]


def run_scenario(tier: PrimaryTier, collection: str, *, batched: bool) -> tuple[list[ApplyOutcome], list[str]]:
    """Apply SCENARIO to one key of ``collection``: one op per call (write-through), or each op in a batch with an
    op on another key (so the batch path runs). Returns the outcomes and the op ids in order."""
    op_ids: dict[str, str] = {}
    outcomes: list[ApplyOutcome] = []
    for label, value, hlc, base, strategy, node in SCENARIO:
        op_id = op_ids.setdefault(label, str(uuid.uuid4()))
        op = Op(op_id, collection, "k", value, hlc, node, base, 1.0)
        if batched:
            filler = Op(str(uuid.uuid4()), "filler", f"{collection}-{len(outcomes)}", "0", "h00", "n2", 0, 1.0)
            batch = tier.put_many([op, filler], strategies=[strategy, "last_wins"], base_values=["{}", None])
            outcomes.append(batch[0])
        else:
            outcomes.append(tier.put_one(op, strategy=strategy, base_value="{}"))
    return outcomes, [op_ids[label] for label, *_ in SCENARIO]


def logged(pg: psycopg.Connection[Any], schema: str, collection: str) -> dict[str, Any]:
    """What the primary keeps about ``collection``'s key: the row, its conflicts and their audit entries."""
    q = f'"{schema}"'
    return {
        "record": pg.execute(
            f"SELECT value::text, version, base_version, hlc, origin FROM {q}.records WHERE collection = %s",
            (collection,),
        ).fetchall(),
        "conflicts": pg.execute(
            f"SELECT key, strategy, base::text, local::text, remote::text, local_hlc, remote_hlc, status, "
            f"resolution::text, resolved_by FROM {q}.conflicts WHERE collection = %s ORDER BY id",
            (collection,),
        ).fetchall(),
        "audit": pg.execute(
            f"SELECT actor, action, split_part(target, '/', 2), (details - 'conflict_id')::text FROM {q}.audit_log "
            f"WHERE target LIKE %s ORDER BY id",
            (f"{collection}/%",),
        ).fetchall(),
    }


def test_write_through_and_push_agree(pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]) -> None:
    tier = PrimaryTier(pg_dsn, schema=pg_schema)
    try:
        one, one_ids = run_scenario(tier, "through", batched=False)
        many, many_ids = run_scenario(tier, "pushed", batched=True)
    finally:
        tier.close()
    assert [o.outcome for o in one] == EXPECTED
    assert [(o.outcome, o.current and o.current[2:5]) for o in one] == [
        (o.outcome, o.current and o.current[2:5]) for o in many
    ]
    through, pushed = logged(pg, pg_schema, "through"), logged(pg, pg_schema, "pushed")
    assert through == pushed
    assert [c[7] for c in through["conflicts"]] == ["resolved", "resolved", "open"]  # last_wins twice, manual
    assert through["record"] == [('{"v": 7}', 5, 4, "h13", "n1")]
    marks = f'SELECT origin, first_hlc, hlc, outcome FROM "{pg_schema}".settled_marks WHERE collection = %s ORDER BY 1'
    assert (
        pg.execute(marks, ("through",)).fetchall()
        == pg.execute(marks, ("pushed",)).fetchall()
        == [
            ("n1", "h12", "h12", "conflict"),  # a replay of the merge conflict reports it again
            ("n3", "h09", "h09", "applied"),  # n1's delete overwrote n3's row
            ("n4", "h07", "h07", "superseded"),
        ]
    )
    assert one_ids != many_ids


# -- atomicity ---------------------------------------------------------------------------------------------------


def test_superseded_marking_is_atomic_with_the_write(pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]) -> None:
    """The connection dies after the losing write was settled (conflict logged) but before its mark says
    'superseded': nothing of it may remain, and a replay settles it once."""
    q = f'"{pg_schema}"'
    tier = PrimaryTier(pg_dsn, schema=pg_schema, timeout=30)
    try:
        assert tier.put_one(Op(str(uuid.uuid4()), "c", "k", '"winner"', "h9", "n1", 0, 1.0)).outcome == "applied"
        pg.execute(
            f"CREATE FUNCTION {q}.stall() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$"
        )
        pg.execute(f"CREATE TRIGGER stall BEFORE INSERT ON {q}.settled_marks FOR EACH ROW EXECUTE FUNCTION {q}.stall()")
        loser = Op(str(uuid.uuid4()), "c", "k", '"loser"', "h1", "n2", 0, 2.0)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                tier.put_one(loser)
            except BaseException as exc:
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        deadline = time.monotonic() + 20
        while True:
            stalled = pg.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE %s AND pid <> "
                "pg_backend_pid()",
                (f"%{pg_schema}%hs_settle%",),
            ).fetchall()
            if stalled or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(stalled) == 1, "the write never reached its mark"
        pg.execute("SELECT pg_terminate_backend(%s)", (stalled[0][0],))
        writer.join(timeout=20)
        assert len(errors) == 1 and isinstance(errors[0], PrimaryUnavailableError)

        assert pg.execute(f"SELECT count(*) FROM {q}.settled_marks").fetchone() == (0,)
        assert pg.execute(f"SELECT count(*) FROM {q}.conflicts").fetchone() == (0,)
        assert pg.execute(f"SELECT count(*) FROM {q}.audit_log").fetchone() == (0,)

        pg.execute(f"DROP TRIGGER stall ON {q}.settled_marks")
        replay = tier.put_one(loser)
        assert replay.outcome == "superseded" and replay.current is not None
        assert replay.current.value_json == '"winner"'
        row = pg.execute(f"SELECT origin, hlc, outcome FROM {q}.settled_marks").fetchall()
        assert row == [("n2", "h1", "superseded")]
        assert tier.put_one(loser).outcome == "duplicate"
        assert pg.execute(f"SELECT count(*) FROM {q}.conflicts").fetchone() == (1,)
    finally:
        tier.close()


# -- housekeeping ------------------------------------------------------------------------------------------------


def test_close_waits_for_pools_being_replaced(pg_dsn: str, pg_schema: str) -> None:
    tier = PrimaryTier(pg_dsn, schema=pg_schema)
    tier.ping()
    for _ in range(3):
        tier.reset_pool()
        tier.ping()
    tier.close()
    assert [t.name for t in threading.enumerate() if t.name == "hybridstore-pool-close"] == []
    tier.reset_pool()  # after close: nothing new is opened
    with pytest.raises(PrimaryUnavailableError, match="closed"):
        tier.ping()
