"""The idempotency record (migration 0008, ``tiers/push.py``): replaying any op, at any time, changes nothing —
after a crash (the node never learned the outcome), as a duplicate or out-of-order batch, after another node
overwrote the row, and after the retention pruned the marks — while writes the primary never saw still apply."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest

from hybridstore.model import Op
from hybridstore.node.timing import FakeClock
from hybridstore.sync.housekeeping import SAFETY, Housekeeper, Retention, settled_watermark
from hybridstore.tiers.primary import PrimaryTier

from .fix_db import StoreFactory, primary_rows


def hlc(n: int, node: str) -> str:
    return f"{1_700_000_000_000 + n:012x}.000000.{node}"


def op(key: str, value: str | None, n: int, node: str, base: int = 0, collection: str = "c") -> Op:
    return Op(str(uuid.uuid4()), collection, key, value, hlc(n, node), node, base, 1.0)


@pytest.fixture
def tier(pg_dsn: str, pg_schema: str) -> Any:
    primary = PrimaryTier(pg_dsn, schema=pg_schema)
    primary.migrate()
    yield primary
    primary.close()


def state(pg: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    """Everything a replay could change on the primary."""
    q = f'"{schema}"'
    return {
        "records": pg.execute(
            f"SELECT collection, key, value::text, version, hlc, origin, stamp::text FROM {q}.records ORDER BY 1, 2"
        ).fetchall(),
        "conflicts": pg.execute(f"SELECT count(*) FROM {q}.conflicts").fetchone(),
        "audit": pg.execute(f"SELECT count(*) FROM {q}.audit_log").fetchone(),
    }


def test_no_ledger_row_per_write(tier: PrimaryTier, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    ops = [op(f"k{i}", f'{{"v":{i}}}', i, "n1") for i in range(200)]
    assert {o.outcome for o in tier.put_many(ops)} == {"applied"}
    assert tier.put_one(op("one", '"x"', 500, "n1")).outcome == "applied"
    q = f'"{pg_schema}"'
    assert pg.execute(f"SELECT count(*) FROM {q}.applied_ops").fetchone() == (0,)
    assert pg.execute(f"SELECT count(*) FROM {q}.settled_marks").fetchone() == (0,)


def test_duplicate_batch_changes_nothing(tier: PrimaryTier, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    # a batch with several ops of one key (one group), pushed, then pushed again as the node would after a crash
    batch = [
        op("a", '{"v":1}', 1, "n1"),
        op("b", '{"v":1}', 2, "n1"),
        op("a", '{"v":2}', 3, "n1"),
        op("a", None, 4, "n1"),
    ]
    first = tier.put_many(batch)
    assert [o.outcome for o in first] == ["applied"] * 4
    assert first[0].current is not None and first[0].current.version == 3  # three ops of "a": three versions
    before = state(pg, pg_schema)
    again = tier.put_many(batch)
    assert [o.outcome for o in again] == ["duplicate"] * 4
    assert again[0].current is not None and again[0].current.version == 3 and again[0].current.value_json is None
    assert [tier.put_one(o).outcome for o in batch] == ["duplicate"] * 4
    assert state(pg, pg_schema) == before


def test_batch_results_when_not_every_key_is_a_follow_up(tier: PrimaryTier, pg: psycopg.Connection[Any]) -> None:
    """The batch statement answers with one row (how many keys applied, the sum of their versions); when that does
    not settle every key — a key in conflict, a new key whose writer knew a version the primary no longer has — the
    rows the transaction wrote say which applied and at which version."""
    tier.put_one(op("taken", '"theirs"', 9, "n2"))
    batch = [op("fresh", '"a"', 1, "n1"), op("gone", '"b"', 2, "n1", base=3), op("taken", '"c"', 3, "n1", base=0)]
    outcomes = tier.put_many(batch)
    assert [(o.outcome, o.current and o.current.version) for o in outcomes] == [
        ("applied", 1),
        ("applied", 1),
        ("superseded", 1),
    ]
    assert outcomes[0].current is not None and outcomes[0].current.updated_at > 0


def test_replay_after_crash_with_new_ops_behind(tier: PrimaryTier, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    """The node pushed a batch, crashed before recording it, wrote more, and pushes the old ops with the new ones
    (the next batch starts again at the head of its outbox): the old ones are duplicates, the new ones apply on
    top, once."""
    old = [op("k", '{"v":1}', 1, "n1"), op("j", '{"v":1}', 2, "n1")]
    tier.put_many(old)
    new = [op("k", '{"v":2}', 3, "n1", base=0), op("m", '{"v":1}', 4, "n1")]
    outcomes = tier.put_many(old + new)
    assert [o.outcome for o in outcomes] == ["duplicate", "duplicate", "applied", "applied"]
    assert primary_rows(pg, pg_schema) == {"k": ({"v": 2}, 2), "j": ({"v": 1}, 1), "m": ({"v": 1}, 1)}


def test_out_of_order_batches(tier: PrimaryTier, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    """A node's later batch reached the primary before an earlier one was replayed (e.g. its journal was pushed
    while SQLite failed): the node's own newer write covers its older ones on that key, which change nothing."""
    early = [op("k", '{"v":1}', 1, "n1"), op("k", '{"v":2}', 2, "n1")]
    late = [op("k", '{"v":3}', 3, "n1"), op("x", '{"v":1}', 4, "n1")]
    assert [o.outcome for o in tier.put_many(late)] == ["applied", "applied"]
    before = state(pg, pg_schema)
    assert [o.outcome for o in tier.put_many(early)] == ["duplicate", "duplicate"]
    assert [o.outcome for o in tier.put_many(list(reversed(early)))] == ["duplicate", "duplicate"]
    assert state(pg, pg_schema) == before
    assert primary_rows(pg, pg_schema)["k"] == ({"v": 3}, 1)


