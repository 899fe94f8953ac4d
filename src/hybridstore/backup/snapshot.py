"""Where a backup's records come from, as sections of record lines ready for `BodyWriter`.

- ``local``: the node's SQLite (live records, which already hold the node's pending writes) overlaid with the
  journal, read in one SQLite snapshot on connections of our own (writers are not blocked), plus the outbox
  and the journal verbatim as ``pending`` sections. SQLite builds the lines itself, and that costs more than
  compressing them: so two reader threads, each on its own connection inside the same snapshot, build the
  batches of a collection in turn (key ranges of ``BATCH`` records found ahead by a third connection), and
  the batches are handed on in key order.
- ``primary``: the primary's records from one consistent snapshot, overlaid with the node's pending rows and
  journal (what the primary has not accepted yet), plus the same ``pending`` sections.

Lines (see docs/backups.md): a record is ``[key, value, version, hlc, origin, updated_at]``; a pending op is
``[op_id, collection, key, value or null, hlc, origin, created_at]``; one JSON array per line.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackupError, LocalStoreError
from ..model import Op

if TYPE_CHECKING:
    from ..tiers.primary import PrimaryTier

Section = tuple[str, str]
Lines = Iterator[tuple[Section, bytes, int]]  # whole lines of a section, and how many
BATCH = 1000  # rows per fetch: about a chunk of ordinary records, so a fetch never holds much
READERS = 2  # threads building a collection's lines (SQLite lets go of the GIL while it builds them)
READ_AHEAD = 2  # batches being built or waiting per reader: memory stays flat
CACHE_KIB = 256  # page cache per reading connection: they scan, a page is not read twice (SQLite's default: 2 MiB)
GATE_TIMEOUT = 0.2  # seconds to wait for the write lock that lines up the readers' snapshots
_quote = json.JSONEncoder(ensure_ascii=False).encode
_first = itemgetter(0)

# SQLite builds each line itself with one printf: no per-row Python work.
_LINE_TEXT = (
    "printf('[%s,%s,%d,%s,%s,%!.15g]' || char(10), json_quote(key), value, version, json_quote(hlc), "
    "json_quote(origin), updated_at)"
)
_LINE = f"CAST({_LINE_TEXT} AS BLOB)"
# SQLite 3.44+ takes an order inside the aggregate; before, the ordered subquery feeds it in order.
_IN_KEY_ORDER = " ORDER BY key" if sqlite3.sqlite_version_info >= (3, 44) else ""
# The next ``?`` lines of a collection after a key, joined by SQLite itself: one row (and one hand-over of the
# GIL) per batch instead of one per record, so the formatting runs while the compression threads hold the GIL.
_LOCAL_BATCH = (
    f"SELECT max(key), count(*), CAST(group_concat(line, ''{_IN_KEY_ORDER}) AS BLOB) FROM ("
    f"SELECT key, {_LINE_TEXT} AS line FROM records WHERE collection = ? AND key > ? AND value IS NOT NULL "
    "ORDER BY key LIMIT ?)"
)
# A key range's lines, for the reader threads: ``(after, upto]`` (the last range has no upper bound).
_RANGE = (
    f"SELECT count(*), CAST(group_concat(line, ''{_IN_KEY_ORDER}) AS BLOB) FROM ("
    f"SELECT key, {_LINE_TEXT} AS line FROM records WHERE collection = ? AND key > ? AND key <= ? "
    "AND value IS NOT NULL ORDER BY key)"
)
_RANGE_TAIL = _RANGE.replace("AND key <= ? ", "")
# The key ``?`` rows after a key (tombstones counted: a range then holds at most that many lines).
_SKIP = "SELECT key FROM records WHERE collection = ? AND key > ? ORDER BY key LIMIT 1 OFFSET ?"
_LOCAL_KEYED_LINES = f"SELECT key, {_LINE} FROM records WHERE collection = ? AND value IS NOT NULL ORDER BY key"
_OUTBOX_LINES = (
    "SELECT CAST(printf('[%s,%s,%s,%s,%s,%s,%!.15g]' || char(10), json_quote(op_id), json_quote(collection), "
    "json_quote(key), coalesce(value, 'null'), json_quote(hlc), json_quote(origin), created_at) AS BLOB) "
    "FROM outbox ORDER BY seq"
)
# The node's pending rows of a collection (its newest value, or NULL for a pending delete), in key order.
_PENDING_KEYED_LINES = (
    f"SELECT key, CASE WHEN value IS NULL THEN NULL ELSE {_LINE} END FROM records "
    "WHERE collection = ? AND key IN (SELECT key FROM outbox WHERE collection = ?) ORDER BY key"
)


def record_line(key: str, value: str, version: int, hlc: str, origin: str, updated_at: float) -> bytes:
    return f"[{_quote(key)},{value},{version},{_quote(hlc)},{_quote(origin)},{updated_at!r}]\n".encode()


# A backup from the primary: the server builds each record's line (the text `record_line` makes of the same row:
# `to_json` escapes a text as the JSON encoder above does, and a float8's text is its shortest exact form, as
# `repr` writes it, given the ".0" `repr` adds to a whole number), so the node only encodes it while the
# PostgreSQL backend does the formatting, in parallel with the compression.
PRIMARY_LINE_COLUMNS = (
    "collection, key, '[' || to_json(key)::text || ',' || value::text || ',' || version || ',' || "
    "to_json(hlc)::text || ',' || to_json(origin)::text || ',' || extract(epoch FROM updated_at)::float8 || "
    "CASE WHEN extract(epoch FROM updated_at) = trunc(extract(epoch FROM updated_at)) THEN '.0' ELSE '' END || "
    "E']\\n'"
)


def op_line(op: Op) -> bytes:
    value = "null" if op.value_json is None else op.value_json
    return (
        f"[{_quote(op.op_id)},{_quote(op.collection)},{_quote(op.key)},{value},{_quote(op.hlc)},"
        f"{_quote(op.origin)},{op.created_at!r}]\n"
    ).encode()


def _journal_overlay(ops: list[Op]) -> dict[str, dict[str, bytes | None]]:
    """collection -> key -> newest journaled line (``None`` for a delete)."""
    latest: dict[tuple[str, str], Op] = {}
    for op in ops:
        prev = latest.get((op.collection, op.key))
        if prev is None or op.hlc > prev.hlc:
            latest[(op.collection, op.key)] = op
    out: dict[str, dict[str, bytes | None]] = {}
    for (c, k), op in latest.items():
        out.setdefault(c, {})[k] = (
            None if op.value_json is None else record_line(k, op.value_json, 0, op.hlc, op.origin, op.created_at)
        )
    return out


def _merge(base: Iterator[Any], top: Iterator[Any]) -> Iterator[tuple[str, bytes | None]]:
    """Merge two key-ordered streams of ``(key, line)``; ``top`` wins on equal keys (a ``None`` line is a
    delete). Streams, so neither side is ever held in memory."""
    t = next(top, None)
    for key, line in base:
        while t is not None and t[0] < key:
            yield t
            t = next(top, None)
        if t is not None and t[0] == key:
            yield t
            t = next(top, None)
        else:
            yield key, line
    while t is not None:
        yield t
        t = next(top, None)


def _live(pairs: Iterator[tuple[str, bytes | None]]) -> Iterator[bytes]:
    return (line for _, line in pairs if line is not None)


def _batched(lines: Iterator[bytes], size: int = BATCH) -> Iterator[tuple[bytes, int]]:
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield b"".join(batch), len(batch)
            batch = []
    if batch:
        yield b"".join(batch), len(batch)


@contextlib.contextmanager
def _read_snapshot(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection of our own inside one read transaction: a consistent view, writers not blocked (WAL)."""
    with _read_snapshots(db_path, 0) as (conn, _):
        yield conn


