"""Outage detection against a real PostgreSQL behind the fault proxy: refused, black-holed, a short blip; the
cache-fallback and sync-retry strategies recorded around an outage; alerts delivered to a real webhook."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from hybridstore.node.timing import FakeClock

from .faults import wait_for
from .fix_db import StoreFactory, primary_rows
from .fix_proxy import Proxy
from .fix_webhook import Receiver

pytestmark = pytest.mark.resilience


def outage_alerts(store: Any) -> list[Any]:
    return [a for a in store.recovery.alerts() if a.kind == "primary_outage"]


def declared_after(store: Any, since: float, timeout: float = 15.0) -> float:
    """Seconds from ``since`` (epoch) to the moment the outage was declared."""
    wait_for(lambda: outage_alerts(store), timeout=timeout)
    return outage_alerts(store)[0].raised_at - since


def test_refused_connections_declared_within_2s_then_recovery_drains_the_outbox(
    make_store: StoreFactory,
    proxy: Proxy,
    proxied_dsn: str,
    webhook: Receiver,
    pg: psycopg.Connection[Any],
    pg_schema: str,
) -> None:
    store = make_store(primary=proxied_dsn, alert_webhook_url=webhook.url)  # default timeouts
    assert store.set("orders", "before", 1).tier == "primary"
    wait_for(lambda: store.recovery.last_status() is not None)
    assert store.recovery.get_health_status()["overall"] == "healthy"

    cut_at = time.time()
    proxy.cut()
    took = declared_after(store, cut_at)
    assert took < 2.0, f"refused primary declared down after {took:.2f}s"
    status = store.recovery.get_health_status(refresh=True)
    assert status["overall"] == "outage" and status["components"]["primary"]["state"] == "down"
    assert store.node.gateway.circuit.state != "closed", "declared down: no foreground call waits on the primary"
    start = time.monotonic()
    tiers = [store.set("orders", f"o{i}", i).tier for i in range(50)]
    assert set(tiers) == {"local"} and time.monotonic() - start < 1.0, "writes go straight to SQLite"

    proxy.restore()
    recovery = store.recovery
    wait_for(lambda: any(e["strategy"] == "sync_retry" and e["outcome"] == "succeeded" for e in recovery.events()))
    events = {e["strategy"]: e for e in store.recovery.events()}
    fallback, retry = events["cache_fallback"], events["sync_retry"]
    assert fallback["outcome"] == "succeeded" and fallback["details"]["queued"] == 50
    assert fallback["started_at"] >= cut_at and fallback["ended_at"] <= retry["started_at"] + 0.01
    assert retry["details"]["depth"] == 50 and retry["details"]["pushed"] == 50
    rows = primary_rows(pg, pg_schema, "orders")
    assert len(rows) == 51 and rows["o49"] == (49, 1)
    alerts = outage_alerts(store)
    assert len(alerts) == 1 and alerts[0].resolved_at is not None and alerts[0].severity == "critical"
    wait_for(lambda: len(webhook.events("primary_outage")) == 2)
    assert webhook.events("primary_outage") == [("raised", "primary_outage"), ("resolved", "primary_outage")]
    wait_for(lambda: store.recovery.get_health_status()["overall"] == "healthy")


def test_black_holed_primary_declared_within_5s(make_store: StoreFactory, proxy: Proxy, proxied_dsn: str) -> None:
    store = make_store(primary=proxied_dsn)  # default primary_timeout (2 s)
    assert store.set("c", "k", 1).tier == "primary"
    wait_for(lambda: store.recovery.last_status() is not None)
    hole_at = time.time()
    proxy.blackhole()
    took = declared_after(store, hole_at)
    assert took < 5.0, f"black-holed primary declared down after {took:.2f}s"
    assert store.recovery.get_health_status(refresh=True)["components"]["primary"]["state"] == "down"
    proxy.restore()
    wait_for(lambda: outage_alerts(store)[0].resolved_at is not None)
    assert len(outage_alerts(store)) == 1


def test_short_blip_declares_nothing(
    make_store: StoreFactory, proxy: Proxy, proxied_dsn: str, webhook: Receiver
) -> None:
    """Three separate 0.2 s blips, each breaking the open connections, driven with a fake clock: the monitor and
    the prober run exactly the rounds the test makes, so "nothing was declared" cannot come from checks that
    never ran, and a slow reconnect on a loaded machine cannot stretch a blip into an outage."""
    clock = FakeClock()
    store = make_store(primary=proxied_dsn, alert_webhook_url=webhook.url, background=False, time=clock.source())
    store.set("c", "k", 1)
    gateway = store.node.gateway
    store.recovery.check()
    failures = 0
    for _ in range(3):
        proxy.cut()
        store.recovery.check()  # probes (fails), records the failure
        failures += gateway.detector.failures
        clock.advance(0.2)
        proxy.restore()
        for _ in range(4):  # the next rounds, 0.25 s apart: the primary answers again
            clock.advance(0.25)
            store.recovery.check()
        assert gateway.detector.failures == 0 and not gateway.detector.in_outage
    assert failures == 3, "every blip was seen by the prober"
    assert gateway.probes >= 16 and store.recovery.checks >= 16, "the checks really ran"
    assert outage_alerts(store) == []
    assert [e for e in store.recovery.events() if e["strategy"] == "cache_fallback"] == []
    assert webhook.bodies == []
    assert store.set("c", "k2", 2).tier == "primary"
