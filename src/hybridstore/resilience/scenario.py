"""What every scenario shares: its context (sandbox, seed, duration, rate), its result (criteria and figures, the
JSON report's shape), and `Trial`, the common course of a run — open nodes (behind a fault proxy), start writers,
inject the fault in the middle of the run, heal, let the nodes settle, then check the history against the final
states of the primary and of every node.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any
from urllib.parse import urlsplit

from ..errors import HybridStoreError
from ..store import HybridStore
from .checker import Key, Rule, Verdict, check, checksum
from .history import History
from .proxy import FaultProxy
from .sandbox import Sandbox
from .workload import Writer

log = logging.getLogger("hybridstore.resilience")
Step = Callable[[str], None]


@dataclass
class RunContext:
    """What a scenario gets from the runner."""

    sandbox: Sandbox
    duration: float
    seed: int
    rate: float = 100.0  # writes per second per writer
    step: Step = lambda _msg: None
    cancel: threading.Event = field(default_factory=threading.Event)  # set: end the scenario as soon as possible

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` (at most); True if the run was cancelled meanwhile."""
        return self.cancel.wait(max(0.0, seconds))

    def rng(self, name: str) -> Random:
        """A generator of its own for each use, all derived from the run's seed (a scenario stays reproducible)."""
        return Random(f"{self.seed}/{name}")


@dataclass
class Criterion:
    text: str
    passed: bool
    value: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "passed": self.passed, "value": self.value}


@dataclass
class ScenarioResult:
    """One scenario's entry in the report."""

    name: str
    criteria: list[Criterion] = field(default_factory=list)
    verdict_data: Verdict | None = None
    detection_s: float | None = None
    recovery_s: float | None = None
    duration_s: float = 0.0
    timeline: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.criteria) and all(c.passed for c in self.criteria)

    def require(self, text: str, passed: bool, value: Any = None) -> None:
        self.criteria.append(Criterion(text, bool(passed), value))

    def to_dict(self) -> dict[str, Any]:
        v = self.verdict_data or Verdict()
        all_phases = v.latency.get("all", {})
        return {
            "name": self.name,
            "verdict": "pass" if self.passed else "fail",
            "criteria": [c.to_dict() for c in self.criteria],
            "ops": v.attempted,
            "acknowledged": v.acknowledged,
            "failed": v.failed,
            "unknown": v.unknown,
            "lost": v.lost,
            "duplicated": v.duplicated,
            "phantom": v.phantom,
            "shrinking": v.shrinking,
            "converged": v.converged,
            "divergent": v.divergent,
            "availability": v.availability,
            "p50_ms": all_phases.get("p50_ms"),
            "p99_ms": all_phases.get("p99_ms"),
            "latency": v.latency,
            "detection_s": _round(self.detection_s),
            "recovery_s": _round(self.recovery_s),
            "duration_s": _round(self.duration_s),
            "problems": v.problems,
            "details": self.details,
            "timeline": self.timeline,
            "error": self.error,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class Scenario:
    """A named scenario. Subclasses set ``name``, ``summary`` and ``min_duration`` and implement `run`."""

    name = ""
    summary = ""
    min_duration = 1.0  # seconds: a shorter --duration is raised to this
    teeth = "outbox_drop"  # the test-only fault (hybridstore.faults) this scenario must catch

    def run(self, ctx: RunContext) -> ScenarioResult:
        raise NotImplementedError


def proxy_for(url: str, seed: int) -> FaultProxy:
    parts = urlsplit(url)
    return FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432, seed=seed)


NODE_DEFAULTS: dict[str, Any] = {
    "primary_timeout": 0.5,
    "pull_interval": 0.2,
    "health_interval": 0.2,
    "circuit_reset": 0.2,
    "circuit_reset_max": 1.0,
    "retry_cap": 0.5,
}


