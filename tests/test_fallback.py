"""Automatic fallback: a writer keeps writing while the primary is cut, black-holed and restored."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from .faults import wait_for
from .fix_db import StoreFactory, primary_rows
from .fix_proxy import Proxy

pytestmark = pytest.mark.resilience

TIMEOUT = 1.0
# A call may wait on the primary for TIMEOUT, then writes locally; allow scheduling slack on a busy 2-core box.
BUDGET = TIMEOUT + 0.75
ACKS_PER_PHASE = 20


class Outages:
    """Counts the outages the node confirmed and their ends (``primary_down`` / ``primary_up`` events)."""

    def __init__(self, store: Any) -> None:
        self.down = self.up = 0
        store.node.events.subscribe(self._seen, "primary_down", "primary_up")

    def _seen(self, event: Any) -> None:
        if event.kind == "primary_down":
            self.down += 1
        else:
            self.up += 1


@dataclass
class Writer:
    store: Any
    phase: str = "up"
    acked: dict[str, tuple[int, str, str, float]] = field(default_factory=dict)  # key -> (i, tier, phase, secs)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (phase, tier) -> acknowledged writes

    def __enter__(self) -> Writer:
        self._thread = threading.Thread(target=self.run, name="test-writer")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join()

    def wait_acks(self, phase: str, tier: str, count: int = ACKS_PER_PHASE) -> None:
        """Wait until ``count`` writes of ``phase`` were acknowledged by ``tier``: a phase lasts until what it is
        about has happened, however slow the machine, instead of a fixed number of seconds."""
        wait_for(lambda: self.counts[(phase, tier)] >= count or bool(self.failures), timeout=30)

    def finish(self) -> None:
        """Stop writing and wait until the store has pushed everything it queued."""
        self.stop.set()
        self._thread.join()
        wait_for(lambda: self.store.health()["outbox"]["depth"] == 0, timeout=60)

    def assert_all_on_primary_once(self, rows: dict[str, Any]) -> None:
        assert set(rows) == set(self.acked), "every acknowledged write is on the primary"
        for key, (i, *_rest) in self.acked.items():
            assert rows[key] == ({"i": i}, 1), f"{key} applied exactly once with its own value"

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key = f"o{i:06d}"
            phase = self.phase
            start = time.monotonic()
            try:
                r = self.store.set("orders", key, {"i": i})
            except Exception as exc:
                self.failures.append(f"{key}: {exc!r}")
            else:
                if self.phase != phase:
                    phase = "transition"  # the network changed while this call ran
                self.acked[key] = (i, r.tier, phase, time.monotonic() - start)
                self.counts[(phase, r.tier)] += 1
            i += 1
            time.sleep(0.002)  # pacing: a steady stream of writes, not a busy loop that starves the node's threads


def test_writer_survives_cut_blackhole_restore(
    make_store: StoreFactory, proxy: Proxy, proxied_dsn: str, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    """Each phase lasts until what it is about has happened (the outage confirmed and writes acknowledged
    locally; the primary confirmed back and writes acknowledged by it), not a fixed number of seconds that a
    loaded machine may fill with fewer probes and writes."""
    store = make_store(primary=proxied_dsn, primary_timeout=TIMEOUT, circuit_reset_max=1.0)
    outages = Outages(store)
    with Writer(store) as writer:
        writer.wait_acks("up", "primary")
        for n, (down, fault, up) in enumerate(
            [("cut", proxy.cut, "restored"), ("blackhole", proxy.blackhole, "healed")], 1
        ):
            writer.phase = down
            fault()
            wait_for(lambda n=n: outages.down == n, timeout=30)
            writer.wait_acks(down, "local")
            writer.phase = up
            proxy.restore()
            wait_for(lambda n=n: outages.up == n, timeout=30)
            writer.wait_acks(up, "primary")  # write-through resumes by itself
        writer.finish()

    assert writer.failures == [], "no call may fail while a fallback tier works"
    by_phase: dict[str, list[tuple[int, str, str, float]]] = {}
    for entry in writer.acked.values():
        by_phase.setdefault(entry[2], []).append(entry)
    tiers = {phase: {e[1] for e in entries} for phase, entries in by_phase.items()}
    assert tiers["up"] == {"primary"}
    assert "local" in tiers["cut"] and "local" in tiers["blackhole"]
    assert "primary" in tiers["restored"] and "primary" in tiers["healed"], "write-through resumes by itself"
    slowest = max(e[3] for e in writer.acked.values())
    assert slowest < BUDGET, f"a call blocked {slowest:.2f}s while the primary was down"
    slow_calls = sum(1 for e in by_phase["blackhole"] if e[3] > 0.5)
    assert slow_calls <= 2, "the circuit opens: only the first call(s) wait on a black-holed primary"

    writer.assert_all_on_primary_once(primary_rows(pg, pg_schema, "orders"))
    (versions,) = pg.execute(
        f'SELECT sum(version) FROM "{pg_schema}".records WHERE collection = %s', ("orders",)
    ).fetchone()
    assert versions == len(writer.acked), "each acknowledged write applied once"
    assert store.node.gateway.circuit.opened_count >= 2


def test_reads_fall_back_to_local(make_store: StoreFactory, proxy: Proxy, proxied_dsn: str) -> None:
    store = make_store(primary=proxied_dsn, primary_timeout=TIMEOUT)
    store.set("c", "k", "v1")
    rec = store.get("c", "k")
    assert rec is not None and rec.source == "primary"
    proxy.cut()
    start = time.monotonic()
    rec = store.get("c", "k")
    assert time.monotonic() - start < BUDGET
    assert rec is not None and rec.value == "v1" and rec.source == "local" and rec.synced_at is not None
    w = store.set("c", "k", "v2")
    assert w.tier == "local" and w.queued
    rec = store.get("c", "k")
    assert rec is not None and rec.value == "v2" and rec.pending
    assert [r.value for r in store.list("c")] == ["v2"]
    health = store.health()
    assert health["primary"]["state"] == "down" and health["outbox"]["depth"] == 1
    proxy.restore()
    wait_for(lambda: store.health()["outbox"]["depth"] == 0)
    rec = store.get("c", "k")
    assert rec is not None and rec.source == "primary" and rec.value == "v2" and rec.version == 2


def test_primary_down_at_open(
    make_store: StoreFactory, proxy: Proxy, proxied_dsn: str, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    proxy.cut()
    store = make_store(primary=proxied_dsn, primary_timeout=TIMEOUT)
    start = time.monotonic()
    results = [store.set("c", f"k{i}", i) for i in range(20)]
    elapsed = time.monotonic() - start
    assert {r.tier for r in results} == {"local"}
    assert elapsed < BUDGET + 0.5, "only the first write waits for the timeout"
    report = store.sync_now()
    assert report.remaining == 20 and report.pushed == 0
    proxy.restore()
    wait_for(lambda: store.health()["outbox"]["depth"] == 0)
    assert len(primary_rows(pg, pg_schema)) == 20


def test_unreachable_primary_url_is_not_an_error(make_store: StoreFactory) -> None:
    store = make_store(primary="postgresql://postgres@127.0.0.1:1/none", primary_timeout=TIMEOUT)
    r = store.set("c", "k", 1)
    assert r.tier == "local" and r.queued
    h = store.health()
    assert h["primary"]["state"] == "down" and "127.0.0.1:1" in h["primary"]["url"]
    assert h["outbox"]["depth"] == 1


def test_first_write_is_fast_when_opened_offline(make_store: StoreFactory, proxy: Proxy, proxied_dsn: str) -> None:
    proxy.cut()
    store = make_store(primary=proxied_dsn, primary_timeout=TIMEOUT)
    wait_for(
        lambda: store.node.gateway.circuit.state != "closed", timeout=5
    )  # the start-up probe found the primary down
    start = time.monotonic()
    r = store.set("c", "k", 1)
    assert r.tier == "local" and time.monotonic() - start < 0.5


def test_primary_server_crash_and_restart(make_store: StoreFactory, pg_cluster: Any) -> None:
    """A real PostgreSQL crash (immediate shutdown) and restart while a writer keeps writing."""
    store = make_store(primary=pg_cluster.dsn, primary_timeout=TIMEOUT, circuit_reset_max=1.0)
    outages = Outages(store)
    with Writer(store) as writer:
        writer.wait_acks("up", "primary")
        writer.phase = "crashing"
        pg_cluster.crash()
        writer.phase = "crashed"  # the server is gone from here on
        wait_for(lambda: outages.down == 1, timeout=30)
        writer.wait_acks("crashed", "local")
        writer.phase = "restarted"
        pg_cluster.start()
        writer.wait_acks("restarted", "primary")  # write-through resumes by itself
        writer.finish()
    assert writer.failures == []
    tiers = {e[1] for e in writer.acked.values() if e[2] == "crashed"}
    assert tiers == {"local"}
    assert "primary" in {e[1] for e in writer.acked.values() if e[2] == "restarted"}
    assert max(e[3] for e in writer.acked.values()) < BUDGET
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        rows = primary_rows(conn, store.config.primary_schema, "orders")
    writer.assert_all_on_primary_once(rows)
