"""One contract suite, run over every tier: the `Tier` protocol in hybridstore.tiers.base (get, scan, health,
close). Rows are written through each tier's own write method (local and journal: ``put``; primary: ``put_one``),
and what every write method promises in common is checked too: durable before it returns, tombstones delete,
idempotent by op id, a stale write never hides a newer one."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridstore.clock import HybridClock
from hybridstore.model import Op, StoredRow
from hybridstore.tiers.base import Tier
from hybridstore.tiers.journal import JournalTier
from hybridstore.tiers.local import LocalTier
from hybridstore.tiers.primary import PrimaryTier

Write = Callable[[Op], StoredRow]


def primary_write(tier: PrimaryTier) -> Write:
    def write(op: Op) -> StoredRow:
        outcome = tier.put_one(op)
        assert outcome.current is not None, outcome
        return outcome.current

    return write


@pytest.fixture(params=["primary", "local", "journal"])
def tier_and_write(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Tier, Write]]:
    t: Any
    if request.param == "primary":
        t = PrimaryTier(request.getfixturevalue("pg_dsn"), schema=request.getfixturevalue("pg_schema"))
        write = primary_write(t)
    elif request.param == "local":
        t = LocalTier(tmp_path / "local.db")
        write = t.put
    else:
        t = JournalTier(tmp_path / "journal.log")
        write = t.put
    yield t, write
    t.close()


@pytest.fixture
def tier(tier_and_write: tuple[Tier, Write]) -> Tier:
    return tier_and_write[0]


@pytest.fixture
def write(tier_and_write: tuple[Tier, Write]) -> Write:
    return tier_and_write[1]


class Writer:
    def __init__(self, node: str = "n1") -> None:
        self.clock = HybridClock(node)
        self.node = node

    def op(self, key: str, value: str | None, collection: str = "c", base: int = 0) -> Op:
        return Op(str(uuid.uuid4()), collection, key, value, self.clock.now(), self.node, base, 1.0)


def test_write_then_get(tier: Tier, write: Write) -> None:
    w = Writer()
    row = write(w.op("k1", '{"a":1}'))
    assert row.key == "k1" and not row.deleted
    got = tier.get("c", "k1")
    assert got is not None and got.value_json is not None
    assert got.value_json.replace(" ", "") == '{"a":1}'
    assert tier.get("c", "missing") is None
    assert tier.get("other", "k1") is None


def test_newer_write_replaces(tier: Tier, write: Write) -> None:
    w = Writer()
    write(w.op("k", '"v1"'))
    write(w.op("k", '"v2"', base=1))
    got = tier.get("c", "k")
    assert got is not None and got.value_json == '"v2"'


def test_tombstone_deletes(tier: Tier, write: Write) -> None:
    w = Writer()
    write(w.op("k", "1"))
    write(w.op("k", None, base=1))
    got = tier.get("c", "k")
    assert got is not None and got.deleted
    assert [r.key for r in tier.scan("c")] == []


def test_write_is_idempotent_by_op_id(tier: Tier, write: Write) -> None:
    w = Writer()
    op = w.op("k", '"once"')
    first = write(op)
    write(w.op("other", '"x"'))
    again = write(op)
    assert again.value_json == first.value_json and again.version == first.version
    got = tier.get("c", "k")
    assert got is not None and got.version == first.version and got.hlc == first.hlc
    # ... and recorded once: in the outbox, the journal, the primary's ledger
    if isinstance(tier, LocalTier):
        assert tier.outbox_stats()[0] == 2
    elif isinstance(tier, JournalTier):
        assert len(tier) == 2
    else:
        assert isinstance(tier, PrimaryTier)
        assert tier.put_one(op).outcome == "duplicate"


def test_stale_write_never_hides_a_newer_one(tier: Tier, write: Write) -> None:
    old_writer, new_writer = Writer("a"), Writer("b")
    stale = old_writer.op("k", '"old"')
    write(new_writer.op("k", '"new"'))
    write(stale)  # older HLC, stale base version: last writer wins
    got = tier.get("c", "k")
    assert got is not None and got.value_json == '"new"'


def test_scan_order_prefix_after_limit(tier: Tier, write: Write) -> None:
    w = Writer()
    keys = ["b2", "a", "b1", "b10", "c", "bé", "b"]
    for k in keys:
        write(w.op(k, f'"{k}"'))
    write(w.op("b3", '"x"'))
    write(w.op("b3", None, base=1))
    write(w.op("b1", '"elsewhere"', collection="d"))
    assert [r.key for r in tier.scan("c")] == sorted(keys)
    assert [r.key for r in tier.scan("c", prefix="b")] == ["b", "b1", "b10", "b2", "bé"]
    assert [r.key for r in tier.scan("c", prefix="b", after="b1")] == ["b10", "b2", "bé"]
    assert [r.key for r in tier.scan("c", prefix="b", after="a")] == ["b", "b1", "b10", "b2", "bé"]
    assert [r.key for r in tier.scan("c", limit=2)] == ["a", "b"]
    assert [r.key for r in tier.scan("c", after="c")] == []
    assert [r.key for r in tier.scan("d")] == ["b1"]


def test_health_is_plain_data(tier: Tier) -> None:
    h = tier.health()
    assert h.state == "healthy" and h.name == tier.name
    data = h.to_dict()
    assert data["state"] == "healthy" and isinstance(data, dict)


def test_close_never_raises_and_health_still_answers(tier: Tier) -> None:
    tier.close()
    tier.close()
    assert tier.health().state in ("healthy", "down")  # the journal has nothing to close