@contextlib.contextmanager
def _read_snapshots(db_path: Path, readers: int) -> Iterator[tuple[sqlite3.Connection, list[sqlite3.Connection]]]:
    """A connection of our own inside a read transaction, and up to ``readers`` more (for other threads) inside
    read transactions on the very same snapshot (WAL: writers are not blocked while they read).

    The snapshots are lined up by holding the write lock, on one more connection, while they all start: no
    commit can land between them, and writers wait for that moment only. If the lock is not free within
    `GATE_TIMEOUT` (a long write), the backup makes do with one connection alone (no reader connections)."""
    conns: list[sqlite3.Connection] = []
    try:
        conns = _aligned(db_path, 1 + readers) if readers else []
        if not conns:
            conns = [_begin(db_path)]
    except sqlite3.Error as exc:
        _close(conns)
        raise LocalStoreError(f"cannot read the local database for a backup: {exc}") from exc
    try:
        yield conns[0], conns[1:]
    finally:
        _close(conns)


def _begin(db_path: Path, *, threads: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=10, check_same_thread=not threads)
    try:
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute("BEGIN")
        conn.execute("SELECT 1 FROM outbox LIMIT 1").fetchone()  # starts the read snapshot now (and cheaply)
    except BaseException:
        conn.close()
        raise
    return conn


