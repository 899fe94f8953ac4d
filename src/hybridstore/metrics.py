"""Metrics of one store: a prometheus-client registry of its own (never the global one, so two stores in one
process do not mix), plus the same figures as plain data.

Recorded on the operation paths (cheap: one append to a queue that is counted into the histograms in batches,
when read and every `FOLD_EVERY` operations — prometheus-client's own histogram costs many times that):
``hybridstore_op_seconds{op, tier}`` (latency per operation and serving tier; its ``_count`` is the op count)
and ``hybridstore_op_failures_total{op, error}``. Read when scraped, from the node's status snapshot (no probe
of the primary: the monitor refreshes that on its own schedule): outbox depth and oldest pending age, sync
counters and success rate, conflicts and dead letters, data size on disk, records per collection, each
component's health, the overall state and active alerts.
`prometheus_text()` is what a ``/metrics`` endpoint serves; `data()` is the plain-data view.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import HybridStoreError
from .model import Record, WriteResult

if TYPE_CHECKING:
    from .node.core import NodeCore

log = logging.getLogger("hybridstore.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STATE_VALUE = {"healthy": 1.0, "degraded": 0.5, "down": 0.0}
FOLD_EVERY = 1024  # recorded operations kept before they are counted into the histograms (bounds the memory)
_perf = time.perf_counter
_bucket = bisect.bisect_left
P = ParamSpec("P")
R = TypeVar("R")


class StoreMetrics:
    def __init__(self, node: NodeCore) -> None:
        self._node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        # (op, tier) -> [count per bucket (the last one is +Inf)..., sum of seconds]
        self._ops: dict[tuple[str, str], list[float]] = {}
        # Operations recorded but not yet counted into ``_ops``: an append is all an operation pays; they are folded
        # in batches (`_fold`) when read and every `FOLD_EVERY` operations. A deque: appends and pops from any
        # thread are atomic, so no operation is lost or counted twice.
        self._recent: deque[tuple[str, str, float]] = deque()
        self.op_failures = Counter(
            "hybridstore_op_failures",
            "Store operations that raised, by error class.",
            ["op", "error"],
            registry=self.registry,
        )
        self.registry.register(_OpCollector(self))
        self.registry.register(_StoreCollector(node))

    # -- the operation paths ------------------------------------------------------------------------------------

    def observe(self, op: str, tier: str, start: float) -> None:
        """Record one operation that began at ``start`` (``time.perf_counter()``) and was served by ``tier``."""
        self.record(op, tier, _perf() - start)

    def record(self, op: str, tier: str, elapsed: float) -> None:
        """Record one operation of ``elapsed`` seconds served by ``tier``."""
        recent = self._recent
        recent.append((op, tier, elapsed))
        if len(recent) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        """Count the recorded operations into the histograms."""
        recent, ops, width = self._recent, self._ops, len(LATENCY_BUCKETS) + 2
        with self._lock:
            while recent:
                try:
                    op, tier, elapsed = recent.popleft()
                except IndexError:  # another thread took the last one
                    break
                stats = ops.get((op, tier))
                if stats is None:
                    stats = ops[op, tier] = [0.0] * width
                stats[_bucket(LATENCY_BUCKETS, elapsed)] += 1
                stats[-1] += elapsed

    def op_stats(self) -> dict[tuple[str, str], tuple[list[int], float]]:
        """(op, tier) -> (cumulative count per bucket, +Inf last; sum of seconds)."""
        self._fold()
        with self._lock:
            snapshot = {k: list(v) for k, v in self._ops.items()}
        out = {}
        for key, v in snapshot.items():
            cumulative, total = [], 0
            for n in v[:-1]:
                total += int(n)
                cumulative.append(total)
            out[key] = (cumulative, v[-1])
        return out

    def failed(self, op: str, exc: BaseException) -> None:
        self.op_failures.labels(op, type(exc).__name__).inc()

    # -- views ----------------------------------------------------------------------------------------------------

    def prometheus_text(self) -> str:
        """Every metric in the Prometheus text exposition format (serve with `CONTENT_TYPE`; UTF-8 on the wire)."""
        return generate_latest(self.registry).decode("utf-8")

    def data(self) -> dict[str, Any]:
        """The same figures as plain data: per-op counts and latencies, failures, and the store figures."""
        ops: list[dict[str, Any]] = []
        for (op, tier), (buckets, total) in sorted(self.op_stats().items()):
            n = buckets[-1]
            ops.append({"op": op, "tier": tier, "count": n, "mean_ms": round(total / n * 1000, 4) if n else None})
        failures = [
            {"op": s.labels["op"], "error": s.labels["error"], "count": int(s.value)}
            for family in self.op_failures.collect()
            for s in family.samples
            if s.name.endswith("_total")
        ]
        return {"ops": ops, "failures": failures, **store_figures(self._node)}


def _tier(result: Any) -> str:
    """The tier that served an operation's result: a `WriteResult`'s tier (the first one's for a list), a
    `Record`'s source, the first record's source for a `Page`, ``"none"`` for no record."""
    cls = type(result)
    if cls is Record:  # the hot paths first
        return result.source  # type: ignore[no-any-return]
    if cls is WriteResult:
        return result.tier  # type: ignore[no-any-return]
    if result is None:
        return "none"
    if isinstance(result, list):  # set_many: its writes share a tier
        return _tier(result[0]) if result else "none"
    return str(result.records[0].source) if result.records else "none"


def timed(op: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a store method: time it into ``self.metrics`` by serving tier, count our errors it raises."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            start = _perf()
            try:
                result = fn(*args, **kwargs)
            except HybridStoreError as exc:
                args[0].metrics.failed(op, exc)  # type: ignore[attr-defined]
                raise
            elapsed = _perf() - start
            cls = type(result)  # the hot paths' tiers without a call to `_tier`
            served: Any = result
            tier = served.source if cls is Record else served.tier if cls is WriteResult else _tier(result)
            metrics: StoreMetrics = args[0].metrics  # type: ignore[attr-defined]
            recent = metrics._recent  # `StoreMetrics.record`, without its call
            recent.append((op, tier, elapsed))
            if len(recent) >= FOLD_EVERY:
                metrics._fold()
            return result

        return inner

    return wrap


def _safe(fn: Callable[[], Any], default: Any = None) -> Any:
    try:
        return fn()
    except (HybridStoreError, OSError):
        return default


def _file_size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += path.with_name(path.name + suffix).stat().st_size
    return total


def store_figures(node: NodeCore) -> dict[str, Any]:
    """Figures from the node's status snapshot (no probing of the primary: that is the health monitor's job)."""
    snap = node.status.snapshot()
    sync = snap.sync
    health = snap.sections.get("health") or {}
    files = {
        "local": _file_size(node.data_dir / "local.db"),
        "journal": _file_size(node.data_dir / "journal.log"),
        "recovery": _file_size(node.data_dir / "recovery.db"),
    }
    # The health monitor's counts when it has them (its sync engine hook may say more), else the snapshot's.
    components = health.get("components") or {}
    conflicts = (components.get("conflicts") or {}).get("count")
    if conflicts is None and snap.conflicts is not None:
        conflicts = sum(int(c.get("open", 0)) for c in snap.conflicts.values())
    dead = (components.get("dead_letters") or {}).get("count", snap.dead_letters)
    local = node.slot.tier
    return {
        "outbox": {"depth": snap.outbox["depth"], "oldest_pending_age_s": snap.outbox["oldest_pending_age_s"]},
        "sync": {
            "pushed": sync["pushed"],
            "superseded": sync["superseded"],
            "duplicates": sync["duplicates"],
            "failed": sync["failed"],
            "success_rate": sync["success_rate"],
            "conflicts": conflicts,
            "dead_letters": dead,
        },
        "data_bytes": files,
        "records": _safe(local.collection_counts, {}) if local is not None else {},
        "tiers": {k: v["state"] for k, v in (health.get("components") or {}).items()},
        "overall": snap.overall,
        "alerts_active": [a["kind"] for a in health.get("alerts", [])],
    }


class _OpCollector(Collector):
    def __init__(self, metrics: StoreMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "hybridstore_op_seconds",
            "Latency of store operations by serving tier (count = number of operations).",
            labels=["op", "tier"],
        )
        bounds = [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for (op, tier), (buckets, total) in sorted(self._metrics.op_stats().items()):
            family.add_metric([op, tier], list(zip(bounds, buckets, strict=True)), total)
        yield family


class _StoreCollector(Collector):
    def __init__(self, node: NodeCore) -> None:
        self._node = node

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        try:
            f = store_figures(self._node)
        except Exception:  # a scrape must not break the caller; the log says why
            log.exception("collecting store metrics failed")
            return
        yield _gauge(
            "hybridstore_outbox_depth", "Writes waiting for the primary (outbox + journal).", f["outbox"]["depth"]
        )
        age = f["outbox"]["oldest_pending_age_s"]
        yield _gauge("hybridstore_sync_lag_seconds", "Age of the oldest write waiting for the primary.", age or 0.0)
        sync = f["sync"]
        ops = CounterMetricFamily(
            "hybridstore_sync_ops", "Queued writes settled by pushes, by outcome.", labels=["outcome"]
        )
        for outcome in ("pushed", "superseded", "duplicates", "failed"):
            ops.add_metric([outcome], sync[outcome])
        yield ops
        if sync["success_rate"] is not None:
            yield _gauge("hybridstore_sync_success_ratio", "Share of push attempts that settled.", sync["success_rate"])
        if sync["conflicts"] is not None:
            yield _gauge("hybridstore_conflicts_unresolved", "Unresolved sync conflicts.", sync["conflicts"])
        if sync["dead_letters"] is not None:
            yield _gauge("hybridstore_dead_letters", "Writes the primary refused for good.", sync["dead_letters"])
        size = GaugeMetricFamily("hybridstore_data_bytes", "Size of the node's files on disk.", labels=["file"])
        for name, value in f["data_bytes"].items():
            size.add_metric([name], value)
        yield size
        records = GaugeMetricFamily(
            "hybridstore_records", "Live records held locally, per collection.", labels=["collection"]
        )
        for collection, count in sorted(f["records"].items()):
            records.add_metric([collection], count)
        yield records
        tiers = GaugeMetricFamily(
            "hybridstore_component_health", "Component health: 1 healthy, 0.5 degraded, 0 down.", labels=["component"]
        )
        for name, state in sorted(f["tiers"].items()):
            if state in STATE_VALUE:
                tiers.add_metric([name], STATE_VALUE[state])
        yield tiers
        overall = GaugeMetricFamily("hybridstore_state", "Overall state of the node (1 = current).", labels=["state"])
        for state in ("healthy", "degraded", "outage", "misconfigured", "recovering"):
            overall.add_metric([state], 1.0 if f["overall"] == state else 0.0)
        yield overall
        alerts = GaugeMetricFamily("hybridstore_alert_active", "Active alerts by kind.", labels=["kind"])
        from .recovery.alerts import ALERT_KINDS

        for kind in ALERT_KINDS:
            alerts.add_metric([kind], 1.0 if kind in f["alerts_active"] else 0.0)
        yield alerts


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