class Trial:
    """The common course of a scenario: see the module docstring. Use as a context manager: it closes its nodes
    and its proxy."""

    def __init__(self, ctx: RunContext, name: str, *, proxy: bool = True) -> None:
        self.ctx = ctx
        self.name = name
        self.history = History()
        self.proxy = proxy_for(ctx.sandbox.primary_url, ctx.seed) if proxy else None
        self.url = self.proxy.url(ctx.sandbox.primary_url) if self.proxy else ctx.sandbox.primary_url
        self.nodes: dict[str, HybridStore] = {}
        self.writers: list[Writer] = []
        self.result = ScenarioResult(name)
        self.rules: dict[str, Rule] = {}
        self.fault_started: float | None = None
        self.healed_at: float | None = None
        self.drained_at: float | None = None
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._started = time.monotonic()

    def __enter__(self) -> Trial:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- nodes and writers ------------------------------------------------------------------------------------

    def open_node(self, name: str, *, url: str | None = None, **options: Any) -> HybridStore:
        opts = {**NODE_DEFAULTS, **options}
        store = self.ctx.sandbox.open_node(name, url or self.url, **opts)
        self.nodes[name] = store
        return store

    def close_node(self, name: str) -> None:
        store = self.nodes.pop(name, None)
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def start_writers(self, names: Sequence[str] | None = None, *, rate: float | None = None, **options: Any) -> None:
        for name in names or list(self.nodes):
            writer = Writer(
                self.history,
                self.nodes[name],
                name,
                rate=rate or self.ctx.rate,
                rng=self.ctx.rng(f"{self.name}/{name}"),
                **options,
            )
            self.writers.append(writer.start())

    def stop_writers(self) -> None:
        for writer in self.writers:
            writer.stop()
        self.writers = []

    # -- the course of the run --------------------------------------------------------------------------------

    def phases(self) -> tuple[float, float, float]:
        d = self.ctx.duration
        return 0.25 * d, 0.5 * d, 0.25 * d

    def sleep(self, seconds: float) -> None:
        self.ctx.wait(seconds)  # a cancelled run goes through the rest of the course at once

    @contextlib.contextmanager
    def fault(self, what: str) -> Iterator[None]:
        self.ctx.step(f"{self.name}: {what}")
        with self.history.fault(what) as window:
            if self.fault_started is None:
                self.fault_started = window.start
            yield

    def heal(self) -> None:
        """End the fault; a watcher then notes when the backlog it left is gone (`drained_at`): every node's
        outbox and journal empty at once, while the writers go on."""
        if self.proxy is not None:
            self.proxy.restore()
        self.healed_at = self.history.mark("healed")
        self._watcher = threading.Thread(target=self._watch_drain, name="resilience-drain-watch", daemon=True)
        self._watcher.start()

    def _watch_drain(self) -> None:
        deadline = time.monotonic() + 120.0
        while not self._closing.is_set() and time.monotonic() < deadline and self.drained_at is None:
            try:
                empty = all(
                    s.status(fresh=True).outbox["depth"] == 0 and len(s.node.journal) == 0
                    for s in list(self.nodes.values())
                )
            except HybridStoreError:
                empty = False  # a node closing or reopening: look again
            if empty:
                self.drained_at = self.history.mark("drained")
                return
            self._closing.wait(0.02)

    def run_writes_with(self, inject: Callable[[], None], what: str, *, hold: bool = True, heal: bool = True) -> None:
        """Writers on every node; ``inject`` starts the fault in the middle of the run, which then lasts the middle
        half (``hold=False``: ``inject`` itself returns at the fault window's end), then the heal."""
        before, during, after = self.phases()
        self.start_writers()
        self.sleep(before)
        with self.fault(what):
            inject()
            if hold:
                self.sleep(during)
        if heal:
            self.heal()
        self.sleep(after)
        self.stop_writers()

    def settle(self, timeout: float | None = None, *, quiet: float = 1.5) -> bool:
        """After the heal: push, pull and compare until every node holds what the primary holds; the recovery time
        runs from the heal to that moment. Gives up when time is up, or when nothing is left to push and nothing
        has changed anywhere for ``quiet`` seconds (a node that will never converge by itself)."""
        self.ctx.step(f"{self.name}: settling")
        timeout = timeout if timeout is not None else min(40.0, 10.0 + self.ctx.duration / 2)
        deadline = time.monotonic() + timeout
        last: tuple[object, float] | None = None
        while time.monotonic() < deadline and not self.ctx.cancel.is_set():
            remaining = 0
            for store in self.nodes.values():
                try:
                    remaining += store.sync_now().remaining
                except HybridStoreError as exc:
                    log.debug("settle: %s", exc)
                    remaining += 1
            states = self._states()
            if remaining == 0 and states is not None:
                primary, nodes = states
                if all(copy == primary for copy in nodes):
                    if self.healed_at is not None and self.result.recovery_s is None:
                        # from the heal to the backlog's drain (the writers ran meanwhile), else to now
                        end = self.drained_at if self.drained_at is not None else self.history.now()
                        self.result.recovery_s = end - self.healed_at
                    return True
                fingerprint = (checksum(primary), tuple(checksum(copy) for copy in nodes))
                if last is None or last[0] != fingerprint:
                    last = (fingerprint, time.monotonic())
                elif time.monotonic() - last[1] >= quiet:
                    return False
            time.sleep(0.1)
        return False

    def _states(self) -> tuple[dict[Key, Any], list[dict[Key, Any]]] | None:
        try:
            primary = {k: row.value for k, row in self.ctx.sandbox.primary_state().items()}
            return primary, [self.ctx.sandbox.node_state(name) for name in self.nodes]
        except Exception as exc:  # a node's file being rebuilt, the primary unreachable: not yet
            log.debug("settle: %s", exc)
            return None

    def finish(self, *, availability: float = 0.99, extra_nodes: Sequence[str] = ()) -> ScenarioResult:
        """Close the nodes, read the final states, check the history, state the common criteria."""
        names = [*self.nodes, *extra_nodes]
        self._closing.set()
        for name in list(self.nodes):
            self.close_node(name)
        primary = self.ctx.sandbox.primary_state()
        states = {name: self.ctx.sandbox.node_state(name) for name in names}
        v = check(
            self.history.snapshot(),
            primary,
            states,
            observations=self.history.observations,
            rules=self.rules,
            phase_of=self.history.phase_of,
        )
        r = self.result
        r.verdict_data = v
        if r.detection_s is None:
            r.detection_s = self.detection()
        r.require("no acknowledged write lost", v.lost == 0, v.lost)
        r.require("no write applied twice", v.duplicated == 0, v.duplicated)
        r.require("nothing in the final state that was not written", v.phantom == 0, v.phantom)
        r.require("versions only grow", v.shrinking == 0, v.shrinking)
        r.require("every node converged to the primary (checksums)", v.converged, v.divergent or "all equal")
        if availability > 0:  # 0: refusing writes is right in this scenario (losing them is not)
            r.require(f"availability ≥ {availability:.0%}", v.availability >= availability, v.availability)
        r.timeline = timeline(self.history)
        if self.proxy is not None:
            r.details["proxy"] = dict(self.proxy.counters)
        r.details["tiers"] = tier_counts(self.history)
        r.duration_s = time.monotonic() - self._started
        return r

    def detection(self) -> float | None:
        """From the fault's start to the first write it diverted from the primary (queued or journaled)."""
        if self.fault_started is None:
            return None
        diverted = [
            op.completed
            for op in self.history.snapshot()
            if op.outcome == "ok"
            and op.tier != "primary"
            and op.completed is not None
            and op.invoked >= self.fault_started
        ]
        return min(diverted) - self.fault_started if diverted else None

    def close(self) -> None:
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(5)
        self.stop_writers()
        for name in list(self.nodes):
            self.close_node(name)
        if self.proxy is not None:
            self.proxy.close()


