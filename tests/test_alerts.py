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

from .faults import fill_sqlite, free_sqlite, wait_for
from .fix_db import StoreFactory, primary_rows
from .fix_webhook import Receiver

pytestmark = pytest.mark.resilience


def kinds(store: Any, active: bool | None = None) -> list[str]:
    return [a.kind for a in store.recovery.alerts(active=active)]


def test_each_alert_once_to_the_webhook_with_retries(
    make_store: StoreFactory, webhook: Receiver, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    webhook.fail_first = 2  # the receiver answers 503 twice: the sender retries
    store = make_store(
        write_mode="local_first", alert_webhook_url=webhook.url, sync_failure_after=1.0, conflicts_alert_at=3
    )
    recovery = store.recovery
    assert store.node.gateway.configured
    store.node.gateway.tier.migrate()
    wait_for(lambda: recovery.last_status() is not None)
    assert recovery.get_health_status()["overall"] == "healthy"
    assert recovery.get_health_status()["components"]["conflicts"]["available"] is True  # from the sync engine

    # low storage: a threshold above the free space, then back
    recovery.thresholds.low_storage_bytes = 1 << 60
    wait_for(lambda: "low_storage" in kinds(store, True))
    assert recovery.get_health_status(refresh=True)["overall"] == "degraded"
    time.sleep(1.0)  # several checks while it lasts: still one alert
    recovery.thresholds.low_storage_bytes = 0
    wait_for(lambda: "low_storage" in kinds(store, False))

    # conflicts backlog, through the sync engine's status hook
    conflicts = [5]
    recovery.register_sync_status(lambda: {"dead_letters": 0, "unresolved_conflicts": conflicts[0]})
    wait_for(lambda: "conflicts_backlog" in kinds(store, True))
    assert "5 unresolved" in recovery.alerts(active=True)[0].message
    conflicts[0] = 1
    wait_for(lambda: "conflicts_backlog" in kinds(store, False))

    # prolonged sync failure: the primary answers, but every push times out on a lock held elsewhere
    with psycopg.connect(pg.info.dsn) as locker:
        locker.execute(f'LOCK TABLE "{pg_schema}".applied_ops IN ACCESS EXCLUSIVE MODE')
        for i in range(5):
            store.set("c", f"k{i}", i)
        wait_for(lambda: "sync_failure" in kinds(store, True), timeout=30)
        status = recovery.get_health_status(refresh=True)
        assert status["components"]["sync"]["outbox_depth"] == 5 and status["components"]["sync"]["stalled"]
        wait_for(lambda: recovery.get_health_status(refresh=True)["components"]["sync"]["failed"] > 0, timeout=30)
        locker.rollback()
    wait_for(lambda: "sync_failure" in kinds(store, False), timeout=30)
    assert len(primary_rows(pg, pg_schema)) == 5

    expected = [
        ("raised", "low_storage"),
        ("resolved", "low_storage"),
        ("raised", "conflicts_backlog"),
        ("resolved", "conflicts_backlog"),
        ("raised", "sync_failure"),
        ("resolved", "sync_failure"),
    ]
    wait_for(lambda: len(webhook.bodies) == len(expected))
    time.sleep(0.5)
    assert webhook.events() == expected, "each alert raised once and resolved once"
    assert webhook.requests == len(expected) + 2
    body = webhook.bodies[0]["alert"]
    assert {"kind", "severity", "message", "raised_at", "resolved_at", "node_id"} <= set(body)
    assert body["node_id"] == store.node_id and body["resolved_at"] is None
    assert sorted(kinds(store)) == sorted(k for e, k in expected if e == "raised")
    assert all(a.resolved_at is not None and a.resolved_at >= a.raised_at for a in recovery.alerts())
    stats = recovery.get_health_status()["webhook"]
    assert stats["delivered"] == len(expected) and stats["failed"] == 0


def test_alert_history_is_kept_across_restarts(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "d", low_storage_bytes=1 << 60) as store:
        wait_for(lambda: "low_storage" in kinds(store, True))
    with hybridstore.open(data_dir=tmp_path / "d", background=False) as store:
        alerts = store.recovery.alerts()
        assert [(a.kind, a.active) for a in alerts] == [("low_storage", True)]
        store.recovery.check()  # the default threshold: enough space now
        assert [(a.kind, a.active) for a in store.recovery.alerts()] == [("low_storage", False)]


def test_disk_full_goes_to_journal_never_lost_and_low_storage_fires(tmp_path: Path, webhook: Receiver) -> None:
    with hybridstore.open(data_dir=tmp_path / "d", alert_webhook_url=webhook.url) as store:
        acked = {}
        for i in range(20):
            acked[f"a{i}"] = store.set("c", f"a{i}", {"i": i}).tier
        fill_sqlite(store)  # a real SQLITE_FULL from now on
        for i in range(200):
            acked[f"b{i}"] = store.set("c", f"b{i}", {"i": i, "pad": "x" * 2000}).tier
        assert set(acked.values()) == {"local", "journal"} and list(acked.values()).count("journal") > 150
        wait_for(lambda: "low_storage" in kinds(store, True))
        status = store.recovery.get_health_status(refresh=True)
        assert status["components"]["disk"]["detail"] == "SQLite reports the disk is full"
        assert status["components"]["local"]["state"] == "degraded"
        assert store.recovery.alerts(active=True)[0].severity == "critical"
        for key in acked:
            rec = store.get("c", key)
            assert rec is not None and rec.value["i"] == int(key[1:]), "every acknowledged write readable"
        free_sqlite(store)
        wait_for(lambda: "low_storage" in kinds(store, False))
        wait_for(lambda: len(store.node.journal) == 0)
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
