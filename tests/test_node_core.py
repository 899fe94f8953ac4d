"""The node core's seams: the worker primitive, the event bus, the local slot, the primary gateway (outcome
classification, the single prober, events), side-effect-free status reads, and a composition root that leaks
nothing when an open fails half way."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore.compose import LOCAL_DB
from hybridstore.errors import (
    ClosedError,
    ConfigError,
    LocalStoreError,
    PrimaryMisconfiguredError,
    PrimaryRejectedError,
    PrimaryTimeoutError,
    PrimaryUnavailableError,
    StoreLockedError,
)
from hybridstore.events import Event, EventBus
from hybridstore.node.gateway import classify
from hybridstore.node.slot import LocalSlot
from hybridstore.node.timing import FakeClock
from hybridstore.tiers.local import LocalTier
from hybridstore.worker import Worker

from .faults import wait_for
from .fix_db import StoreFactory
from .fix_proxy import Proxy


def hybridstore_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("hybridstore-"))


# -- worker -----------------------------------------------------------------------------------------------------


def test_worker_runs_wakes_counts_errors_and_stops() -> None:
    calls: list[float] = []
    fail = threading.Event()

    def run_once() -> float:
        calls.append(time.monotonic())
        if fail.is_set():
            fail.clear()
            raise RuntimeError("boom")
        return 3600.0  # only a wake() brings the next round

    worker = Worker("hybridstore-test-worker", run_once, error_delay=0.0)
    worker.start()
    wait_for(lambda: worker.rounds == 1)
    worker.wake()
    wait_for(lambda: worker.rounds == 2)
    fail.set()
    worker.wake()
    wait_for(lambda: worker.errors == 1 and worker.rounds >= 4)  # the failed round, then one at once
    assert worker.last_error == "RuntimeError: boom" and worker.running
    assert worker.stop(timeout=5) is True
    assert not worker.running and "hybridstore-test-worker" not in hybridstore_threads()
    assert worker.stop() is True, "idempotent"
    worker.start()
    assert not worker.running, "a stopped worker does not start again"


def test_worker_stop_reports_a_thread_that_did_not_end(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    worker = Worker("hybridstore-test-stuck", lambda: float(release.wait(30)) or 1.0)
    worker.start()
    wait_for(lambda: worker.running)
    assert worker.stop(timeout=0.2) is False
    assert "did not stop" in caplog.text
    release.set()
    assert worker.stop(timeout=5) is True


def test_worker_never_started_stops_at_once() -> None:
    assert Worker("hybridstore-idle", lambda: 1.0).stop(timeout=0) is True


# -- events -----------------------------------------------------------------------------------------------------


def test_event_bus_filters_orders_and_survives_a_bad_listener(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    bus = EventBus(wall=clock.wall, keep=3)
    seen: list[Event] = []
    only_up: list[str] = []

    def bad(event: Event) -> None:
        raise ValueError("listener bug")

    bus.subscribe(bad)
    bus.subscribe(seen.append)
    unsubscribe = bus.subscribe(lambda e: only_up.append(e.kind), "primary_up")
    bus.publish("primary_down", "refused")
    clock.advance(1)
    bus.publish("primary_up")
    unsubscribe()
    bus.publish("primary_up")
    bus.publish("circuit_closed")
    assert [e.kind for e in seen] == ["primary_down", "primary_up", "primary_up", "circuit_closed"]
    assert [e.seq for e in seen] == [1, 2, 3, 4] and seen[1].at == seen[0].at + 1
    assert only_up == ["primary_up"], "filtered, and nothing after unsubscribing"
    assert [e.seq for e in bus.since(2)] == [3, 4] and len(bus.recent) == 3
    failures = [r for r in caplog.records if r.getMessage().startswith("event listener failed")]
    assert len(failures) == 4, "a failing listener is logged, the others still run"


# -- local slot -------------------------------------------------------------------------------------------------


def test_slot_ignores_failures_of_a_replaced_tier_and_refuses_a_swap_after_close(tmp_path: Path) -> None:
    bus = EventBus()
    kinds: list[str] = []
    bus.subscribe(lambda e: kinds.append(e.kind))
    old = LocalTier(tmp_path / "a.db")
    slot = LocalSlot(old, bus)
    assert slot.writable() is old and slot.snapshot()["state"] == "usable"
    slot.mark_failed(LocalStoreError("disk full"), tier=old)
    assert slot.writable() is None and slot.error == "disk full" and slot.tier is old
    assert slot.mark_recovered(tier=old) and slot.usable
    slot.hold("quick_check failed")
    assert not slot.mark_recovered(tier=old), "held: a lucky write probe does not make it trusted again"
    gen = slot.generation
    assert slot.take() is old and slot.tier is None and slot.generation == gen + 1
    old.close()
    new = LocalTier(tmp_path / "b.db")
    slot.swap(new)
    assert slot.writable() is new and slot.held is None and slot.generation == gen + 2
    slot.mark_failed(LocalStoreError("the old file is closed"), tier=old)
    assert slot.usable, "a late failure of the old tier does not mark the new one failed"
    assert kinds == ["local_failed", "local_recovered", "local_held", "local_swapped"]
    slot.close()
    late = LocalTier(tmp_path / "c.db")
    with pytest.raises(ClosedError):
        slot.swap(late)
    with pytest.raises(LocalStoreError):
        late.get("c", "k")  # the refused tier was closed, not leaked
    assert slot.tier is None


# -- gateway ----------------------------------------------------------------------------------------------------


class _Sqlstate(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _caused(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


def test_outcomes_are_classified() -> None:
    assert classify(PrimaryTimeoutError("no answer within 2s")) == "timeout"
    assert classify(PrimaryUnavailableError("connection refused")) == "unreachable"
    assert classify(PrimaryRejectedError("value too long")) == "refused"
    assert classify(PrimaryMisconfiguredError("x")) == "misconfigured"
    assert classify(PrimaryUnavailableError('FATAL: password authentication failed for user "app"')) == "misconfigured"
    assert classify(PrimaryUnavailableError('FATAL: database "shop" does not exist')) == "misconfigured"
    for state in ("42501", "28P01", "3D000"):  # permission denied, wrong password, no such database
        assert classify(_caused(PrimaryRejectedError("refused"), _Sqlstate(state))) == "misconfigured"
    assert classify(_caused(PrimaryRejectedError("refused"), _Sqlstate("23505"))) == "refused"


def test_open_circuit_refuses_at_once_without_touching_the_primary(make_store: StoreFactory) -> None:
    store = make_store(background=False)
    gateway = store.node.gateway
    touched: list[int] = []
    assert gateway.call(lambda p: touched.append(1) or 1) == 1
    gateway.circuit.trip()
    with pytest.raises(PrimaryUnavailableError, match="circuit open"):
        gateway.call(lambda p: touched.append(2))
    assert touched == [1]
    assert store.set("c", "k", 1).tier == "local", "writes fall back while the circuit is open"


def test_the_prober_declares_an_outage_and_the_return_with_events(
    make_store: StoreFactory, proxy: Proxy, proxied_dsn: str
) -> None:
    clock = FakeClock()
    store = make_store(primary=proxied_dsn, background=False, time=clock.source(), primary_timeout=1.0)
    gateway, events = store.node.gateway, store.node.events
    assert store.set("c", "before", 1).tier == "primary"
    gateway.tick()
    proxy.cut()
    seen = len(events.since(0))
    gateway.tick()  # one failure: suspected, not declared
    assert gateway.detector.suspect and not gateway.detector.in_outage and gateway.allow()
    clock.advance(0.8)
    gateway.tick()  # two failures spanning 0.8 s: declared
    assert gateway.detector.in_outage and not gateway.allow()
    kinds = [e.kind for e in events.since(0)][seen:]
    assert kinds[:2] == ["circuit_open", "primary_down"]
    assert store.set("c", "during", 2).tier == "local"
    assert store.health()["primary"]["state"] == "down"
    proxy.restore()
    clock.advance(0.25)
    gateway.tick()  # a fresh probe answers: fresh pool, circuit closed; the outage needs one more answer
    assert gateway.allow() and gateway.detector.in_outage
    clock.advance(0.25)
    gateway.tick()
    assert not gateway.detector.in_outage
    kinds = [e.kind for e in events.since(0)][seen:]
    assert kinds == ["circuit_open", "primary_down", "circuit_closed", "primary_up"]
    report = store.sync_now()
    assert report.pushed == 1 and report.remaining == 0


def test_a_primary_that_refuses_this_node_is_misconfigured_and_writes_fall_back(
    tmp_path: Path, pg_dsn: str, pg_schema: str
) -> None:
    bad = psycopg.conninfo.make_conninfo(pg_dsn, user="no_such_role_hs")
    store = hybridstore.open(bad, data_dir=tmp_path / "n", primary_schema=pg_schema, background=False)
    try:
        store.node.gateway.probe_now()
        snap = store.node.gateway.snapshot()
        assert snap["state"] == "misconfigured" and "no_such_role_hs" in snap["detail"]
        assert [e.kind for e in store.node.events.since(0)][:2] == ["primary_misconfigured", "circuit_open"]
        result = store.set("c", "k", 1)
        assert result.tier == "local" and result.queued
        assert store.recovery.check()["components"]["primary"]["misconfigured"] is True
    finally:
        store.close()


# -- status reads have no side effects --------------------------------------------------------------------------


def test_status_reads_change_nothing_and_agree(make_store: StoreFactory, proxy: Proxy, proxied_dsn: str) -> None:
    store = make_store(primary=proxied_dsn, background=False)
    gateway = store.node.gateway
    store.set("c", "a", 1)
    gateway.circuit.trip()
    for i in range(3):
        store.set("c", f"q{i}", i)
    proxy.cut()
    probes, circuit, events = gateway.probes, gateway.circuit.snapshot(), len(store.node.events.since(0))
    health, sync, status = store.health(), store.sync_status(), store.status(fresh=True)
    text = store.metrics.prometheus_text()
    assert (gateway.probes, gateway.circuit.snapshot()) == (probes, circuit), "no probe, no circuit change"
    assert len(store.node.events.since(0)) == events
    assert health["outbox"]["depth"] == sync["outbox"]["depth"] == status.outbox["depth"] == 3
    assert "hybridstore_outbox_depth 3.0" in text
    assert health["primary"]["state"] == status.primary["state"] == "down"


# -- the composition root ---------------------------------------------------------------------------------------


def _open_fds_under(path: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            out.append(target)
    return out


def test_a_failed_open_leaks_no_thread_file_or_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "node"
    before = hybridstore_threads()
    with pytest.raises(ConfigError):  # fails after SQLite and the journal are open
        hybridstore.open("postgresql://u@127.0.0.1:99999/x", data_dir=data)
    assert _open_fds_under(data) == [], "no file of the data directory left open"
    assert hybridstore_threads() == before

    from hybridstore.recovery import service as recovery_service

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a service failed to start")

    monkeypatch.setattr(recovery_service.RecoveryService, "start", broken)
    with pytest.raises(RuntimeError):  # fails last, with every thread but the monitor's started
        hybridstore.open(data_dir=data)
    assert hybridstore_threads() == before and _open_fds_under(data) == []
    monkeypatch.undo()
    with hybridstore.open(data_dir=data) as store:  # the directory lock was released
        assert store.set("c", "k", 1).queued
        with pytest.raises(StoreLockedError):
            hybridstore.open(data_dir=data)
    assert (data / LOCAL_DB).exists()


def test_misconfigured_is_not_an_outage_and_the_cli_names_what_to_fix(
    tmp_path: Path, pg_dsn: str, pg_schema: str
) -> None:
    import subprocess
    import sys

    bad = psycopg.conninfo.make_conninfo(pg_dsn, user="no_such_role_hs")
    clock = FakeClock()
    with hybridstore.open(
        bad, data_dir=tmp_path / "n", primary_schema=pg_schema, background=False, time=clock.source()
    ) as store:
        for _ in range(6):
            status = store.recovery.check()
            clock.advance(0.25)
        assert status["overall"] == "misconfigured"
        active = {a.kind for a in store.recovery.alerts(active=True)}
        assert "primary_misconfigured" in active and "primary_outage" not in active
        (alert,) = [a for a in store.recovery.alerts(active=True) if a.kind == "primary_misconfigured"]
        assert "no_such_role_hs" in alert.message
    cli = subprocess.run(
        [sys.executable, "-m", "hybridstore", "-d", str(tmp_path / "c"), "--primary-url", bad, "set", "c", "k", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2, cli.stderr
    assert "refuses this node" in cli.stderr and "no_such_role_hs" in cli.stderr


def test_a_never_probed_primary_is_unknown_and_the_first_check_probes_it(tmp_path: Path) -> None:
    """The monitor's first check can run before the prober's first probe: it must not act on a primary nobody
    has asked yet (e.g. rebuild from it), and an observing read must not call it healthy."""
    clock = FakeClock()
    url = "postgresql://postgres@127.0.0.1:1/nothing_listens_here"
    with hybridstore.open(url, data_dir=tmp_path / "n", background=False, time=clock.source()) as store:
        gateway = store.node.gateway
        observed = store.recovery.get_health_status()  # observe only: no probe
        assert observed["components"]["primary"]["state"] == "unknown" and gateway.probes == 0
        assert store.health()["primary"]["state"] == "unknown"
        checked = store.recovery.check()  # acts: probes first
        assert gateway.probes == 1 and checked["components"]["primary"]["state"] in ("degraded", "down")
