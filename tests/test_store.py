"""The public API over the real tiers: embedded mode, write-through, queueing, sync, reads and listing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

import hybridstore
from hybridstore.model import Op

from .faults import wait_for, wall_clock_past
from .fix_db import StoreFactory, primary_rows


def test_embedded_round_trip_and_persistence(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "d") as store:
        r = store.set("products", "p1", {"name": "Shoe", "price": 10})
        assert (r.tier, r.queued, r.version) == ("local", True, 0)
        store.set("products", "p2", {"name": "Hat"})
        store.delete("products", "p2")
        node = store.node_id
        h = store.health()
        assert h["primary"]["state"] == "disabled"
        assert h["outbox"]["depth"] == 2, "embedded: one queued op per key (p2's delete replaced its set)"
        assert h["outbox"]["oldest_pending_age_s"] is not None
    with hybridstore.open(data_dir=tmp_path / "d") as store:
        assert store.node_id == node, "node id is generated once and kept"
        rec = store.get("products", "p1")
        assert rec is not None and rec.value == {"name": "Shoe", "price": 10}
        assert rec.source == "local" and rec.pending and rec.version == 0
        assert store.get("products", "p2") is None
        assert [r.key for r in store.list("products")] == ["p1"]
        report = store.sync_now()
        assert report.remaining == 2 and report.pushed == 0


def test_list_pages_with_cursor(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "d") as store:
        for i in range(25):
            store.set("c", f"k{i:03d}", i)
        store.set("other", "k000", "x")
        seen: list[str] = []
        after = None
        while True:
            page = store.list("c", limit=10, after=after)
            seen += [r.key for r in page]
            if page.next_after is None:
                break
            after = page.next_after
        assert seen == [f"k{i:03d}" for i in range(25)]
        assert [r.key for r in store.list("c", prefix="k01")] == [f"k{i:03d}" for i in range(10, 20)]


def test_write_through(make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    store = make_store()
    r1 = store.set("products", "p1", {"v": 1})
    r2 = store.set("products", "p1", {"v": 2})
    assert (r1.tier, r1.queued, r1.version) == ("primary", False, 1)
    assert (r2.tier, r2.version) == ("primary", 2)
    assert primary_rows(pg, pg_schema) == {"p1": ({"v": 2}, 2)}
    rec = store.get("products", "p1")
    assert rec is not None and rec.source == "primary" and rec.value == {"v": 2} and not rec.pending
    d = store.delete("products", "p1")
    assert d.tier == "primary" and d.version == 3
    assert store.get("products", "p1") is None
    assert primary_rows(pg, pg_schema) == {}
    (deleted,) = pg.execute(f'SELECT value IS NULL FROM "{pg_schema}".records WHERE key = %s', ("p1",)).fetchone()
    assert deleted, "a delete is a tombstone on the primary"
    assert store.health()["outbox"]["depth"] == 0


def test_embedded_writes_reach_primary_later(
    tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]
) -> None:
    with hybridstore.open(data_dir=tmp_path / "d") as store:
        for i in range(300):
            store.set("orders", f"o{i}", {"n": i})
        store.delete("orders", "o0")
    with hybridstore.open(pg_dsn, data_dir=tmp_path / "d", primary_schema=pg_schema, background=False) as store:
        report = store.sync_now()
        # 300 keys, one queued op each: o0's delete replaced its set while embedded
        assert (report.pushed, report.failed, report.remaining) == (300, 0, 0)
        rows = primary_rows(pg, pg_schema)
        assert len(rows) == 299 and rows["o5"] == ({"n": 5}, 1)
        rec = store.get("orders", "o7")
        assert rec is not None and rec.version == 1 and not rec.pending
        local = store.node.slot.tier
        assert local is not None
        local_row = local.get("orders", "o7")
        assert local_row is not None and local_row.synced_at is not None and local_row.version == 1


def test_replay_is_idempotent(make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    store = make_store(write_mode="local_first", background=False)
    for i in range(50):
        store.set("c", f"k{i}", i)
    assert store.node.slot.tier is not None and store.node.gateway.configured
    ops: list[Op] = [op for _, op, _ in store.node.slot.tier.pending_ops(1000)]
    assert store.sync_now().pushed == 50
    again = store.node.gateway.tier.put_many(ops)
    assert {o.outcome for o in again} == {"duplicate"}
    assert store.node.gateway.tier.put_one(ops[3]).outcome == "duplicate"
    rows = primary_rows(pg, pg_schema)
    assert len(rows) == 50 and all(version == 1 for _, version in rows.values()), "each op applied exactly once"
    # no ledger row per op: the record rows themselves settle the replays
    (ledger,) = pg.execute(f'SELECT count(*) FROM "{pg_schema}".applied_ops').fetchone()
    (marks,) = pg.execute(f'SELECT count(*) FROM "{pg_schema}".settled_marks').fetchone()
    assert ledger == marks == 0


def test_per_key_order_and_versions(make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    store = make_store(write_mode="local_first", background=False, batch_size=7, coalesce=False)  # every op pushed
    for i in range(40):
        store.set("c", "hot", i)
        store.set("c", f"cold{i}", i)
    report = store.sync_now()
    assert report.pushed == 80 and report.remaining == 0
    rows = primary_rows(pg, pg_schema)
    assert rows["hot"] == (39, 40), "last value wins, one version per accepted write"
    rec = store.get("c", "hot")
    assert rec is not None and rec.value == 39 and rec.version == 40


def test_read_your_writes_and_policies(make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    a = make_store("a")
    a.set("c", "k", "from-a")
    b = make_store("b", write_mode="local_first", background=False)
    b.set("c", "k", "b-pending")
    rec = b.get("c", "k")
    assert rec is not None and rec.value == "b-pending" and rec.source == "local" and rec.pending
    page = b.list("c")
    assert [(r.key, r.value, r.source) for r in page] == [("k", "b-pending", "local")]
    assert primary_rows(pg, pg_schema)["k"] == ("from-a", 1)
    c = make_store("c", read_policy="local_first", pull=False)  # no change feed: only its own writes are local
    assert c.get("c", "k") is None, "local_first reads never ask the primary"
    c.set("c", "k2", 1)
    rec = c.get("c", "k2")
    assert rec is not None and rec.source == "local" and rec.version == 1 and not rec.pending


def test_list_overlays_pending_on_primary(make_store: StoreFactory) -> None:
    a = make_store("a")
    for k in ("a1", "a2", "a3", "a5"):
        a.set("c", k, k)
    b = make_store("b", write_mode="local_first", background=False)
    b.get("c", "a2")  # b learns a2 from the primary
    b.delete("c", "a2")
    b.set("c", "a4", "pending")
    page = b.list("c", limit=3)
    assert [r.key for r in page] == ["a1", "a3", "a4"]
    assert page.next_after == "a4"
    assert [r.key for r in b.list("c", limit=3, after=page.next_after)] == ["a5"]
    sources = {r.key: r.source for r in b.list("c")}
    assert sources == {"a1": "primary", "a3": "primary", "a4": "local", "a5": "primary"}


def test_last_writer_wins_between_nodes(make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    a = make_store("a", write_mode="local_first", background=False, node_id="node-a")
    b = make_store("b", write_mode="local_first", background=False, node_id="node-b")
    first = a.set("c", "k", "a-first")
    wall_clock_past(first.hlc)
    assert b.set("c", "k", "b-later").hlc > first.hlc  # a later millisecond: the later HLC
    a.set("c", "only-a", 1)
    assert b.sync_now().pushed == 1
    report = a.sync_now()
    assert report.superseded == 1 and report.pushed == 1
    assert primary_rows(pg, pg_schema)["k"] == ("b-later", 1)
    rec = a.get("c", "k")
    assert rec is not None and rec.value == "b-later", "the loser adopts the winner"
    # a's next write is ordered after b's (its clock observed b's stamp) and is not a conflict
    a.set("c", "k", "a-again")
    a.sync_now()
    assert primary_rows(pg, pg_schema)["k"] == ("a-again", 2)


def test_background_replayer_drains_by_itself(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    store = make_store(write_mode="local_first")
    for i in range(200):
        store.set("c", f"k{i}", i)
    wait_for(lambda: store.health()["outbox"]["depth"] == 0)
    assert len(primary_rows(pg, pg_schema)) == 200


def test_pooler_mode_works_end_to_end(make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    """primary_pooled=True: no server-side prepared statements, no startup options (PgBouncer / Supabase pooler)."""
    store = make_store(primary_pooled=True)
    for i in range(12):  # more than psycopg's prepare threshold
        assert store.set("c", f"k{i}", i).tier == "primary"
    assert store.get("c", "k3") is not None
    assert primary_rows(pg, pg_schema)["k11"] == (11, 1)
    assert store.node.gateway.configured
    with store.node.gateway.tier._pool.connection() as conn:  # the store's own session, which ran the writes above
        assert conn.prepare_threshold is None
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
