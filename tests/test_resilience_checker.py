"""The checker, fed hand-made histories: it catches a lost acknowledged write, a duplicate, a shrinking version, a
divergent node and a phantom value, and accepts unknown outcomes either way."""

from __future__ import annotations

from typing import Any

from hybridstore.resilience.checker import Row, check, checksum, percentile
from hybridstore.resilience.history import History


class Tick:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


def history() -> History:
    return History(clock=Tick())


def write(h: History, key: str, value: Any, outcome: str = "ok", *, node: str = "a", hlc: str = "", coll: str = "c"):
    op = h.invoke(node, coll, key, value)
    if outcome == "ok":
        h.ok(op, tier="primary", hlc=hlc or f"{op.id:04d}")
    elif outcome == "fail":
        h.fail(op, "refused")
    elif outcome == "unknown":
        h.unknown(op, "killed")
    return op


def state(**rows: Any) -> dict[tuple[str, str], Row]:
    return {("c", k): Row(v) for k, v in rows.items()}


def values(**rows: Any) -> dict[tuple[str, str], Any]:
    return {("c", k): v for k, v in rows.items()}


def test_a_clean_history_passes_with_its_figures() -> None:
    h = history()
    write(h, "k1", 1)
    write(h, "k2", 2)
    write(h, "k3", 3, "fail")
    v = check(h.ops, state(k1=1, k2=2), {"a": values(k1=1, k2=2)}, phase_of=h.phase_of)
    assert v.ok, v.problems
    assert (v.attempted, v.acknowledged, v.failed, v.lost, v.duplicated) == (3, 2, 1, 0, 0)
    assert v.availability == round(2 / 3, 6)
    assert v.latency["all"]["count"] == 2 and v.latency["all"]["p50_ms"] is not None
    assert v.checksums["a"] == v.checksums["primary"]


def test_a_lost_acknowledged_write_is_caught() -> None:
    h = history()
    write(h, "k1", 1)
    write(h, "k2", 2)
    v = check(h.ops, state(k1=1), {})
    assert not v.ok and v.lost == 1 and "k2" in v.problems[0]


def test_an_acknowledged_write_overwritten_by_an_older_one_is_lost() -> None:
    h = history()
    write(h, "k", "new", hlc="0009")
    write(h, "k", "old", hlc="0001")
    assert check(h.ops, state(k="old"), {}).lost == 1
    assert check(h.ops, state(k="new"), {}).ok


def test_a_duplicate_is_caught() -> None:
    h = history()
    write(h, "k1", 1)
    v = check(h.ops, {("c", "k1"): Row(1, version=2)}, {})
    assert not v.ok and v.duplicated == 1 and "more than once" in v.problems[0]
    write(h, "k1", 1)  # written twice: version 2 is right
    assert check(h.ops, {("c", "k1"): Row(1, version=2)}, {}).ok


def test_a_shrinking_version_is_caught() -> None:
    h = history()
    write(h, "k", 1)
    h.observe("a", "c", "k", 3)
    h.observe("b", "c", "k", 1)  # another observer may be behind
    h.observe("a", "c", "k", 3)
    h.observe("a", "c", "k", 2)
    v = check(h.ops, state(k=1), {}, observations=h.observations)
    assert v.shrinking == 1 and not v.ok


def test_a_divergent_node_is_caught() -> None:
    h = history()
    write(h, "k1", 1)
    write(h, "k2", 2)
    v = check(h.ops, state(k1=1, k2=2), {"a": values(k1=1, k2=2), "b": values(k1=1), "c": values(k1=1, k2=3)})
    assert not v.converged and v.divergent == {"b": 1, "c": 1}
    assert v.checksums["a"] == v.checksums["primary"] != v.checksums["b"]


def test_unknown_outcomes_are_accepted_either_way() -> None:
    h = history()
    write(h, "k1", 1)
    write(h, "k2", 2, "unknown")
    h.invoke("a", "c", "k3", 3)  # still in flight when the client died
    assert check(h.ops, state(k1=1), {}).ok
    assert check(h.ops, state(k1=1, k2=2, k3=3), {}).ok
    v = check(h.ops, state(k1=1, k2=2), {})
    assert v.unknown == 2 and v.availability == round(1 / 3, 6)


def test_a_phantom_value_is_caught() -> None:
    h = history()
    write(h, "k1", 1)
    write(h, "k2", 2, "fail")
    assert check(h.ops, state(k1=1, k2=2), {}).phantom == 1, "the store said k2 failed"
    assert check(h.ops, state(k1=1, k9=9), {}).phantom == 1, "nobody wrote k9"
    assert check(h.ops, state(k1=7), {}).phantom == 1, "nobody wrote 7"


def test_merge_rule_keeps_every_owners_newest_counter() -> None:
    h = history()
    write(h, "k", {"a": 1}, node="a", coll="m")
    write(h, "k", {"b": 1}, node="b", coll="m")
    write(h, "k", {"a": 2, "b": 1}, node="a", coll="m")
    rules: Any = {"m": "merge"}
    assert check(h.ops, {("m", "k"): Row({"a": 2, "b": 1}, 3)}, {}, rules=rules).ok
    lost = check(h.ops, {("m", "k"): Row({"a": 1, "b": 1}, 3)}, {}, rules=rules)
    assert lost.lost == 1 and "counter 2" in lost.problems[0]


def test_latency_is_split_by_phase() -> None:
    h = history()
    write(h, "before", 1)
    with h.fault("outage"):
        write(h, "during", 2)
        write(h, "during2", 3)
    write(h, "after", 4)
    v = check(h.ops, state(before=1, during=2, during2=3, after=4), {}, phase_of=h.phase_of)
    assert [v.latency[p]["count"] for p in ("before", "during", "after", "all")] == [1, 2, 1, 4]


def test_percentiles_and_checksums() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert checksum({("c", "a"): 1, ("c", "b"): 2}) == checksum({("c", "b"): 2, ("c", "a"): 1})