def tier_counts(history: History) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in history.snapshot():
        if op.outcome == "ok" and op.tier:
            counts[op.tier] = counts.get(op.tier, 0) + 1
    return counts


def timeline(history: History, buckets: int = 60) -> dict[str, Any]:
    """The run cut in ``buckets`` slices: attempted, acknowledged, p50 and max latency per slice; fault windows."""
    ops = history.snapshot()
    end = max([history.now(), *(op.completed or op.invoked for op in ops)]) if ops else history.now()
    width = max(end / buckets, 1e-3)
    slices: list[dict[str, Any]] = []
    for i in range(buckets):
        lo, hi = i * width, (i + 1) * width
        inside = [op for op in ops if lo <= op.invoked < hi]
        lat = sorted(op.latency_ms for op in inside if op.outcome == "ok" and op.latency_ms is not None)
        slices.append(
            {
                "t": round(lo, 3),
                "attempted": len(inside),
                "acknowledged": sum(1 for op in inside if op.outcome == "ok"),
                "p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
                "max_ms": round(lat[-1], 2) if lat else None,
            }
        )
    return {
        "width_s": round(width, 4),
        "slices": slices,
        "faults": [
            {"name": w.name, "start": round(w.start, 3), "end": None if w.end is None else round(w.end, 3)}
            for w in history.faults
        ],
        "marks": [{"name": n, "at": round(t, 3)} for n, t in history.marks],
    }
