"""Outage detection against a real PostgreSQL behind the fault proxy: refused, black-holed, a short blip; the
cache-fallback and sync-retry strategies recorded around an outage; alerts delivered to a real webhook."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from hybridstore.node.gateway import SUSPECT_INTERVAL
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


def monitor_round(store: Any, clock: FakeClock) -> dict[str, Any]:
    """One health check (with its round of the prober), then the wait the monitor's worker makes before the next:
    ``health_interval``, or ``SUSPECT_INTERVAL`` while the primary fails."""
    status: dict[str, Any] = store.recovery.check()
    detector = store.node.gateway.detector
    clock.advance(SUSPECT_INTERVAL if detector.suspect or detector.in_outage else store.recovery.interval)
    return status


def test_refused_connections_declared_within_2s_then_recovery_drains_the_outbox(
    make_store: StoreFactory,
    proxy: Proxy,
    proxied_dsn: str,
    webhook: Receiver,
    pg: psycopg.Connection[Any],
    pg_schema: str,
) -> None:
    """Driven on a fake clock at the monitor's own schedule: the detection time is measured in monitor seconds,
    so a loaded machine (fewer checks in a second) cannot change it."""
    clock = FakeClock()
    store = make_store(primary=proxied_dsn, alert_webhook_url=webhook.url, background=False, time=clock.source())
    recovery, replayer = store.recovery, store.node.replayer
    assert store.set("orders", "before", 1).tier == "primary"
    assert recovery.check()["overall"] == "healthy"

    proxy.cut()  # just after a check: the worst case, a whole interval passes before the next one
    cut_at = clock.wall()
    clock.advance(recovery.interval)
    rounds = 0
    while not outage_alerts(store):
        monitor_round(store, clock)
        rounds += 1
        assert rounds < 20, "no outage declared"
    took = outage_alerts(store)[0].raised_at - cut_at
    assert took < 2.0, f"refused primary declared down after {took:.2f}s"
    assert rounds >= 2 and took >= store.node.gateway.detector.confirm_seconds, "one failed probe declares nothing"
    status = recovery.get_health_status()
    assert status["overall"] == "outage" and status["components"]["primary"]["state"] == "down"
    assert store.node.gateway.circuit.state != "closed", "declared down: no foreground call waits on the primary"
    start = time.monotonic()
    tiers = [store.set("orders", f"o{i}", i).tier for i in range(50)]
    assert set(tiers) == {"local"} and time.monotonic() - start < 1.0, "writes go straight to SQLite"
    monitor_round(store, clock)

    proxy.restore()
    rounds = 0
    while not recovery.events() or recovery.events()[0]["strategy"] != "sync_retry":
        monitor_round(store, clock)
        rounds += 1
        assert rounds < 10, "the primary's return was not confirmed"
    assert rounds == store.node.gateway.detector.recover_successes, "back after that many answers in a row"
    assert replayer.run_once() == 0.0  # the circuit is closed again: the whole outbox in one round
    monitor_round(store, clock)
    events = {e["strategy"]: e for e in recovery.events()}
    fallback, retry = events["cache_fallback"], events["sync_retry"]
    assert fallback["outcome"] == "succeeded" and fallback["details"]["queued"] == 50
    assert fallback["started_at"] >= cut_at and fallback["ended_at"] <= retry["started_at"] + 0.01
    assert retry["outcome"] == "succeeded"
    assert retry["details"]["depth"] == 50 and retry["details"]["pushed"] == 50
    rows = primary_rows(pg, pg_schema, "orders")
    assert len(rows) == 51 and rows["o49"] == (49, 1)
    alerts = outage_alerts(store)
    assert len(alerts) == 1 and alerts[0].resolved_at is not None and alerts[0].severity == "critical"
    assert recovery.get_health_status()["overall"] == "healthy"
    wait_for(lambda: len(webhook.events("primary_outage")) == 2)  # the sender's own thread
    assert webhook.events("primary_outage") == [("raised", "primary_outage"), ("resolved", "primary_outage")]


def test_black_holed_primary_declared_within_5s(make_store: StoreFactory, proxy: Proxy, proxied_dsn: str) -> None:
    """Real threads and real time on purpose: what a black hole costs is the probes' real timeouts (a fake clock
    does not move while a probe waits). The bound follows from the configuration: the next probe within
    ``health_interval`` (0.5 s), then two probes that each give up after ``min(1 s, primary_timeout)``, 0.25 s
    apart, confirm the outage (about 2.75 s); the rest is slack for a loaded machine."""
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
