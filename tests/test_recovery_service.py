"""The recovery service's lifecycle and hooks: rebuild from a registered backup source while the primary is
down, the log level from the environment, the monitor thread stopping with the store, events kept."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import hybridstore
from hybridstore import BackupTamperedError, ConfigError
from hybridstore.compose import LOCAL_DB
from hybridstore.config import apply_log_level
from hybridstore.model import StoredRow
from hybridstore.node.timing import FakeClock
from hybridstore.recovery.service import SUSPECT_INTERVAL

from .faults import garble_pages, table_pages, wait_for
from .fix_db import StoreFactory
from .fix_proxy import Proxy

pytestmark = pytest.mark.resilience


def rebuild_event(store: Any) -> dict[str, Any] | None:
    return next((e for e in store.recovery.events() if e["strategy"] == "rebuild_local"), None)


def test_rebuild_from_backup_while_primary_is_down(
    make_store: StoreFactory, tmp_path: Path, proxy: Proxy, proxied_dsn: str
) -> None:
    first = make_store(primary=proxied_dsn, backups=False)  # the only backup is the one the test registers
    for i in range(300):
        assert first.set("c", f"p{i:03d}", {"i": i}).tier == "primary"
    first.close()
    db = tmp_path / "node" / LOCAL_DB
    garble_pages(db, table_pages(db, "records")[1:], seed=1)
    proxy.cut()
    backup: list[StoredRow | tuple[str, str, object]]
    backup = [StoredRow("c", f"b{i:03d}", f'{{"i": {i}}}', 3, f"{i:012x}.0000.old", "old", 1.0) for i in range(50)]
    backup += [("c", f"t{i:03d}", {"t": i}) for i in range(10)]  # rows with no version or clock of their own
    asked = threading.Event()

    def newest_verified_backup() -> list[StoredRow | tuple[str, str, object]] | None:
        asked.set()
        return backup

    # Driven by hand on a fake clock: the monitor's first check runs after the prober's first probe, as it must.
    clock = FakeClock()
    store = make_store(primary=proxied_dsn, primary_timeout=1.0, background=False, time=clock.source())
    store.recovery.check()
    assert store.recovery.book.is_active("manual_intervention")  # no primary, no backup yet
    assert rebuild_event(store) is None, "nothing to rebuild from: no attempt"
    assert store.set("c", "during", {"x": 1}).tier == "journal"
    store.recovery.register_backup_source(newest_verified_backup)
    clock.advance(SUSPECT_INTERVAL)
    store.recovery.check()
    event = rebuild_event(store)
    assert asked.is_set() and event is not None and event["outcome"] == "succeeded"
    assert event["details"]["source"] == "backup" and event["details"]["report"]["records_from_source"] == 60
    rec = store.get("c", "t004")
    assert rec is not None and rec.value == {"t": 4} and rec.source == "local"
    assert store.node.slot.tier is not None
    rec = store.get("c", "b007")
    assert rec is not None and rec.value == {"i": 7} and rec.source == "local" and rec.version == 3
    rec = store.get("c", "during")
    assert rec is not None and rec.value == {"x": 1}
    assert not store.recovery.book.is_active("manual_intervention")
    assert not store.recovery.book.is_active("local_corruption")


def test_monitor_thread_stops_with_the_store_and_events_survive(tmp_path: Path) -> None:
    store = hybridstore.open(data_dir=tmp_path / "d", health_interval=0.05)
    wait_for(lambda: store.recovery.last_status() is not None)
    assert store.recovery.worker.running
    assert [t for t in threading.enumerate() if t.name == "hybridstore-health"]
    event = store.recovery._begin("sync_retry", "a drain cut short by close")
    store.close()
    assert not store.recovery.worker.running
    assert not [t for t in threading.enumerate() if t.name.startswith("hybridstore-")], "every worker stopped"
    with hybridstore.open(data_dir=tmp_path / "d", background=False) as again:
        kept = [e for e in again.recovery.events() if e["id"] == event.id]
        assert kept and kept[0]["outcome"] == "failed" and "interrupted" in kept[0]["summary"]


def test_opening_a_store_leaves_the_process_logging_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A library must not change the application's log levels: ``HYBRIDSTORE_LOG_LEVEL`` is the CLI's and the
    server's (see `apply_log_level`), and a bad value there does not stop a store from opening."""
    logger = logging.getLogger("hybridstore")
    saved = logger.level
    try:
        logger.setLevel(logging.WARNING)
        for value in ("debug", "chatty"):
            monkeypatch.setenv("HYBRIDSTORE_LOG_LEVEL", value)
            with hybridstore.open(data_dir=tmp_path / "d", background=False):
                assert logger.level == logging.WARNING
        apply_log_level("debug")
        assert logger.level == logging.DEBUG
        with pytest.raises(ConfigError, match="log level"):
            apply_log_level("chatty")
    finally:
        logger.setLevel(saved)


