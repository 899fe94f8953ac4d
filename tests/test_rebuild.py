"""Corrupt or unreadable local SQLite: detected, rebuilt from the primary (or salvaged), every acknowledged write
still there, the broken file kept aside. Faults are real: bytes overwritten on disk, files truncated or deleted."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore.compose import LOCAL_DB
from hybridstore.node.timing import FakeClock
from hybridstore.recovery.probes import quick_check

from .faults import fill_sqlite, garble_pages, table_pages, wait_for
from .fix_db import StoreFactory, primary_rows
from .fix_proxy import Proxy
from .fix_webhook import Receiver

pytestmark = pytest.mark.resilience


def checkpoint(store: Any) -> None:
    with store.node.slot.tier._lock:
        store.node.slot.tier._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def rebuilt(store: Any, timeout: float = 30.0, outcome: str = "succeeded") -> dict[str, Any]:
    """Wait for the rebuild event and return its report."""

    def done() -> bool:
        return any(e["strategy"] == "rebuild_local" and e["outcome"] != "running" for e in store.recovery.events())

    wait_for(done, timeout=timeout)
    event = next(e for e in store.recovery.events() if e["strategy"] == "rebuild_local")
    assert event["outcome"] == outcome, event
    return dict(event["details"]["report"])


def broken_files(data: Path) -> list[Path]:
    return sorted((data / "broken").glob("local-*.db"))


def assert_all_there(store: Any, acked: dict[str, int]) -> None:
    for key, i in acked.items():
        rec = store.get("c", key)
        assert rec is not None and rec.value == {"i": i}, f"acknowledged write {key} lost"


def writes(store: Any, keys: range, prefix: str, acked: dict[str, int], offset: int = 0) -> list[str]:
    tiers = []
    for i in keys:
        tiers.append(store.set("c", f"{prefix}{i:04d}", {"i": i + offset}).tier)
        acked[f"{prefix}{i:04d}"] = i + offset
    return tiers


@pytest.mark.parametrize("damaged", ["records", "outbox"])
def test_garbage_in_pages_while_closed(
    tmp_path: Path,
    proxy: Proxy,
    proxied_dsn: str,
    pg_schema: str,
    pg: psycopg.Connection[Any],
    webhook: Receiver,
    damaged: str,
) -> None:
    data = tmp_path / "d"
    acked: dict[str, int] = {}
    opts: dict[str, Any] = {"data_dir": data, "primary_schema": pg_schema, "primary_timeout": 1.0}
    with hybridstore.open(proxied_dsn, **opts) as store:
        assert set(writes(store, range(400), "p", acked)) == {"primary"}
        proxy.cut()
        wait_for(
            lambda: store.node.gateway.circuit.state != "closed" or store.set("c", "probe", {"i": -1}).tier == "local"
        )
        acked.pop("probe", None)
        assert set(writes(store, range(300), "q", acked)) == {"local"}  # queued: only in this node's outbox
        assert store.health()["outbox"]["depth"] >= 300
    db = data / LOCAL_DB
    pages = table_pages(db, damaged)
    garble_pages(db, random.Random(3).sample(pages, max(2, len(pages) // 3)), seed=11)
    assert quick_check(db) != ["ok"]
    proxy.restore()

    with hybridstore.open(proxied_dsn, alert_webhook_url=webhook.url, read_policy="local_first", **opts) as store:
        report = rebuilt(store)
        assert report["source"] == "primary" and report["unrecovered"] == []
        assert report["records_from_source"] >= 400
        if damaged == "outbox":
            assert report["recovered_from_records"] > 0, "queued values recovered from their records"
        assert_all_there(store, acked)
        wait_for(lambda: store.health()["outbox"]["depth"] == 0)
        rows = primary_rows(pg, pg_schema)
        assert all(rows[k] == ({"i": i}, 1) for k, i in acked.items()), "each write on the primary exactly once"
        corruption = [a for a in store.recovery.alerts() if a.kind == "local_corruption"]
        assert len(corruption) == 1 and corruption[0].resolved_at is not None
        wait_for(lambda: not store.recovery.alerts(active=True))
        local = store.recovery.get_health_status()["components"]["local"]
        assert local["state"] == "healthy" and local["quick_check"]["ok"]
    kept = broken_files(data)
    assert len(kept) == 1 and quick_check(kept[0]) != ["ok"], "the broken file is kept, as found"
    assert quick_check(db) == ["ok"]
    assert webhook.events("local_corruption") == [("raised", "local_corruption"), ("resolved", "local_corruption")]


def test_truncated_file_with_journaled_writes(
    make_store: StoreFactory, tmp_path: Path, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    acked: dict[str, int] = {}
    store = make_store("n", quick_check_interval=3600)
    writes(store, range(300), "p", acked)
    fill_sqlite(store)  # SQLite full, primary cut off by the circuit: writes too big for a free page are journaled
    store.node.gateway.circuit.trip()
    journaled = {f"j{i:04d}": {"i": i, "pad": "x" * 5000} for i in range(100)}
    assert {store.set("c", k, v).tier for k, v in journaled.items()} == {"journal"}
    store.close()
    db = tmp_path / "n" / LOCAL_DB
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 3)
    store = make_store("n")
    # Not even the schema is readable: the outbox cannot be listed, so the report cannot promise it was empty.
    report = rebuilt(store, outcome="failed")
    assert report["journal_replayed"] == 100 and report["records_from_source"] >= 300
    assert [u["seq"] for u in report["unrecovered"]] == [None]
    manual = [a for a in store.recovery.alerts(active=True) if a.kind == "manual_intervention"]
    assert len(manual) == 1 and "could not be recovered" in manual[0].message and "broken" in manual[0].message
    assert_all_there(store, acked)
    assert all(store.get("c", k).value == v for k, v in journaled.items())  # type: ignore[union-attr]
    wait_for(lambda: store.health()["outbox"]["depth"] == 0)
    assert len(primary_rows(pg, pg_schema)) == 400
    assert len(broken_files(tmp_path / "n")) == 1


def test_wal_deleted_after_a_crash(make_store: StoreFactory, tmp_path: Path) -> None:
    acked: dict[str, int] = {}
    store = make_store("live")
    writes(store, range(200), "p", acked)
    checkpoint(store)
    writes(store, range(200, 400), "p", acked)  # their local copies are only in the write-ahead log
    image = tmp_path / "image"  # what a crash right now leaves on disk
    image.mkdir()
    for name in ("node_id", LOCAL_DB, LOCAL_DB + "-wal", LOCAL_DB + "-shm"):
        shutil.copyfile(tmp_path / "live" / name, image / name)
    store.close()
    (image / (LOCAL_DB + "-wal")).unlink()

    store = make_store("image", read_policy="local_first")
    report = rebuilt(store)
    assert report["reason"] == "write-ahead log deleted after a crash"
    assert report["records_from_source"] == 400
    for key, i in acked.items():
        rec = store.get("c", key)
        assert rec is not None and rec.value == {"i": i} and rec.source == "local"
    assert len(broken_files(tmp_path / "image")) == 1


def test_wal_deleted_while_running_primary_down_then_back(
    make_store: StoreFactory, proxy: Proxy, proxied_dsn: str, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    acked: dict[str, int] = {}
    store = make_store(primary=proxied_dsn, primary_timeout=1.0, backups=False)  # no backup to rebuild from
    writes(store, range(100), "p", acked)
    proxy.cut()
    wait_for(lambda: store.recovery.book.is_active("primary_outage"))
    assert set(writes(store, range(100), "q", acked)) == {"local"}
    (store.data_dir / (LOCAL_DB + "-wal")).unlink()
    wait_for(lambda: store.recovery.book.is_active("manual_intervention"))
    manual = next(a for a in store.recovery.alerts() if a.kind == "manual_intervention")
    assert "primary is unreachable" in manual.message and "journal" in manual.message
    assert store.recovery.get_health_status(refresh=True)["components"]["local"]["state"] == "down"
    tiers = writes(store, range(100, 150), "q", acked)
    assert set(tiers) == {"journal"}, "nothing new goes into a file that awaits a rebuild"
    proxy.restore()
    report = rebuilt(store)
    assert report["source"] == "primary" and report["unrecovered"] == []
    assert_all_there(store, acked)
    wait_for(lambda: store.health()["outbox"]["depth"] == 0)
    rows = primary_rows(pg, pg_schema)
    assert all(rows[k] == ({"i": i}, 1) for k, i in acked.items())
    active = [a.kind for a in store.recovery.alerts(active=True)]
    wait_for(lambda: not store.recovery.alerts(active=True)), active
    kinds = sorted(a.kind for a in store.recovery.alerts())
    assert kinds == ["local_corruption", "manual_intervention", "primary_outage"]


def test_garbage_while_running_rebuilt_at_once(make_store: StoreFactory, tmp_path: Path) -> None:
    """On a fake clock at the monitor's pace: the damage is found by the next scheduled integrity check, within
    ``quick_check_interval`` of monitor time, and rebuilt in that same check."""
    clock = FakeClock()
    acked: dict[str, int] = {}
    store = make_store(quick_check_interval=0.5, read_policy="local_first", background=False, time=clock.source())
    writes(store, range(1000), "p", acked)
    checkpoint(store)
    store.recovery.check()  # the first integrity check: a sound file
    assert store.recovery.get_health_status()["components"]["local"]["quick_check"]["ok"]
    db = store.data_dir / LOCAL_DB
    pages = table_pages(db, "records")
    started, garbled_at = time.monotonic(), clock.monotonic()
    garble_pages(db, random.Random(5).sample(pages, len(pages) // 4), seed=2)
    for _ in range(8):
        clock.advance(0.25)
        store.recovery.check()
        if any(e["strategy"] == "rebuild_local" for e in store.recovery.events()):
            break
    assert clock.monotonic() - garbled_at <= store.recovery.thresholds.quick_check_interval
    report = rebuilt(store)
    assert time.monotonic() - started < 20
    assert report["records_from_source"] == 1000
    assert_all_there(store, acked)
    assert all(store.get("c", k).source == "local" for k in list(acked)[:50])  # type: ignore[union-attr]
    writes(store, range(1000, 1010), "p", acked)
    assert_all_there(store, acked)


def test_embedded_store_rebuilds_from_salvage(tmp_path: Path) -> None:
    data = tmp_path / "d"
    acked: dict[str, int] = {}
    with hybridstore.open(data_dir=data, backups=False) as store:  # the salvage path: no backup exists
        writes(store, range(500), "e", acked)
    db = data / LOCAL_DB
    pages = table_pages(db, "records")
    garble_pages(db, random.Random(1).sample(pages, len(pages) // 3), seed=4)
    with hybridstore.open(data_dir=data, backups=False) as store:
        report = rebuilt(store)
        assert report["source"] == "salvage only" and report["unrecovered"] == []
        assert report["requeued"] == 500, "every write was still in the outbox"
        assert_all_there(store, acked)
        assert store.health()["outbox"]["depth"] == 500, "still queued for the day a primary is configured"
