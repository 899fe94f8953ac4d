"""Bulk writes as a restore makes them: op ids and stamps made per batch, the bulk store path (coalescing, its
fallback to one op at a time), and a restore's queued ops reaching the primary."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore.backup import restore
from hybridstore.backup.format import BackupReader
from hybridstore.clock import HybridClock, Timestamp, stamp_after, wall_ms
from hybridstore.model import Op, new_op_ids
from hybridstore.tiers.local import LocalTier

from .backup_helpers import service
from .fix_db import StoreFactory, primary_rows

NODE = "node-a"


def ops(clock: HybridClock, items: list[tuple[str, str]]) -> list[Op]:
    return [
        Op(i, "c", k, v, s, NODE, 0, 1000.0)
        for i, (k, v), s in zip(new_op_ids(len(items)), items, clock.now_many(len(items)), strict=True)
    ]


def outbox(local_tier: LocalTier) -> list[tuple[int, str, str | None, str]]:
    return [tuple(r) for r in local_tier._read("SELECT seq, key, value, hlc FROM outbox ORDER BY seq")]


def test_op_ids_of_a_batch_are_distinct_version_7_uuids() -> None:
    ids = new_op_ids(5000)
    assert len(set(ids)) == 5000 and new_op_ids(0) == []
    for text in ids[:200]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert abs((parsed.int >> 80) - wall_ms()) < 60_000  # Unix milliseconds first: time-ordered


def test_bulk_store_coalesces_unsent_ops_only(local_tier: LocalTier) -> None:
    clock = HybridClock(NODE)
    local_tier.embedded()
    local_tier.import_ops(ops(clock, [("a", "1"), ("b", "1"), ("c", "1")]), fresh=True)
    local_tier.pending_ops(2)  # a and b count as sent: they stay in the outbox
    local_tier.import_ops(ops(clock, [("a", "2"), ("c", "2"), ("d", "2")]), fresh=True)
    assert [(seq, k, v) for seq, k, v, _ in outbox(local_tier)] == [
        (1, "a", "1"),
        (2, "b", "1"),
        (4, "a", "2"),
        (5, "c", "2"),
        (6, "d", "2"),
    ]
    stamps = [h for *_, h in outbox(local_tier)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    row = local_tier.get("c", "c")
    assert row is not None and row.value_json == "2" and row.hlc == stamps[3]


@pytest.mark.parametrize("key", ["plain", "caf\u00e9", "smile \U0001f600", 'quote " and \\ backslash', "tab\tkey"])
def test_bulk_store_coalesces_any_key(local_tier: LocalTier, key: str) -> None:
    clock = HybridClock(NODE)
    local_tier.embedded()
    local_tier.import_ops(ops(clock, [(key, "1"), ("other", "1")]), fresh=True)
    local_tier.import_ops(ops(clock, [(key, "2"), ("other", "2")]), fresh=True)
    assert [(k, v) for _, k, v, _ in outbox(local_tier)] == [(key, "2"), ("other", "2")]


def test_bulk_store_falls_back_when_a_stored_stamp_is_newer(local_tier: LocalTier) -> None:
    """A stored row stamped beyond the clock's drift guard: the batch is stored op by op and that key's op is
    re-stamped after the stored row; nothing is lost, every key is queued once."""
    clock = HybridClock(NODE)
    future = Timestamp(wall_ms() + 10**12, 3, "other").encode()
    local_tier.import_ops([Op("x", "c", "b", "old", future, "other", 0, 1.0)])
    stored = local_tier.import_ops(ops(clock, [("a", "1"), ("b", "1"), ("c", "1")]), fresh=True)
    assert [o.key for o in stored] == ["a", "b", "c"] and stored[1].hlc == stamp_after(future, NODE)
    assert [(k, v) for _, k, v, _ in outbox(local_tier)] == [("b", "old"), ("a", "1"), ("b", "1"), ("c", "1")]
    row = local_tier.get("c", "b")
    assert row is not None and row.value_json == "1" and row.hlc == stored[1].hlc


def _backup_of(tmp_path: Path, n: int) -> tuple[str, Path]:
    with hybridstore.open(data_dir=tmp_path / "source", background=False) as source:
        source.set_many("orders", [(f"o{i:05d}", {"i": i}) for i in range(n)])
        b = service(source)
        info = b.create_manual_backup()
        return info.id, b.export_backup(info.id, tmp_path / "copy.hsb")


def test_restore_queues_every_record_once_with_increasing_stamps(tmp_path: Path) -> None:
    n = 2500  # several batches
    backup_id, exported = _backup_of(tmp_path, n)
    with hybridstore.open(data_dir=tmp_path / "fresh", background=False) as fresh:
        fb = service(fresh)
        fb.import_backup(exported)
        before = fresh.node.clock.now()
        report = fb.restore_backup(backup_id)
        assert report.written == n and report.total("added") == n
        local_tier = fresh.node.slot.tier
        assert local_tier is not None
        rows = local_tier._read("SELECT key, hlc, op_id, origin FROM outbox ORDER BY seq")
        assert [k for k, *_ in rows] == [f"o{i:05d}" for i in range(n)]
        stamps = [h for _, h, _, _ in rows]
        assert stamps == sorted(set(stamps)) and stamps[0] > before and fresh.node.clock.now() > stamps[-1]
        assert len({i for _, _, i, _ in rows}) == n and {o for *_, o in rows} == {fresh.node_id}
        assert fresh.get("orders", "o02499") is not None


def test_a_restore_reaches_the_primary(
    tmp_path: Path, make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    n = 1500
    backup_id, exported = _backup_of(tmp_path, n)
    fresh = make_store("fresh", background=False)
    fb = service(fresh)
    fb.import_backup(exported)
    report = fb.restore_backup(backup_id)
    assert (report.written, report.pushed, report.still_queued) == (n, n, 0)
    assert primary_rows(pg, pg_schema, "orders") == {f"o{i:05d}": ({"i": i}, 1) for i in range(n)}
    stamps = [
        h
        for (h,) in pg.execute(f'SELECT hlc FROM "{pg_schema}".records WHERE collection = %s ORDER BY key', ("orders",))
    ]
    assert len(stamps) == n and stamps == sorted(set(stamps))


@pytest.mark.parametrize("keep", [restore.KEEP_BYTES, 0])
def test_kept_and_reread_restores_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: int) -> None:
    """Records kept from the validation pass (a backup within `KEEP_BYTES`) and records read again (a larger one)
    restore the same: same report, same values, a selection honoured, dry run writing nothing."""
    monkeypatch.setattr(restore, "KEEP_BYTES", keep)
    backup_id, exported = _backup_of(tmp_path, 1200)
    with hybridstore.open(data_dir=tmp_path / "fresh", background=False) as fresh:
        fb = service(fresh)
        fb.import_backup(exported)
        with BackupReader(Path(fb.get_backup(backup_id).path), None) as reader:
            _, checks = restore.validate(reader, restore.Selection(), fresh.config.max_value_bytes, None)
        assert all(isinstance(c, restore.Validated) for c in checks) == (keep > 0) and checks
        fresh.set("orders", "o00001", "changed")
        dry = fb.restore_backup(backup_id, dry_run=True, diff_limit=2)
        assert dry.collections == {"orders": {"added": 1199, "overwritten": 1, "skipped": 0, "unchanged": 0}}
        assert dry.written == 0 and dry.diff_truncated and fresh.get("orders", "o00000") is None
        some = fb.restore_backup(backup_id, keys=["o00001", "o00007"], overwrite=False)
        assert some.collections["orders"] == {"added": 1, "overwritten": 0, "skipped": 1, "unchanged": 0}
        done = fb.restore_backup(backup_id)
        assert done.collections["orders"] == {"added": 1198, "overwritten": 1, "skipped": 0, "unchanged": 1}
        assert [r.value for r in fresh.list("orders", limit=2000)] == [{"i": i} for i in range(1200)]


def test_bulk_store_coalesces_per_collection(local_tier: LocalTier) -> None:
    clock = HybridClock(NODE)
    local_tier.embedded()

    def batch(value: str) -> list[Op]:
        stamps = clock.now_many(3)
        return [Op(i, c, "k", value, s, NODE, 0, 1.0) for i, c, s in zip(new_op_ids(3), "xyz", stamps, strict=True)]

    local_tier.import_ops(batch("1")[:2], fresh=True)
    local_tier.import_ops(batch("2"), fresh=True)
    rows = local_tier._read("SELECT collection, key, value FROM outbox ORDER BY seq")
    assert [tuple(r) for r in rows] == [("x", "k", "2"), ("y", "k", "2"), ("z", "k", "2")]