def test_replay_after_another_node_overwrote(tier: PrimaryTier, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    """Under ``merge``, replaying an applied op that another node has since built upon would merge it again and
    bring back what that node removed: the primary marks the overwritten writer, so the replay is a duplicate."""
    mine = op("k", '{"a":1,"b":1}', 1, "n1")
    assert tier.put_one(mine, strategy="merge").outcome == "applied"
    theirs = op("k", '{"a":1}', 2, "n2", base=1)  # n2 saw n1's row and removed "b"
    assert tier.put_one(theirs, strategy="merge").outcome == "applied"
    marks = f'SELECT origin, hlc, outcome FROM "{pg_schema}".settled_marks'
    assert pg.execute(marks).fetchall() == [("n1", mine.hlc, "applied")]
    before = state(pg, pg_schema)
    replay = tier.put_many([mine, op("other", "1", 3, "n1")], strategies=["merge", "merge"], base_values=[None, None])
    assert replay[0].outcome == "duplicate" and replay[0].current is not None
    assert replay[0].current.value_json == '{"a": 1}'
    after = state(pg, pg_schema)
    assert after["records"][0] == before["records"][0] and after["conflicts"] == before["conflicts"]


def test_lost_ops_keep_their_outcome(tier: PrimaryTier) -> None:
    assert tier.put_one(op("k", '"winner"', 9, "n1")).outcome == "applied"
    loser = op("k", '"loser"', 5, "n2")
    assert tier.put_one(loser).outcome == "superseded"
    assert tier.put_one(loser).outcome == "duplicate"
    merge = op("m", '{"a":1}', 9, "n1")
    tier.put_one(merge, strategy="merge")
    conflicting = op("m", '{"b":1}', 10, "n2", base=0)
    assert tier.put_one(conflicting, strategy="merge").outcome == "conflict"
    # the node crashed before pushing its merge: the replay says conflict again, so it merges then
    assert tier.put_many([conflicting], strategies=["merge"])[0].outcome == "conflict"


def test_watermark_covers_what_was_pruned(tier: PrimaryTier, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    """A replay older than the retention still changes nothing: the marks are gone, the node's watermark says
    its ops below it were settled."""
    q = f'"{pg_schema}"'
    mine = op("k", '{"a":1,"b":1}', 1, "n1")
    tier.put_one(mine, strategy="merge")
    tier.put_one(op("k", '{"a":1}', 2, "n2", base=1), strategy="merge")  # marks n1
    dead = op("d", '"rejected long ago"', 4, "n1")  # never applied (it was dead-lettered), not even a mark
    assert pg.execute(f"SELECT count(*) FROM {q}.settled_marks").fetchone() == (1,)
    # the marks age past the retention: they are pruned although no watermark covers them yet
    pg.execute(f"UPDATE {q}.settled_marks SET marked_at = now() - interval '31 days'")
    done = tier.prune(ledger_days=30, conflict_days=90, audit_days=365, limit=1000)
    assert done["settled_marks_expired"] == 1
    # the node reports its watermark (its outbox is empty; everything up to now-SAFETY is settled)
    tier.report_settled("n1", hlc(10, "n1"))
    before = state(pg, pg_schema)
    replays = tier.put_many([mine, dead], strategies=["merge", "last_wins"], base_values=[None, None])
    assert [o.outcome for o in replays] == ["duplicate", "duplicate"]
    assert tier.put_one(dead).outcome == "duplicate"
    assert state(pg, pg_schema) == before, "nothing changed: no merge, no conflict logged, no key created"
    # the watermark only moves forward; ops above it still apply
    tier.report_settled("n1", hlc(5, "n1"))
    assert tier.put_one(op("z", '"new"', 11, "n1")).outcome == "applied"


def test_prune_drops_covered_marks_and_old_history(
    tier: PrimaryTier, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    q = f'"{pg_schema}"'
    tier.put_one(op("k", '"a"', 1, "n1"))
    tier.put_one(op("k", '"b"', 2, "n2", base=1))  # marks n1 (overwritten)
    tier.put_one(op("k", '"c"', 1, "n3"))  # loses: superseded, a mark for n3, a resolved conflict and its audit entry
    tier.put_one(op("m", '"x"', 1, "n1"), strategy="manual")
    tier.put_one(op("m", '"y"', 2, "n3", base=0), strategy="manual")  # an open conflict: never pruned
    assert pg.execute(f"SELECT origin FROM {q}.settled_marks ORDER BY 1").fetchall() == [("n1",), ("n3",), ("n3",)]
    tier.report_settled("n1", hlc(2, "n1"))
    done = tier.prune(ledger_days=30, conflict_days=90, audit_days=365, limit=1000)
    assert done["settled_marks_covered"] == 1 and done["conflicts"] == 0
    pg.execute(
        f"UPDATE {q}.conflicts SET resolved_at = now() - interval '100 days', created_at = now() - interval '100 days'"
    )
    pg.execute(f"UPDATE {q}.audit_log SET at = now() - interval '400 days'")
    done = tier.prune(ledger_days=30, conflict_days=90, audit_days=365, limit=1000)
    assert (done["conflicts"], done["audit_log"]) == (1, 2)
    assert pg.execute(f"SELECT status FROM {q}.conflicts").fetchall() == [("open",)]
    assert tier.conflict_counts() == {"manual": {"open": 1}}


def test_conflict_counts_follow_the_log(tier: PrimaryTier, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    tier.put_one(op("k", '"a"', 5, "n1"))
    for i in range(3):
        tier.put_one(op("k", f'"old{i}"', i, f"m{i}"))  # each loses under last_wins: a resolved conflict
    tier.put_one(op("m", '"x"', 1, "n1"), strategy="manual")
    tier.put_one(op("m", '"y"', 2, "n3", base=0), strategy="manual")
    assert tier.conflict_counts() == {"last_wins": {"resolved": 3}, "manual": {"open": 1}}
    (conflict_id,) = pg.execute(f'SELECT id FROM "{pg_schema}".conflicts WHERE status = %s', ("open",)).fetchone()
    assert tier.close_conflict(conflict_id, resolution={"winner": "local"}, actor="admin")
    assert tier.conflict_counts() == {"last_wins": {"resolved": 3}, "manual": {"resolved": 1}}
    counts = f'SELECT count(*) FROM "{pg_schema}".conflict_counts'
    assert pg.execute(counts).fetchone() == (6,), "+1 per conflict logged, -1 +1 for the one resolved"
    tier.compact_counts()
    assert pg.execute(counts).fetchone() == (2,), "folded: one row per (strategy, status) left"
    assert tier.conflict_counts() == {"last_wins": {"resolved": 3}, "manual": {"resolved": 1}}


def test_settled_watermark_is_below_everything_pending() -> None:
    wall = 1_700_000_000.0 + 2 * SAFETY  # hlc(0) is older than wall - SAFETY
    floor = f"{int((wall - SAFETY) * 1000):012x}.000000.n1"
    assert settled_watermark(None, None, wall, "n1") == floor
    old = hlc(0, "n1")
    assert settled_watermark(None, old, wall, "n1") == old
    assert settled_watermark(hlc(-1, "n1"), old, wall, "n1") == hlc(-1, "n1")


def test_housekeeper_reports_and_prunes_on_schedule(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    clock = FakeClock()
    store = make_store("a", write_mode="local_first", background=False, time=clock.source())
    keeper = store.node.replayer.housekeeper
    assert isinstance(keeper, Housekeeper)
    keeper.retention = Retention(report_interval=60, prune_interval=3600)
    store.set("c", "k", 1)
    queued = store.node.slot.tier.pending_ops(1)[0][1]  # type: ignore[union-attr]
    mark = keeper.watermark()
    assert mark is not None and mark < queued.hlc, "a recent op is never covered (SAFETY)"
    keeper._wall = lambda: time.time() + 2 * SAFETY  # later: the op is old now, but still queued
    assert keeper.watermark() == queued.hlc, "below the op still queued"
    store.sync_now()
    assert not keeper.due(), "nothing at start-up"
    clock.advance(3600)
    assert keeper.due()
    keeper.run()
    reported = pg.execute(f'SELECT settled FROM "{pg_schema}".node_settled WHERE origin = %s', (keeper.node_id,))
    settled = reported.fetchone()
    assert settled is not None and settled[0] > queued.hlc and keeper.last_reported == settled[0]
    assert set(keeper.last_pruned) == {
        "settled_marks_covered",
        "settled_marks_expired",
        "applied_ops",
        "conflicts",
        "audit_log",
    }
    assert not keeper.due()
    clock.advance(61)
    assert keeper.due()
    keeper.last_pruned = {}
    keeper.run()
    assert keeper.last_reported is not None and keeper.last_reported > settled[0], "reported again"
    assert keeper.last_pruned == {}, "the next prune is due in an hour"
    # a replay of the pushed op is a duplicate by the watermark alone
    assert store.node.gateway.tier.put_one(queued).outcome == "duplicate"  # type: ignore[union-attr]