def _aligned(db_path: Path, count: int) -> list[sqlite3.Connection]:
    """``count`` connections (usable from any thread) on one snapshot, or none when the write lock is busy."""
    gate = sqlite3.connect(db_path, isolation_level=None, timeout=GATE_TIMEOUT)
    try:
        try:
            gate.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return []  # a writer holds the lock: read alone rather than make it (or us) wait
        conns: list[sqlite3.Connection] = []
        try:
            for _ in range(count):
                conns.append(_begin(db_path, threads=True))
        except BaseException:
            _close(conns)
            raise
        return conns
    finally:
        with contextlib.suppress(sqlite3.Error):
            gate.execute("ROLLBACK")
        gate.close()


def _close(conns: list[sqlite3.Connection]) -> None:
    for conn in conns:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("COMMIT")
        conn.close()


def _collections(conn: sqlite3.Connection) -> set[str]:
    """Collection names by skipping through the primary key (one index seek per collection, no full scan)."""
    names: set[str] = set()
    row = conn.execute("SELECT min(collection) FROM records").fetchone()
    while row is not None and row[0] is not None:
        names.add(row[0])
        row = conn.execute("SELECT min(collection) FROM records WHERE collection > ?", (row[0],)).fetchone()
    return names


def local_sections(db_path: Path | None, journal: list[Op]) -> Lines:
    """Sections of a backup taken from the node itself: SQLite records overlaid with the journal, then the
    outbox and the journal as pending sections."""
    overlay = _journal_overlay(journal)
    if db_path is None:  # SQLite unusable: the journal is all there is
        for collection in sorted(overlay):
            pairs = _merge(iter(()), iter(sorted(overlay[collection].items())))
            yield from ((("collection", collection), b, n) for b, n in _batched(_live(pairs)))
        yield from _journal_section(journal)
        return
    try:
        with _read_snapshots(db_path, READERS) as (conn, readers), _RangeReaders(conn, readers) as ranges:
            names = _collections(conn)
            for collection in sorted(names | set(overlay)):
                section = ("collection", collection)
                if collection in overlay:
                    keyed = conn.execute(_LOCAL_KEYED_LINES, (collection,))
                    pairs = _merge(iter(keyed), iter(sorted(overlay[collection].items())))
                    for batch, n in _batched(_live(pairs)):
                        yield section, batch, n
                    continue
                yield from ((section, lines, n) for lines, n in ranges.batches(collection))
            cur = conn.execute(_OUTBOX_LINES)
            while rows := cur.fetchmany(BATCH):
                yield ("pending", "outbox"), b"".join(map(_first, rows)), len(rows)
    except sqlite3.Error as exc:
        raise LocalStoreError(f"reading the local database for a backup failed: {exc}") from exc
    yield from _journal_section(journal)


def _local_batches(conn: sqlite3.Connection, collection: str) -> Iterator[tuple[bytes, int]]:
    """A collection's live records as lines, in key order, a batch (and its count) at a time."""
    after = ""  # keys are never empty
    while True:
        last, count, lines = conn.execute(_LOCAL_BATCH, (collection, after, BATCH)).fetchone()
        if not count:
            return
        yield lines, count
        after = last