def test_options_are_validated(tmp_path: Path) -> None:
    for bad in ({"health_interval": 0}, {"sync_failure_after": -1}, {"conflicts_alert_at": 0}):
        with pytest.raises(ConfigError):
            hybridstore.open(data_dir=tmp_path / "d", **bad)
    start = time.monotonic()
    with hybridstore.open(data_dir=tmp_path / "d", health_interval=10):
        pass
    assert time.monotonic() - start < 5, "close does not wait for the next tick"


def test_failed_rebuild_keeps_the_broken_file_in_place_and_backs_off(
    make_store: StoreFactory, tmp_path: Path, proxy: Proxy, proxied_dsn: str
) -> None:
    first = make_store(primary=proxied_dsn)
    for i in range(200):
        first.set("c", f"p{i:03d}", {"i": i})
    first.close()
    db = tmp_path / "node" / LOCAL_DB
    garble_pages(db, table_pages(db, "records")[1:], seed=2)
    broken = db.read_bytes()
    proxy.cut()
    clock = FakeClock()
    calls: list[float] = []

    def tampered_backup() -> object:
        calls.append(clock.monotonic())

        def rows() -> object:
            yield StoredRow("c", "b1", "1", 1, "0", "n", 1.0)
            raise BackupTamperedError("chunk 3 failed its authentication tag")

        return rows()

    # Driven by hand with a fake clock: every check the test counts on runs, and the backoff is measured in the
    # monitor's own time, so a loaded machine changes nothing.
    store = make_store(primary=proxied_dsn, primary_timeout=1.0, background=False, time=clock.source())
    store.recovery.register_backup_source(tampered_backup)  # type: ignore[arg-type]

    def rebuild_event() -> dict[str, Any] | None:
        return next((e for e in store.recovery.events() if e["strategy"] == "rebuild_local"), None)

    for _ in range(8):  # the integrity check flags the file; the outage is confirmed; the rebuild is tried
        store.recovery.check()
        clock.advance(0.25)
        if (e := rebuild_event()) is not None and e["outcome"] != "running":
            break
    event = rebuild_event()
    assert event is not None
    assert event["outcome"] == "failed" and "authentication tag" in event["summary"]
    assert "next attempt in" in event["summary"]
    manual = [a for a in store.recovery.alerts(active=True) if a.kind == "manual_intervention"]
    assert len(manual) == 1 and "failed" in manual[0].message
    assert db.read_bytes() == broken, "the broken file stays where it was, untouched"
    assert not list((tmp_path / "node").glob("broken/local-*")), "nothing moved aside"
    assert not (tmp_path / "node" / "local.db.rebuild").exists(), "the half-built file is dropped"
    assert store.set("c", "during", 1).tier == "journal"
    checks = store.recovery.checks
    for _ in range(160):  # 40 s of monitor time at 0.25 s a check
        clock.advance(0.25)
        store.recovery.check()
    assert store.recovery.checks - checks == 160
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) == 4, f"attempts at 0 s, then after 5, 10 and 20 s: {gaps}"
    assert gaps == pytest.approx([5.0, 10.0, 20.0], abs=0.26), "each failure doubles the wait"


def test_async_store_exposes_recovery_and_metrics(tmp_path: Path) -> None:
    import asyncio

    async def main() -> None:
        astore = await hybridstore.open_async(data_dir=tmp_path / "d", background=False)
        try:
            await astore.set("c", "k", 1)
            assert (await astore.recovery.get_health_status())["overall"] == "healthy"
            assert 'hybridstore_op_seconds_count{op="set",tier="local"} 1.0' in await astore.metrics.prometheus_text()
        finally:
            await astore.close()

    asyncio.run(main())


def test_rebuild_from_the_newest_verified_backup_of_the_backup_service(
    make_store: StoreFactory, tmp_path: Path, proxy: Proxy, proxied_dsn: str
) -> None:
    """End to end: no hook registered by hand — the store hands its own backup service to the recovery service."""
    first = make_store(primary=proxied_dsn)
    for i in range(200):
        assert first.set("c", f"p{i:03d}", {"i": i}).tier == "primary"
    info = first.backups.create_manual_backup("before trouble")
    assert info.verified
    first.close()
    db = tmp_path / "node" / LOCAL_DB
    garble_pages(db, table_pages(db, "records")[1:], seed=3)
    proxy.cut()
    clock = FakeClock()
    store = make_store(primary=proxied_dsn, primary_timeout=1.0, background=False, time=clock.source())
    store.recovery.check()  # the integrity check fails; the primary is down: the newest verified backup
    event = rebuild_event(store)
    assert event is not None and event["outcome"] == "succeeded", event
    assert event["details"]["source"] == "backup" and event["details"]["report"]["records_from_source"] == 200
    for i in (0, 77, 199):
        rec = store.get("c", f"p{i:03d}")
        assert rec is not None and rec.value == {"i": i} and rec.source == "local" and rec.version == 1
    assert list((tmp_path / "node" / "broken").iterdir()), "the broken file is kept aside"
