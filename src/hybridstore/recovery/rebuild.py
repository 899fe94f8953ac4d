"""Rebuild a corrupt or unreadable local SQLite file.

1. Writes go to the journal from now on (the slot holds the tier for a rebuild) and the old tier is taken out of
   the slot and closed (a write-ahead log that was deleted while the store ran is checkpointed into the file by
   that close).
2. Salvage: the outbox and records still readable in a copy of the broken file (`salvage.py`).
3. A new file is built beside it (``local.db.rebuild``): the salvaged synced records, then every row of the
   source — the primary (a full scan in key order) or the newest verified backup — where newer versions win,
   then the salvaged outbox entries and, for outbox entries on damaged pages, the pending value their record
   still holds. If the source fails half-way, the new file is dropped and nothing else has changed.
4. The broken file is moved aside into ``data_dir/broken/`` (never deleted), the new file takes its place on
   disk, the journal is replayed into it, and the slot's `swap` (refused once the node has closed) puts it in use.

The report says exactly which acknowledged writes could not be recovered: outbox positions on damaged pages
that no readable record accounts for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model import Op, StoredRow, new_op_id
from ..tiers.local import LocalTier
from .salvage import Salvage, salvage_file

if TYPE_CHECKING:
    from ..node.core import NodeCore
    from ..node.gateway import PrimaryGateway

log = logging.getLogger("hybridstore.recovery")
BROKEN_DIR = "broken"
LOAD_CHUNK = 5000
# Where the rows of a rebuild come from: an iterable of pages of rows (each page a list), tombstones included.
RowSource = Callable[[], Iterable[list[StoredRow]]]


@dataclass
class RebuildReport:
    reason: str
    source: str  # "primary" | "backup" | "salvage only"
    moved_aside: list[str] = field(default_factory=list)
    records_from_source: int = 0
    records_salvaged: int = 0
    outbox_salvaged: int = 0
    recovered_from_records: int = 0
    requeued: int = 0
    journal_replayed: int = 0
    unrecovered: list[dict[str, Any]] = field(default_factory=list)
    salvage_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def primary_pages(gateway: PrimaryGateway, page: int = LOAD_CHUNK) -> RowSource:
    def pages() -> Iterator[list[StoredRow]]:
        after: tuple[str, str] | None = None
        while True:
            rows = _dump(gateway, after, page)
            if rows:
                yield rows
            if len(rows) < page:
                return
            after = (rows[-1].collection, rows[-1].key)

    return pages


def _dump(gateway: PrimaryGateway, after: tuple[str, str] | None, page: int) -> list[StoredRow]:
    return gateway.call(lambda p: p.dump(after, page))


def backup_pages(rows: Iterable[StoredRow | tuple[str, str, Any]], page: int = LOAD_CHUNK) -> RowSource:
    """Pages of a backup's rows: `StoredRow` rows, or ``(collection, key, value)`` tuples (a value with no version
    or clock of its own: any newer write, salvaged or from the primary, wins over it)."""

    def pages() -> Iterator[list[StoredRow]]:
        chunk: list[StoredRow] = []
        now = time.time()
        for row in rows:
            if not isinstance(row, StoredRow):
                collection, key, value = row
                text = None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
                row = StoredRow(collection, key, text, 0, "", "backup", now, now)
            chunk.append(row)
            if len(chunk) >= page:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    return pages


def rebuild_local(node: NodeCore, *, reason: str, source: str, rows: RowSource | None) -> RebuildReport:
    """Rebuild the node's local file (see the module docstring). Raises whatever the source raises, leaving the
    broken file where it was and the node on the journal; raises `ClosedError` if the node closed meanwhile."""
    start = time.perf_counter()
    report = RebuildReport(reason, source)
    path = node.data_dir / "local.db"
    node.slot.hold(reason)
    old = node.slot.take()
    # The largest outbox seq the running tier handed out (helps find a damaged tail of the outbox).
    max_seq = old.last_seq if old is not None else None
    if old is not None:
        old.close()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    broken_dir = node.data_dir / BROKEN_DIR
    salvage = salvage_file(path, scratch=broken_dir / f".salvage-{stamp}", max_seq=max_seq or None)
    report.salvage_errors = salvage.errors
    building = path.with_name(path.name + ".rebuild")
    _remove_db(building)  # a leftover of an interrupted rebuild (ours, never the broken file)
    new = LocalTier(building, synchronous=node.config.synchronous)
    try:
        _fill(new, salvage, rows, report)
    except BaseException:
        new.close()
        _remove_db(building)
        raise
    new.close()
    report.moved_aside = _move_aside(path, broken_dir, stamp)
    os.replace(building, path)
    _fsync_dir(path.parent)
    rebuilt = LocalTier(path, synchronous=node.config.synchronous)
    rebuilt.coalesce_pending = node.config.coalesce
    if not node.gateway.configured:
        rebuilt.embedded()
    try:
        # Before it is put in place (no one else can replay into it yet): the count in the report is exact.
        report.journal_replayed = node.sync.replay_journal_into(rebuilt)
    except BaseException:
        rebuilt.close()
        raise
    node.slot.swap(rebuilt)
    node.sync.wake()
    report.seconds = round(time.perf_counter() - start, 3)
    log.warning(
        "local store rebuilt from %s in %.2fs (%s): %d record(s) loaded, %d queued write(s) recovered, "
        "%d journaled write(s) replayed, %d unrecovered; the broken file is kept in %s",
        source,
        report.seconds,
        reason,
        report.records_from_source,
        report.requeued,
        report.journal_replayed,
        len(report.unrecovered),
        broken_dir,
    )
    return report


def _fill(new: LocalTier, salvage: Salvage, rows: RowSource | None, report: RebuildReport) -> None:
    synced = [row for row, seq in salvage.records if seq is None]
    for i in range(0, len(synced), LOAD_CHUNK):
        new.store_synced_many(synced[i : i + LOAD_CHUNK])
    report.records_salvaged = len(salvage.records)
    if rows is not None:
        for page in rows():
            new.store_synced_many(page)
            report.records_from_source += len(page)
    # Queued writes: the readable outbox entries, then — for entries on damaged pages — the pending value the
    # record still holds (the newest write for its key: what the primary must end up with).
    ops = [op for _, op in sorted(salvage.ops, key=lambda e: e[0])]
    readable = {seq for seq, _ in salvage.ops}
    pending = salvage.pending_records
    lost = set(salvage.unreadable_seqs)
    from_records = [
        Op(new_op_id(), r.collection, r.key, r.value_json, r.hlc, r.origin, 0, r.updated_at)
        for seq, r in sorted(pending.items())
        if seq not in readable
    ]
    report.outbox_salvaged = len(ops)
    report.recovered_from_records = len(from_records)
    report.requeued = len(new.import_ops(ops + from_records)) if ops or from_records else 0
    report.unrecovered = [
        {"seq": seq, "reason": "outbox entry on a damaged page and no readable record holds its value"}
        for seq in sorted(lost - set(pending))
    ]
    if salvage.outbox_unknown:
        report.unrecovered.append(
            {"seq": None, "reason": "outbox unreadable: the queued writes it held (if any) cannot be listed"}
        )


def _move_aside(path: Path, broken_dir: Path, stamp: str) -> list[str]:
    broken_dir.mkdir(parents=True, exist_ok=True)
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            dst = broken_dir / f"local-{stamp}.db{suffix}"
            n = 1
            while dst.exists():
                dst = broken_dir / f"local-{stamp}-{n}.db{suffix}"
                n += 1
            os.replace(src, dst)
            moved.append(str(dst))
    _fsync_dir(broken_dir)
    return moved


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