class _RangeReaders:
    """A collection's live records as lines, in key order, a batch (and its count) at a time: built by threads
    of our own, one connection each (``readers``, on the snapshot of ``conn``), range after range as ``conn``
    finds the ranges' bounds. Without reader connections, ``conn`` builds them itself. Use as a context
    manager: leaving it waits for the threads, so the connections can be closed."""

    def __init__(self, conn: sqlite3.Connection, readers: list[sqlite3.Connection]) -> None:
        self._conn = conn
        self._free: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        for reader in readers:
            self._free.put(reader)
        self._depth = READ_AHEAD * len(readers)
        self._pool = (
            ThreadPoolExecutor(max_workers=len(readers), thread_name_prefix="hybridstore-backup-read")
            if readers
            else None
        )

    def __enter__(self) -> _RangeReaders:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def batches(self, collection: str) -> Iterator[tuple[bytes, int]]:
        if self._pool is None:
            yield from _local_batches(self._conn, collection)
            return
        pending: deque[Future[tuple[int, bytes]]] = deque()
        try:
            for after, upto in _ranges(self._conn, collection):
                pending.append(self._pool.submit(self._read, collection, after, upto))
                if len(pending) >= self._depth:
                    count, lines = pending.popleft().result()
                    if count:
                        yield lines, count
            while pending:
                count, lines = pending.popleft().result()
                if count:
                    yield lines, count
        finally:
            for future in pending:
                future.cancel()
            wait(pending)  # none may still be using a connection once we are gone

    def _read(self, collection: str, after: str, upto: str | None) -> tuple[int, bytes]:
        conn = self._free.get()
        try:
            if upto is None:
                count, lines = conn.execute(_RANGE_TAIL, (collection, after)).fetchone()
            else:
                count, lines = conn.execute(_RANGE, (collection, after, upto)).fetchone()
        finally:
            self._free.put(conn)
        return count, lines


def _ranges(conn: sqlite3.Connection, collection: str) -> Iterator[tuple[str, str | None]]:
    """Bounds ``(after, upto]`` of consecutive key ranges of at most ``BATCH`` rows covering a collection; the
    last range has no upper bound. Steps over the keys without building anything."""
    after = ""  # keys are never empty
    while True:
        row = conn.execute(_SKIP, (collection, after, BATCH - 1)).fetchone()
        if row is None:
            yield after, None
            return
        yield after, row[0]
        after = row[0]


def _journal_section(journal: list[Op]) -> Lines:
    for start in range(0, len(journal), BATCH):
        ops = journal[start : start + BATCH]
        yield ("pending", "journal"), b"".join(op_line(op) for op in ops), len(ops)


def primary_sections(primary: PrimaryTier, db_path: Path | None, journal: list[Op]) -> Lines:
    """Sections of a backup taken from the primary's snapshot, overlaid with what this node has not pushed
    (its pending rows, streamed from one SQLite read transaction, then the journal)."""
    journal_overlay = _journal_overlay(journal)
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(_read_snapshot(db_path)) if db_path is not None else None
        try:
            pending = {r[0] for r in conn.execute("SELECT DISTINCT collection FROM outbox")} if conn else set()
        except sqlite3.Error as exc:
            raise LocalStoreError(f"reading the local database for a backup failed: {exc}") from exc
        extras = pending | set(journal_overlay)

        def section(collection: str, pairs: Iterator[Any]) -> Lines:
            if conn is not None and collection in pending:
                pairs = _merge(pairs, iter(conn.execute(_PENDING_KEYED_LINES, (collection, collection))))
            if collection in journal_overlay:
                pairs = _merge(pairs, iter(sorted(journal_overlay[collection].items())))
            return ((("collection", collection), b, n) for b, n in _batched(_live(pairs)))

        def rows(batches: Iterator[list[Any]]) -> Iterator[tuple[str, str, bytes]]:
            for batch in batches:
                for c, k, line in batch:
                    yield c, k, line.encode()

        seen: set[str] = set()
        for collection, group in groupby(
            rows(primary.iter_snapshot(BATCH, columns=PRIMARY_LINE_COLUMNS)), key=itemgetter(0)
        ):
            for extra in sorted(c for c in extras if c < collection and c not in seen):
                seen.add(extra)
                yield from section(extra, iter(()))
            seen.add(collection)
            yield from section(collection, ((k, line) for _, k, line in group))
        for extra in sorted(extras - seen):
            yield from section(extra, iter(()))
        if conn is not None:
            cur = conn.execute(_OUTBOX_LINES)
            while batch := cur.fetchmany(BATCH):
                yield ("pending", "outbox"), b"".join(map(_first, batch)), len(batch)
    yield from _journal_section(journal)


def source_sections(
    source: str, *, primary: PrimaryTier | None, db_path: Path | None, journal: list[Op]
) -> tuple[str, Callable[[], Lines]]:
    if source == "primary":
        if primary is None:
            raise BackupError("no primary configured: a backup from the primary is not possible")
        return "primary", lambda: primary_sections(primary, db_path, journal)
    return "local", lambda: local_sections(db_path, journal)
