"""Salvage: read what can still be read from a broken ``local.db`` — outbox entries (writes acknowledged but not
yet on the primary) and records — working around damaged pages.

The outbox is a rowid table keyed by ``seq``: a range whose pages are damaged is split in halves until single
entries, so every readable entry is found and every unreadable position is known. Records are read in key
order from both ends until a damaged page stops each pass. Pure SQLite, on a *copy* of the broken file (the
original is kept exactly as it was found).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model import Op, StoredRow

_OUTBOX_COLUMNS = "seq, op_id, collection, key, value, hlc, origin, created_at"
_RECORD_COLUMNS = "collection, key, value, version, hlc, origin, updated_at, synced_at, pending_seq"
MAX_SPLIT_QUERIES = 200_000


@dataclass
class Salvage:
    """What a broken local file still held."""

    ops: list[tuple[int, Op]] = field(default_factory=list)  # outbox entries, by seq
    records: list[tuple[StoredRow, int | None]] = field(default_factory=list)  # (row, pending_seq)
    unreadable_seqs: list[int] = field(default_factory=list)  # outbox positions on damaged pages
    records_complete: bool = False
    outbox_unknown: bool = False  # the outbox could not be read at all, and no bound on its seqs is known
    errors: list[str] = field(default_factory=list)

    @property
    def pending_records(self) -> dict[int, StoredRow]:
        """Records with local changes, by the seq of their newest pending op."""
        return {seq: row for row, seq in self.records if seq is not None}


def salvage_file(path: Path, *, scratch: Path, max_seq: int | None = None) -> Salvage:
    """Read the outbox and records of the SQLite file at ``path`` (with its ``-wal`` beside it, if any) through a
    scratch copy. ``max_seq``: the largest outbox seq the running store had handed out, if known."""
    result = Salvage()
    if not path.exists():
        result.errors.append("no file to salvage")
        return result
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / "salvage.db"
    try:
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        conn = sqlite3.connect(copy, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        result.errors.append(f"cannot open a copy of the broken file: {exc}")
        return result
    try:
        _salvage_records(conn, result)
        # Records name the seq of their newest pending op: a bound when the outbox's own bounds are unreadable.
        hint = max(result.pending_records, default=None)
        _salvage_outbox(conn, result, max(max_seq or 0, hint or 0) or None)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                copy.with_name(copy.name + suffix).unlink()
        with contextlib.suppress(OSError):
            scratch.rmdir()
    return result


def _salvage_outbox(conn: sqlite3.Connection, result: Salvage, max_seq: int | None) -> None:
    try:
        lo, hi = conn.execute("SELECT min(seq), max(seq) FROM outbox").fetchone()
    except sqlite3.DatabaseError as exc:
        result.errors.append(f"outbox bounds unreadable: {exc}")
        lo, hi = 1, max_seq
    if max_seq is not None and (hi is None or max_seq > hi):
        hi = max_seq
    if hi is None:
        if lo == 1:  # bounds unreadable and nothing else knows them
            result.outbox_unknown = True
        return  # else: an empty outbox
    lo = lo or 1
    budget = [MAX_SPLIT_QUERIES]
    rows: list[Any] = []
    _read_range(conn, lo, hi, rows, result.unreadable_seqs, budget)
    for r in rows:
        seq = int(r[0])
        op = Op(
            str(r[1]), str(r[2]), str(r[3]), None if r[4] is None else str(r[4]), str(r[5]), str(r[6]), 0, float(r[7])
        )
        result.ops.append((seq, op))


def _read_range(
    conn: sqlite3.Connection, lo: int, hi: int, rows: list[Any], lost: list[int], budget: list[int]
) -> None:
    budget[0] -= 1
    try:
        rows += conn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE seq BETWEEN ? AND ? ORDER BY seq", (lo, hi)
        ).fetchall()
        return
    except sqlite3.DatabaseError:
        pass
    if lo == hi or budget[0] <= 0:
        lost.extend(range(lo, hi + 1))
        return
    mid = (lo + hi) // 2
    _read_range(conn, lo, mid, rows, lost, budget)
    _read_range(conn, mid + 1, hi, rows, lost, budget)


def _salvage_records(conn: sqlite3.Connection, result: Salvage) -> None:
    seen: dict[tuple[str, str], tuple[StoredRow, int | None]] = {}
    for order in ("ASC", "DESC"):  # from both ends: a damaged page in the middle stops each pass
        try:
            for r in conn.execute(f"SELECT {_RECORD_COLUMNS} FROM records ORDER BY collection {order}, key {order}"):
                row = StoredRow(r[0], r[1], r[2], int(r[3]), r[4], r[5], float(r[6]), r[7])
                seen[(row.collection, row.key)] = (row, r[8])
        except sqlite3.DatabaseError as exc:
            result.errors.append(f"records partly unreadable ({order.lower()}ending pass): {exc}")
            continue
        result.records_complete = True
        break
    result.records = list(seen.values())
