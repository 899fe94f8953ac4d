"""Alerts: each kind raised once and resolved once, stored, and delivered to a real local webhook receiver."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore import ConfigError
from hybridstore.node.timing import FakeClock
from hybridstore.recovery.service import SYNC_STATUS_INTERVAL

from .faults import fill_sqlite, free_sqlite, wait_for
from .fix_db import StoreFactory, primary_rows
from .fix_webhook import Receiver

pytestmark = pytest.mark.resilience


def kinds(store: Any, active: bool | None = None) -> list[str]:
    return [a.kind for a in store.recovery.alerts(active=active)]


def test_each_alert_once_to_the_webhook_with_retries(
    make_store: StoreFactory, webhook: Receiver, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    """Driven by hand on a fake clock: each condition lasts a known number of checks, so "still one alert while
    it lasts" is seen over checks that really ran, and the thresholds are measured in the monitor's own time."""
    webhook.fail_first = 2  # the receiver answers 503 twice: the sender retries
    clock = FakeClock()
    store = make_store(
        write_mode="local_first",
        alert_webhook_url=webhook.url,
        sync_failure_after=1.0,
        conflicts_alert_at=3,
        background=False,
        time=clock.source(),
    )
    recovery = store.recovery
    assert store.node.gateway.configured
    store.node.gateway.tier.migrate()

    def check(after: float = 0.5) -> dict[str, Any]:
        clock.advance(after)
        return recovery.check()

    status = recovery.check()
    assert status["overall"] == "healthy"
    assert status["components"]["conflicts"]["available"] is True  # from the sync engine

    # low storage: a threshold above the free space, then back
    recovery.thresholds.low_storage_bytes = 1 << 60
    assert check()["overall"] == "degraded"
    assert kinds(store, True) == ["low_storage"]
    checks = recovery.checks
    for _ in range(4):  # 2 s of monitor time while it lasts
        assert check()["components"]["disk"]["low"]
    assert recovery.checks - checks == 4, "the checks really ran"
    assert kinds(store) == ["low_storage"], "several checks while it lasts: still one alert"
    recovery.thresholds.low_storage_bytes = 0
    check()
    assert kinds(store, True) == [] and kinds(store, False) == ["low_storage"]

    # conflicts backlog, through the sync engine's status hook (asked at most every SYNC_STATUS_INTERVAL)
    conflicts = [5]
    asked: list[float] = []

    def sync_status() -> dict[str, int]:
        asked.append(clock.monotonic())
        return {"dead_letters": 0, "unresolved_conflicts": conflicts[0]}

    recovery.register_sync_status(sync_status)
    check()
    assert kinds(store, True) == ["conflicts_backlog"]
    assert "5 unresolved" in recovery.alerts(active=True)[0].message
    conflicts[0] = 1
    check()
    assert kinds(store, True) == ["conflicts_backlog"], "the last answer holds until the next question"
    check(SYNC_STATUS_INTERVAL)
    assert kinds(store, True) == [] and "conflicts_backlog" in kinds(store, False)
    assert len(asked) == 2 and asked[1] - asked[0] >= SYNC_STATUS_INTERVAL

    # prolonged sync failure: the primary answers, but every push times out on a lock held elsewhere
    replayer = store.node.replayer
    with psycopg.connect(pg.info.dsn) as locker:
        locker.execute(f'LOCK TABLE "{pg_schema}".records IN ACCESS EXCLUSIVE MODE')
        for i in range(5):
            store.set("c", f"k{i}", i)
        status = check()  # the outbox has just started to wait
        assert status["components"]["sync"]["outbox_depth"] == 5 and not status["components"]["sync"]["stalled"]
        assert "sync_failure" not in kinds(store)
        started = time.monotonic()
        delay = replayer.run_once()  # one push: it waits out the lock timeout, then backs off
        assert time.monotonic() - started < store.config.primary_timeout + 1.0, "bounded by primary_timeout"
        assert 0.0 <= delay <= 2 * store.config.retry_base, "full jitter, first retry"
        assert replayer.totals.failed == 5
        status = check(1.0)  # stalled for sync_failure_after while the primary answers its probes
        assert status["components"]["primary"]["state"] == "healthy"
        sync = status["components"]["sync"]
        assert sync["outbox_depth"] == 5 and sync["stalled"] and sync["failed"] > 0
        assert kinds(store, True) == ["sync_failure"]
        check()
        assert [a.kind for a in recovery.alerts() if a.kind == "sync_failure"] == ["sync_failure"]
        locker.rollback()
    assert replayer.run_once() == 0.0, "pushed: the next round follows at once"
    assert check()["components"]["sync"]["outbox_depth"] == 0
    assert kinds(store, True) == [] and "sync_failure" in kinds(store, False)
    assert len(primary_rows(pg, pg_schema)) == 5

    expected = [
        ("raised", "low_storage"),
        ("resolved", "low_storage"),
        ("raised", "conflicts_backlog"),
        ("resolved", "conflicts_backlog"),
        ("raised", "sync_failure"),
        ("resolved", "sync_failure"),
    ]
    wait_for(lambda: len(webhook.bodies) == len(expected))  # the sender's own thread, with its retries
    assert sorted(kinds(store)) == sorted(k for e, k in expected if e == "raised")
    assert all(a.resolved_at is not None and a.resolved_at >= a.raised_at for a in recovery.alerts())
    store.close()  # the sender has stopped: nothing can arrive after this
    assert webhook.events() == expected, "each alert raised once and resolved once"
    assert webhook.requests == len(expected) + 2
    body = webhook.bodies[0]["alert"]
    assert {"kind", "severity", "message", "raised_at", "resolved_at", "node_id"} <= set(body)
    assert body["node_id"] == store.node_id and body["resolved_at"] is None
    assert recovery.webhook is not None
    stats = recovery.webhook.stats()
    assert stats["delivered"] == len(expected) and stats["failed"] == 0


