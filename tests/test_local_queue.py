"""The local write path (`LocalTier.queue`): a fresh write stores the record and its outbox entry in one SQLite
statement, coalesces the key's unsent entry when asked, falls back to the transaction path for a stored stamp
that is not older than the write's, and changes nothing when any part of it fails."""

from __future__ import annotations

import sqlite3

import pytest

from hybridstore.clock import HybridClock, Timestamp, stamp_after, wall_ms
from hybridstore.errors import LocalStoreError
from hybridstore.model import Op, StoredRow, new_op_id
from hybridstore.tiers.local import LocalTier

NODE = "node-a"


@pytest.fixture
def clock() -> HybridClock:
    return HybridClock(NODE)


def op(clock: HybridClock, key: str, value: str | None) -> Op:
    return Op(new_op_id(), "c", key, value, clock.now(), NODE, 0, 1000.0)


def outbox(local_tier: LocalTier) -> list[tuple[str, str | None, str]]:
    return [(r[0], r[1], r[2]) for r in local_tier._read("SELECT key, value, op_id FROM outbox ORDER BY seq")]


def test_queue_stores_the_record_and_its_entry(local_tier: LocalTier, clock: HybridClock) -> None:
    first = op(clock, "k", '{"a":1}')
    stored = local_tier.queue(first)
    assert stored == first
    row = local_tier.get("c", "k")
    assert row is not None and (row.value_json, row.hlc, row.synced_at) == ('{"a":1}', first.hlc, None)
    assert outbox(local_tier) == [("k", '{"a":1}', first.op_id)]
    assert local_tier.last_seq == 1


def test_entries_queue_behind_each_other_without_coalescing(local_tier: LocalTier, clock: HybridClock) -> None:
    a, b = op(clock, "k", "1"), op(clock, "k", "2")
    local_tier.queue(a)
    local_tier.queue(b)
    assert outbox(local_tier) == [("k", "1", a.op_id), ("k", "2", b.op_id)]
    row = local_tier.get("c", "k")
    assert row is not None and (row.value_json, row.hlc) == ("2", b.hlc)


def test_coalescing_replaces_the_unsent_entry_only(local_tier: LocalTier, clock: HybridClock) -> None:
    local_tier.coalesce_pending = True
    local_tier.queue(op(clock, "k", "1"))
    second = op(clock, "k", "2")
    local_tier.queue(second)
    assert outbox(local_tier) == [("k", "2", second.op_id)], "the unsent entry is replaced"
    local_tier.pending_ops(10)  # a pusher read it: it may be on the primary already, so it stays
    third = op(clock, "k", "3")
    local_tier.queue(third)
    assert outbox(local_tier) == [("k", "2", second.op_id), ("k", "3", third.op_id)]


def test_a_stored_stamp_from_the_future_is_overtaken(local_tier: LocalTier, clock: HybridClock) -> None:
    ahead = Timestamp(wall_ms() + 3 * 24 * 3600 * 1000, 5, "node-b").encode()  # beyond the drift guard
    local_tier.store_synced(StoredRow("c", "k", '"theirs"', 1, ahead, "node-b", 1.0))
    mine = op(clock, "k", '"mine"')
    stored = local_tier.queue(mine)
    assert stored.hlc == stamp_after(ahead, NODE) and stored.op_id == mine.op_id
    row = local_tier.get("c", "k")
    assert row is not None and (row.value_json, row.hlc) == ('"mine"', stored.hlc)
    assert outbox(local_tier) == [("k", '"mine"', mine.op_id)], "queued once, with the new stamp"
    assert local_tier._read("SELECT hlc FROM outbox")[0][0] == stored.hlc


def test_a_failed_write_changes_nothing(local_tier: LocalTier, clock: HybridClock) -> None:
    first = op(clock, "k", '"old"')
    local_tier.queue(first)
    # Take the seq the next write will get, so its outbox insert fails after its record upsert ran.
    conn = sqlite3.connect(local_tier.path)
    with conn:
        conn.execute(
            "INSERT INTO outbox (seq, op_id, collection, key, value, hlc, origin, created_at) "
            "VALUES (?, 'x', 'c', 'other', NULL, 'h', 'o', 0)",
            (local_tier.last_seq + 1,),
        )
    conn.close()
    with pytest.raises(LocalStoreError):
        local_tier.queue(op(clock, "k", '"new"'))
    row = local_tier.get("c", "k")
    assert row is not None and (row.value_json, row.hlc) == ('"old"', first.hlc), "the record upsert was undone"
    assert [r[0] for r in local_tier._read("SELECT op_id FROM outbox WHERE key = 'k'")] == [first.op_id]
