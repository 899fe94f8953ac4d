"""One contract suite, run over every tier (see the `Tier` protocol in hybridstore.tiers.base)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridstore.clock import HybridClock
from hybridstore.model import Op
from hybridstore.tiers.base import Change, Tier
from hybridstore.tiers.journal import JournalTier
from hybridstore.tiers.local import LocalTier
from hybridstore.tiers.primary import PrimaryTier

from .faults import wait_for


@pytest.fixture(params=["primary", "local", "journal"])
def tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tier]:
    t: Any
    if request.param == "primary":
        t = PrimaryTier(request.getfixturevalue("pg_dsn"), schema=request.getfixturevalue("pg_schema"))
    elif request.param == "local":
        t = LocalTier(tmp_path / "local.db")
    else:
        t = JournalTier(tmp_path / "journal.log")
    yield t
    t.close()


def settled_changes(tier: Tier, after: int, expected: int) -> list[Change]:
    """The primary's feed never reads past the oldest transaction still running anywhere on the server (that is
    what makes it safe), so another session's open transaction can hold it back for a moment: poll until at least
    ``expected`` changes are readable (the caller checks there are no more)."""
    changes: list[Change] = []

    def enough() -> bool:
        nonlocal changes
        changes = tier.changes(after, 100)
        return len(changes) >= expected

    wait_for(enough, timeout=30)
    return changes


class Writer:
    def __init__(self, node: str = "n1") -> None:
        self.clock = HybridClock(node)
        self.node = node

    def op(self, key: str, value: str | None, collection: str = "c", base: int = 0) -> Op:
        return Op(str(uuid.uuid4()), collection, key, value, self.clock.now(), self.node, base, 1.0)


def test_put_then_get(tier: Tier) -> None:
    w = Writer()
    row = tier.put(w.op("k1", '{"a":1}'))
    assert row.key == "k1" and not row.deleted
    got = tier.get("c", "k1")
    assert got is not None and got.value_json is not None
    assert got.value_json.replace(" ", "") == '{"a":1}'
    assert tier.get("c", "missing") is None
    assert tier.get("other", "k1") is None


def test_newer_write_replaces(tier: Tier) -> None:
    w = Writer()
    tier.put(w.op("k", '"v1"'))
    tier.put(w.op("k", '"v2"', base=1))
    got = tier.get("c", "k")
    assert got is not None and got.value_json == '"v2"'


def test_tombstone_deletes(tier: Tier) -> None:
    w = Writer()
    tier.put(w.op("k", "1"))
    tier.put(w.op("k", None, base=1))
    got = tier.get("c", "k")
    assert got is not None and got.deleted
    assert [r.key for r in tier.scan("c")] == []


def test_put_is_idempotent_by_op_id(tier: Tier) -> None:
    w = Writer()
    op = w.op("k", '"once"')
    first = tier.put(op)
    tier.put(w.op("other", '"x"'))
    again = tier.put(op)
    assert again.value_json == first.value_json and again.version == first.version
    got = tier.get("c", "k")
    assert got is not None and got.version == first.version and got.hlc == first.hlc
    assert len(settled_changes(tier, 0, 2)) == 2, "the repeated op was not recorded twice"


def test_stale_write_never_hides_a_newer_one(tier: Tier) -> None:
    old_writer, new_writer = Writer("a"), Writer("b")
    stale = old_writer.op("k", '"old"')
    tier.put(new_writer.op("k", '"new"'))
    tier.put(stale)  # older HLC, stale base version: last writer wins
    got = tier.get("c", "k")
    assert got is not None and got.value_json == '"new"'


def test_scan_order_prefix_after_limit(tier: Tier) -> None:
    w = Writer()
    keys = ["b2", "a", "b1", "b10", "c", "bé", "b"]
    for k in keys:
        tier.put(w.op(k, f'"{k}"'))
    tier.put(w.op("b3", '"x"'))
    tier.put(w.op("b3", None, base=1))
    tier.put(w.op("b1", '"elsewhere"', collection="d"))
    assert [r.key for r in tier.scan("c")] == sorted(keys)
    assert [r.key for r in tier.scan("c", prefix="b")] == ["b", "b1", "b10", "b2", "bé"]
    assert [r.key for r in tier.scan("c", prefix="b", after="b1")] == ["b10", "b2", "bé"]
    assert [r.key for r in tier.scan("c", prefix="b", after="a")] == ["b", "b1", "b10", "b2", "bé"]
    assert [r.key for r in tier.scan("c", limit=2)] == ["a", "b"]
    assert [r.key for r in tier.scan("c", after="c")] == []
    assert [r.key for r in tier.scan("d")] == ["b1"]


def test_changes_are_ordered_and_resumable(tier: Tier) -> None:
    w = Writer()
    for i in range(5):
        tier.put(w.op(f"k{i}", str(i)))
    changes = settled_changes(tier, 0, 5)
    assert len(changes) == 5
    cursors = [c.cursor for c in changes]
    assert cursors == sorted(cursors) and len(set(cursors)) == 5
    assert {c.row.key for c in changes} == {f"k{i}" for i in range(5)}
    rest = settled_changes(tier, cursors[1], 3)
    assert [c.cursor for c in rest] == cursors[2:]
    assert tier.changes(cursors[-1], 100) == []


def test_health_is_plain_data(tier: Tier) -> None:
    h = tier.health()
    assert h.state == "healthy"
    data = h.to_dict()
    assert data["state"] == "healthy" and isinstance(data, dict)