def test_alert_history_is_kept_across_restarts(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "d", low_storage_bytes=1 << 60, background=False) as store:
        store.recovery.check()
        assert kinds(store, True) == ["low_storage"]
    with hybridstore.open(data_dir=tmp_path / "d", background=False) as store:
        alerts = store.recovery.alerts()
        assert [(a.kind, a.active) for a in alerts] == [("low_storage", True)]
        store.recovery.check()  # the default threshold: enough space now
        assert [(a.kind, a.active) for a in store.recovery.alerts()] == [("low_storage", False)]


def test_disk_full_goes_to_journal_never_lost_and_low_storage_fires(tmp_path: Path, webhook: Receiver) -> None:
    clock = FakeClock()
    opts: dict[str, Any] = {"alert_webhook_url": webhook.url, "background": False, "time": clock.source()}
    with hybridstore.open(data_dir=tmp_path / "d", **opts) as store:
        acked = {}
        for i in range(20):
            acked[f"a{i}"] = store.set("c", f"a{i}", {"i": i}).tier
        fill_sqlite(store)  # a real SQLITE_FULL from now on
        for i in range(200):
            acked[f"b{i}"] = store.set("c", f"b{i}", {"i": i, "pad": "x" * 2000}).tier
        assert set(acked.values()) == {"local", "journal"} and list(acked.values()).count("journal") > 150
        status = store.recovery.check()
        assert kinds(store, True) == ["low_storage"]
        assert status["components"]["disk"]["detail"] == "SQLite reports the disk is full"
        assert status["components"]["local"]["state"] == "degraded"
        assert store.recovery.alerts(active=True)[0].severity == "critical"
        for key in acked:
            rec = store.get("c", key)
            assert rec is not None and rec.value["i"] == int(key[1:]), "every acknowledged write readable"
        free_sqlite(store)
        store.node.replayer.run_once()  # replays the journal into SQLite, which works again
        assert len(store.node.journal) == 0
        clock.advance(0.5)
        store.recovery.check()
        assert kinds(store, True) == [] and kinds(store, False) == ["low_storage"]
    with hybridstore.open(data_dir=tmp_path / "d", background=False) as store:
        assert all(store.get("c", key) is not None for key in acked)
        assert store.health()["outbox"]["depth"] == len(acked)
    assert webhook.events() == [("raised", "low_storage"), ("resolved", "low_storage")]


def test_webhook_url_from_environment_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDSTORE_ALERT_WEBHOOK_URL", "ftp://example/x")
    with pytest.raises(ConfigError, match="http"):
        hybridstore.open(data_dir=tmp_path / "d")
    monkeypatch.setenv("HYBRIDSTORE_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    with hybridstore.open(data_dir=tmp_path / "d", background=False) as store:
        assert store.recovery.webhook is not None and store.recovery.webhook.url == "http://127.0.0.1:9/hook"
    assert json.loads(json.dumps(store.recovery.get_health_status(), default=str))["node_id"] == store.node_id
