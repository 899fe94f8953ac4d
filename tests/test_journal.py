"""The journal: last resort when SQLite itself fails; replayed into SQLite when it works again."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore import StorageExhaustedError
from hybridstore.compose import JOURNAL_FILE, LOCAL_DB

from .faults import corrupt_pages, fill_sqlite, free_sqlite, garbage_file, wait_for
from .fix_db import StoreFactory, primary_rows

pytestmark = pytest.mark.resilience


def test_full_sqlite_mid_run_goes_to_journal_and_replays(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    store = make_store(write_mode="local_first", background=False)
    values = {f"k{i:04d}": {"i": i, "pad": "p" * 2000} for i in range(300)}
    keys = list(values)
    tiers = [store.set("c", k, values[k]).tier for k in keys[:50]]
    fill_sqlite(store)
    tiers += [store.set("c", k, values[k]).tier for k in keys[50:]]
    store.delete("c", "k0001")
    assert tiers[:50] == ["local"] * 50
    assert tiers.count("journal") > 200, "once SQLite fails, writes go to the journal"
    assert "journal" in tiers[50:100]
    h = store.health()
    assert h["local"]["state"] != "healthy" and h["journal"]["entries"] > 200
    # reads see journaled writes, including the delete
    rec = store.get("c", "k0299")
    assert rec is not None and rec.source == "journal" and rec.value == values["k0299"]
    assert store.get("c", "k0001") is None
    listed = [r.key for r in store.list("c", limit=1000)]
    assert listed == [k for k in keys if k != "k0001"]
    assert store.sync_now().journal_replayed == 0, "SQLite still full: nothing replayed, nothing lost"

    free_sqlite(store)
    report = store.sync_now()
    assert report.journal_replayed > 200 and report.remaining == 0
    assert len(store.node.journal) == 0 and (store.data_dir / JOURNAL_FILE).read_bytes() == b""
    rows = primary_rows(pg, pg_schema)
    assert set(rows) == set(keys) - {"k0001"}
    assert all(rows[k] == (values[k], 1) for k in rows)
    h = store.health()
    assert h["local"]["state"] == "healthy" and h["outbox"]["depth"] == 0
    assert store.set("c", "after", 1).tier == "local", "back to normal routing (local_first mode)"


def test_journal_is_replayed_at_open(tmp_path: Path) -> None:
    store = hybridstore.open(data_dir=tmp_path / "d")
    store.set("c", "before", 0)
    fill_sqlite(store)
    for i in range(20):
        assert store.set("c", f"k{i}", "x" * 3000).tier in ("local", "journal")
    assert len(store.node.journal) > 0
    store.close()
    with hybridstore.open(data_dir=tmp_path / "d") as again:
        assert len(again.node.journal) == 0
        for i in range(20):
            rec = again.get("c", f"k{i}")
            assert rec is not None and rec.source == "local" and rec.value == "x" * 3000
        assert again.health()["outbox"]["depth"] == 21


def test_background_replay_when_sqlite_recovers(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "d") as store:
        store.set("c", "k0", 0)
        fill_sqlite(store)
        for i in range(1, 30):
            store.set("c", f"k{i}", "y" * 3000)
        assert len(store.node.journal) > 0
        free_sqlite(store)
        wait_for(lambda: len(store.node.journal) == 0)
        assert all(store.get("c", f"k{i}") is not None for i in range(30))


def test_corrupt_sqlite_at_open_runs_on_journal(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with hybridstore.open(data_dir=data) as store:
        store.set("c", "old", 1)
    (data / LOCAL_DB).write_bytes(b"this is not a database" * 500)
    for suffix in ("-wal", "-shm"):
        (data / (LOCAL_DB + suffix)).unlink(missing_ok=True)
    with hybridstore.open(data_dir=data, auto_recover=False) as store:  # the manual procedure
        assert store.node.slot.tier is None
        assert store.health()["local"]["state"] == "down"
        r = store.set("c", "new", 2)
        assert r.tier == "journal" and r.queued
        rec = store.get("c", "new")
        assert rec is not None and rec.value == 2 and rec.source == "journal"
    # the administrator (or the recovery service) moves the broken file aside; nothing journaled is lost
    shutil.move(data / LOCAL_DB, data / "local.db.corrupt")
    with hybridstore.open(data_dir=data) as store:
        rec = store.get("c", "new")
        assert rec is not None and rec.value == 2 and rec.source == "local"
        assert len(store.node.journal) == 0


def test_every_tier_failing_acknowledges_nothing(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "d") as store:
        fill_sqlite(store)
        journal = store.data_dir / JOURNAL_FILE
        journal.unlink(missing_ok=True)
        journal.mkdir()  # appends now fail with a real OSError
        with pytest.raises(StorageExhaustedError, match="NOT saved"):
            for i in range(100):
                store.set("c", f"k{i}", "z" * 3000)
        assert store.get("c", f"k{i}") is None
        assert isinstance(StorageExhaustedError("x"), hybridstore.UnavailableError)


def test_torn_and_damaged_journal_lines(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with hybridstore.open(data_dir=data) as store:
        fill_sqlite(store)
        for i in range(10):
            store.set("c", f"k{i}", "w" * 3000)
        journaled = len(store.node.journal)
    assert journaled > 3
    path = data / JOURNAL_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    damaged = bytearray(lines[1])
    damaged[20] ^= 0x01
    lines[1] = bytes(damaged)
    path.write_bytes(b"".join(lines) + b'0badc0de {"op_id": "torn')  # a crash mid-append
    from hybridstore.tiers.journal import JournalTier

    j = JournalTier(path)
    assert len(j) == journaled - 1 and j.damaged_lines == 1
    assert j.health().state == "degraded"
    assert path.read_bytes().endswith(b"\n"), "the torn tail was cut off"


def test_journal_reaches_primary_while_sqlite_is_broken(
    tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]
) -> None:
    from .fix_proxy import Proxy

    data = garbage_file(tmp_path / "d" / LOCAL_DB).parent
    proxy = Proxy("127.0.0.1", 5432)
    try:
        proxy.cut()
        with hybridstore.open(
            proxy.url(pg_dsn), data_dir=data, primary_schema=pg_schema, primary_timeout=1.0, auto_recover=False
        ) as store:
            assert store.node.slot.tier is None
            tiers = [store.set("c", f"k{i}", i).tier for i in range(10)]
            assert set(tiers) == {"journal"}, "primary down and SQLite corrupt: the journal takes the writes"
            proxy.restore()

            def all_on_primary() -> bool:
                try:
                    return len(primary_rows(pg, pg_schema)) == 10
                except psycopg.errors.UndefinedTable:
                    return False  # not even migrated yet

            wait_for(all_on_primary)
            assert primary_rows(pg, pg_schema)["k7"] == (7, 1)
            assert len(store.node.journal) == 10, "kept until SQLite can take them"
            rec = store.get("c", "k3")
            assert rec is not None and rec.value == 3
    finally:
        proxy.close()


def test_write_through_needs_no_sqlite(
    tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]
) -> None:
    data = garbage_file(tmp_path / "d" / LOCAL_DB).parent
    with hybridstore.open(pg_dsn, data_dir=data, primary_schema=pg_schema) as store:
        r = store.set("c", "k", {"ok": True})
        assert r.tier == "primary" and not r.queued
        rec = store.get("c", "k")
        assert rec is not None and rec.source == "primary"
    assert primary_rows(pg, pg_schema) == {"k": ({"ok": True}, 1)}


def test_sqlite_corrupted_mid_run(tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]) -> None:
    from .fix_proxy import Proxy

    proxy = Proxy("127.0.0.1", 5432)
    try:
        with hybridstore.open(
            proxy.url(pg_dsn), data_dir=tmp_path / "d", primary_schema=pg_schema, primary_timeout=1.0, pull=False
        ) as store:
            acked = {f"before{i:04d}": i for i in range(1500)}
            for key, i in acked.items():
                assert store.set("c", key, {"i": i, "pad": "p" * 1000}).tier == "primary"
            assert store.node.slot.tier is not None
            with store.node.slot.tier._lock:
                store.node.slot.tier._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            corrupt_pages(store.data_dir / LOCAL_DB, 0.2, seed=5)  # while the store is open
            proxy.cut()
            # Update existing keys: their pages are spread over the file, so SQLite soon reads a damaged one.
            rng = random.Random(9)
            updates = {k: 0 for k in acked}
            tiers = []
            for n in range(100):
                key = f"before{rng.randrange(1500):04d}"
                tiers.append(store.set("c", key, {"i": 10_000 + n, "pad": ""}).tier)
                acked[key] = 10_000 + n
                updates[key] += 1
            assert tiers.count("journal") >= 90, "once SQLite reports corruption, writes go to the journal"
            # the recovery service sees the damage (its rebuild waits for the primary)
            recovery = store.recovery
            wait_for(lambda: recovery.last_rebuild is not None or recovery.book.is_active("local_corruption"))
            last_key = key
            rec = store.get("c", last_key)
            assert rec is not None and rec.value["i"] == acked[last_key]
            # The journal holds it, or the rebuilt file does: with the primary cut off the store may rebuild from
            # its emergency backup, and the rebuild replays the journal into the new file.
            assert rec.source in ("journal", "local")
            proxy.restore()

            def all_on_primary() -> bool:
                rows = primary_rows(pg, pg_schema)
                return all(rows[k][0]["i"] == i for k, i in acked.items())

            wait_for(all_on_primary, timeout=60)
            rows = primary_rows(pg, pg_schema)
            assert all(rows[k][1] == 1 + updates[k] for k in acked), "each write applied exactly once"
    finally:
        proxy.close()
