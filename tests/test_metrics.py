"""Metrics: the Prometheus text parses with prometheus-client's own parser and the numbers match the operations
performed; the plain-data view says the same."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybridstore import ValidationError
from hybridstore.metrics import FOLD_EVERY, LATENCY_BUCKETS

from .fix_db import StoreFactory


def samples(store: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = store.metrics.prometheus_text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict[Any, float], name: str, **labels: str) -> float:
    return m[(name, tuple(sorted(labels.items())))]


def test_prometheus_text_matches_operations(make_store: StoreFactory) -> None:
    store = make_store(background=False)
    for i in range(10):
        assert store.set("c", f"p{i}", {"i": i}).tier == "primary"
    assert store.get("c", "p1") is not None
    store.node.gateway.circuit.trip()  # the primary is now avoided: writes are queued
    for i in range(5):
        assert store.set("c", f"q{i}", i).tier == "local"
    store.delete("c", "p0")
    store.delete("c", "p1")
    assert store.get("c", "q0") is not None and store.get("c", "nope") is None
    assert len(store.list("c", limit=100)) == 13
    with pytest.raises(ValidationError):
        store.set("bad name!", "k", 1)
    status = store.recovery.check(act=False)
    assert status["overall"] in ("healthy", "degraded")

    m = samples(store)
    assert value(m, "hybridstore_op_seconds_count", op="set", tier="primary") == 10
    assert value(m, "hybridstore_op_seconds_count", op="set", tier="local") == 5
    assert value(m, "hybridstore_op_seconds_count", op="delete", tier="local") == 2
    assert value(m, "hybridstore_op_seconds_count", op="get", tier="primary") == 1
    assert value(m, "hybridstore_op_seconds_count", op="get", tier="local") == 1
    assert value(m, "hybridstore_op_seconds_count", op="get", tier="none") == 1
    assert value(m, "hybridstore_op_seconds_count", op="list", tier="local") == 1
    assert value(m, "hybridstore_op_seconds_bucket", op="set", tier="local", le="+Inf") == 5
    assert 0 < value(m, "hybridstore_op_seconds_sum", op="set", tier="primary") < 10
    assert value(m, "hybridstore_op_failures_total", op="set", error="ValidationError") == 1
    assert value(m, "hybridstore_outbox_depth") == 7
    assert value(m, "hybridstore_records", collection="c") == 13
    assert value(m, "hybridstore_data_bytes", file="local") > 0
    assert value(m, "hybridstore_sync_ops_total", outcome="pushed") == 0
    assert value(m, "hybridstore_component_health", component="local") == 1.0
    assert value(m, "hybridstore_alert_active", kind="primary_outage") == 0
    assert ("hybridstore_conflicts_unresolved", ()) not in m, "unknown while the primary is avoided"

    report = store.sync_now()
    assert report.pushed == 7
    m = samples(store)
    assert value(m, "hybridstore_sync_ops_total", outcome="pushed") == 7
    assert value(m, "hybridstore_sync_success_ratio") == 1.0
    assert value(m, "hybridstore_outbox_depth") == 0
    assert value(m, "hybridstore_records", collection="c") == 13

    store.recovery.register_sync_status(lambda: {"dead_letters": 2, "unresolved_conflicts": 4})
    store.recovery.check(act=False)
    m = samples(store)
    assert value(m, "hybridstore_conflicts_unresolved") == 4 and value(m, "hybridstore_dead_letters") == 2
    assert value(m, "hybridstore_state", state="healthy") + value(m, "hybridstore_state", state="degraded") == 1

    data = store.metrics.data()
    ops = {(o["op"], o["tier"]): o["count"] for o in data["ops"]}
    assert ops[("set", "primary")] == 10 and ops[("set", "local")] == 5 and ops[("delete", "local")] == 2
    assert data["failures"] == [{"op": "set", "error": "ValidationError", "count": 1}]
    assert data["records"] == {"c": 13} and data["outbox"]["depth"] == 0
    assert data["sync"]["pushed"] == 7 and data["sync"]["conflicts"] == 4


def test_two_stores_keep_separate_metrics(make_store: StoreFactory) -> None:
    a = make_store("a", primary=False, background=False)
    b = make_store("b", primary=False, background=False)
    for i in range(3):
        a.set("c", f"k{i}", i)
    b.set("c", "k", 1)
    assert value(samples(a), "hybridstore_op_seconds_count", op="set", tier="local") == 3
    assert value(samples(b), "hybridstore_op_seconds_count", op="set", tier="local") == 1


def test_bulk_writes_are_timed_once_per_call(make_store: StoreFactory) -> None:
    store = make_store("bulk", primary=False, background=False)
    store.set_many("c", [(f"k{i}", i) for i in range(50)])
    store.set_many("c", [])
    m = samples(store)
    assert value(m, "hybridstore_op_seconds_count", op="set_many", tier="local") == 1
    assert value(m, "hybridstore_op_seconds_count", op="set_many", tier="none") == 1


def test_operations_recorded_from_many_threads_are_all_counted(make_store: StoreFactory) -> None:
    """Operations are queued and counted into the histograms in batches: none is lost or counted twice, whichever
    thread records or reads, across many batches."""
    store = make_store(background=False)
    metrics = store.metrics
    per_thread = FOLD_EVERY * 3 + 7
    elapsed = [0.00005, 0.0003, 0.002, 10.0]  # a bucket each, the last one +Inf

    def work(n: int) -> None:
        for i in range(per_thread):
            metrics.record("probe", "local", elapsed[(i + n) % len(elapsed)])
            if i % 500 == 0:
                metrics.op_stats()  # readers fold too, meanwhile

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    buckets, total = metrics.op_stats()[("probe", "local")]
    assert buckets[-1] == 4 * per_thread
    per_value = [sum(1 for n in range(4) for i in range(per_thread) if (i + n) % 4 == j) for j in range(4)]
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    for value_, count in zip(elapsed, per_value, strict=True):
        first = next((i for i, b in enumerate(LATENCY_BUCKETS) if value_ <= b), len(LATENCY_BUCKETS))
        for i in range(first, len(expected)):
            expected[i] += count
    assert buckets == expected
    assert total == pytest.approx(sum(v * c for v, c in zip(elapsed, per_value, strict=True)))
