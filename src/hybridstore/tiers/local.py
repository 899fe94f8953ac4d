"""LocalTier: the node's SQLite database (WAL) — records, the outbox of ops the primary has not accepted yet,
and small node metadata.

Every local write stores the record and its outbox row in one ``BEGIN IMMEDIATE`` transaction, so a write is
either queued for the primary or not made at all. Durability follows ``synchronous``: ``NORMAL`` (default)
survives a crash of the process (SIGKILL included); ``FULL`` also survives power loss / OS crash, at the cost
of an fsync per commit.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import CorruptionError, LocalStoreError
from ..migrations import migrate_sqlite
from ..model import ApplyOutcome, Op, StoredRow
from .base import Change, TierHealth

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}

_UPSERT_PENDING = """
INSERT INTO records (collection, key, value, version, hlc, origin, updated_at, synced_at, pending_seq)
VALUES (?, ?, ?, 0, ?, ?, ?, NULL, ?)
ON CONFLICT (collection, key) DO UPDATE SET
    value = excluded.value, hlc = excluded.hlc, origin = excluded.origin,
    updated_at = excluded.updated_at, synced_at = NULL, pending_seq = excluded.pending_seq,
    base_value = CASE WHEN records.pending_seq IS NULL THEN records.value ELSE records.base_value END
WHERE excluded.hlc > records.hlc
"""
_INSERT_OUTBOX = """
INSERT INTO outbox (seq, op_id, collection, key, value, hlc, origin, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
# After a push: a key whose newest pending op was pushed (pending_seq <= pushed seq) takes the primary's row and
# is synced; a key with later pending ops keeps its value and learns the new version and merge base. SET
# expressions all see the old row, so every CASE tests the same pending_seq.
_COMPLETE = """
UPDATE records SET
    value = CASE WHEN pending_seq <= ?7 THEN ?1 ELSE value END,
    hlc = CASE WHEN pending_seq <= ?7 THEN ?2 ELSE hlc END,
    origin = CASE WHEN pending_seq <= ?7 THEN ?3 ELSE origin END,
    updated_at = CASE WHEN pending_seq <= ?7 THEN ?4 ELSE updated_at END,
    synced_at = CASE WHEN pending_seq <= ?7 THEN ?5 ELSE synced_at END,
    base_value = CASE WHEN pending_seq <= ?7 THEN NULL ELSE ?1 END,
    pending_seq = CASE WHEN pending_seq <= ?7 THEN NULL ELSE pending_seq END,
    version = ?6
WHERE collection = ?8 AND key = ?9
"""
_ROW_COLUMNS = "collection, key, value, version, hlc, origin, updated_at, synced_at"
_GET = f"SELECT {_ROW_COLUMNS} FROM records WHERE collection = ? AND key = ?"


_row = StoredRow._make


def map_sqlite_error(exc: sqlite3.Error) -> LocalStoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code in _CORRUPT_CODES or "malformed" in str(exc):
        return CorruptionError(f"local SQLite database is corrupt: {exc}")
    return LocalStoreError(f"local SQLite database failed: {exc}")


def key_range(prefix: str, after: str | None) -> tuple[str, bool, str | None]:
    """Key range of a prefix scan that resumes after ``after``: (low, low_inclusive, high_exclusive)."""
    if after is not None and after >= prefix:
        low, inclusive = after, False
    else:
        low, inclusive = prefix, True
    high = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix and ord(prefix[-1]) < 0x10FFFF else None
    return low, inclusive, high


class LocalTier:
    """SQLite tier. Thread-safe: one connection guarded by a lock (SQLite serialises writers anyway)."""

    name = "local"

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self.last_error: str | None = None
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
            self._conn.execute("PRAGMA journal_mode=WAL").fetchall()
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            migrate_sqlite(self._conn, "local")  # the schema: migrations/local/
            row = self._conn.execute("SELECT max(seq) FROM outbox").fetchone()
        except sqlite3.Error as exc:
            with contextlib.suppress(Exception):
                self._conn.close()
            raise map_sqlite_error(exc) from exc
        self._next_seq = (row[0] or 0) + 1

    # -- plumbing ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` under the tier lock; rolls back on any exception."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error(exc) from exc
            except BaseException:
                self._rollback()
                raise

    def _error(self, exc: sqlite3.Error) -> LocalStoreError:
        """Our error for a SQLite failure, remembered for health()."""
        err = map_sqlite_error(exc)
        self.last_error = str(err)
        return err

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # in_transaction raises too once the connection is closed
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    # -- Tier protocol ----------------------------------------------------------------------------------------

    def get(self, collection: str, key: str) -> StoredRow | None:
        with self._lock:  # the read hot path: no helper calls
            try:
                row = self._conn.execute(_GET, (collection, key)).fetchone()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
        return None if row is None else _row(row)

    def put(self, op: Op) -> StoredRow:
        """Store ``op`` and queue it for the primary, in one transaction. A stale or repeated op (HLC not newer
        than the stored one) changes nothing."""
        now = self._clock()
        with self._transaction() as conn:
            self._put_locked(conn, op, now)
            row = conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM records WHERE collection = ? AND key = ?",
                (op.collection, op.key),
            ).fetchone()
        return _row(row)

    def queue(self, op: Op) -> bool:
        """Like `put` without reading the row back: the write hot path. False if the op was stale."""
        now = self._clock()
        with self._transaction() as conn:
            return self._put_locked(conn, op, now)

    def _put_locked(self, conn: sqlite3.Connection, op: Op, now: float) -> bool:
        seq = self._next_seq
        cur = conn.execute(_UPSERT_PENDING, (op.collection, op.key, op.value_json, op.hlc, op.origin, now, seq))
        if not cur.rowcount:
            return False
        conn.execute(
            _INSERT_OUTBOX,
            (seq, op.op_id, op.collection, op.key, op.value_json, op.hlc, op.origin, op.created_at or now),
        )
        self._next_seq = seq + 1
        return True

    def scan(self, collection: str, *, prefix: str = "", after: str | None = None, limit: int = 100) -> list[StoredRow]:
        low, inclusive, high = key_range(prefix, after)
        sql = f"SELECT {_ROW_COLUMNS} FROM records WHERE collection = ? AND value IS NOT NULL"
        sql += " AND key >= ?" if inclusive else " AND key > ?"
        params: list[Any] = [collection, low]
        if high is not None:
            sql += " AND key < ?"
            params.append(high)
        sql += " ORDER BY key LIMIT ?"
        params.append(limit)
        return [_row(r) for r in self._read(sql, params)]

    def pending_rows(
        self, collection: str, *, prefix: str = "", after: str | None = None, upper: str | None = None
    ) -> list[StoredRow]:
        """Rows with local changes the primary has not accepted (tombstones included) in a key range ending at
        ``upper`` (inclusive; ``None`` = no end), ordered by key."""
        low, inclusive, high = key_range(prefix, after)
        sql = f"SELECT {_ROW_COLUMNS} FROM records WHERE collection = ? AND pending_seq IS NOT NULL"
        sql += " AND key >= ?" if inclusive else " AND key > ?"
        params: list[Any] = [collection, low]
        if high is not None:
            sql += " AND key < ?"
            params.append(high)
        if upper is not None:
            sql += " AND key <= ?"
            params.append(upper)
        return [_row(r) for r in self._read(sql + " ORDER BY key", params)]

    def changes(self, after: int = 0, limit: int = 1000) -> list[Change]:
        """Pending outbox entries (changes the primary has not accepted yet), oldest first."""
        rows = self._read(
            "SELECT seq, collection, key, value, 0, hlc, origin, created_at, NULL FROM outbox "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [Change(r[0], _row(r[1:])) for r in rows]

    def health(self) -> TierHealth:
        start = time.perf_counter()
        try:
            self._read("SELECT 1")
        except LocalStoreError as exc:
            return TierHealth("local", "down", str(exc), extra={"path": str(self.path)})
        return TierHealth(
            "local",
            "healthy",
            "",
            (time.perf_counter() - start) * 1000,
            extra={"path": str(self.path)},
        )

    def close(self) -> None:
        with self._lock:  # closing a broken file must not raise
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()

    # -- outbox and sync --------------------------------------------------------------------------------------

    def import_ops(self, ops: Sequence[Op]) -> int:
        """Store many ops (journal replay) in one transaction; returns how many changed a record."""
        now = self._clock()
        with self._transaction() as conn:
            return sum(1 for op in ops if self._put_locked(conn, op, now))

    def pending_ops(self, limit: int, *, after: int = 0) -> list[tuple[int, Op, str | None]]:
        """The oldest ``limit`` outbox entries after seq ``after``, each with the primary version this node knows
        for its key as ``base_version`` (so a follow-up write is not mistaken for a conflict) and the merge base:
        the last value this node agreed on with the primary for the key (``None`` if none)."""
        rows = self._read(
            "SELECT o.seq, o.op_id, o.collection, o.key, o.value, o.hlc, o.origin, coalesce(r.version, 0), "
            "o.created_at, r.base_value "
            "FROM outbox o LEFT JOIN records r ON r.collection = o.collection AND r.key = o.key "
            "WHERE o.seq > ? ORDER BY o.seq LIMIT ?",
            (after, limit),
        )
        return [(r[0], Op(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]), r[9]) for r in rows]

    def complete(self, done: Sequence[tuple[int, Op, ApplyOutcome]], *, exact: bool = False) -> None:
        """Remove pushed ops from the outbox and record what the primary now holds for their keys.

        A key whose newest pending op was pushed becomes synced and takes the primary's row (our value, or a
        newer one that won under last-writer-wins); a key with later pending ops keeps its local value and
        only learns the new primary version."""
        now = self._clock()
        last: dict[tuple[str, str], tuple[int, StoredRow | None]] = {}
        for seq, op, outcome in done:
            last[(op.collection, op.key)] = (seq, outcome.current)
        adopt = [
            (cur.value_json, cur.hlc, cur.origin, cur.updated_at, now, cur.version, seq, c, k)
            for (c, k), (seq, cur) in last.items()
            if cur is not None
        ]
        gone = [(now, c, k, seq) for (c, k), (seq, cur) in last.items() if cur is None]
        with self._transaction() as conn:
            if exact:  # some entries in between stay (e.g. rejected by the primary)
                conn.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _, _ in done])
            else:  # the batch is the oldest entries, so it is exactly every entry up to its largest seq
                conn.execute("DELETE FROM outbox WHERE seq <= ?", (max(seq for seq, _, _ in done),))
            conn.executemany(_COMPLETE, adopt)
            conn.executemany(
                "UPDATE records SET synced_at = ?, pending_seq = NULL "
                "WHERE collection = ? AND key = ? AND pending_seq <= ?",
                gone,
            )

    def store_synced(self, row: StoredRow) -> None:
        """Adopt a row the primary holds (write-through result, read-through refresh), unless this key has
        pending local ops, which must reach the primary first."""
        now = self._clock()
        # One statement in autocommit mode is its own transaction: no BEGIN/COMMIT round of calls.
        with self._lock:
            conn = self._conn
            try:
                conn.execute(
                    "INSERT INTO records (collection, key, value, version, hlc, origin, updated_at, synced_at, "
                    "pending_seq, base_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL) "
                    "ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value, "
                    "version = excluded.version, hlc = excluded.hlc, origin = excluded.origin, "
                    "updated_at = excluded.updated_at, synced_at = excluded.synced_at "
                    "WHERE records.pending_seq IS NULL AND excluded.version >= records.version",
                    (
                        row.collection,
                        row.key,
                        row.value_json,
                        row.version,
                        row.hlc,
                        row.origin,
                        row.updated_at,
                        now,
                    ),
                )
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def store_synced_many(self, rows: Sequence[StoredRow]) -> None:
        """`store_synced` for many rows in one transaction (rebuilding the local copy from the primary or a
        backup); tombstones included."""
        now = self._clock()
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO records (collection, key, value, version, hlc, origin, updated_at, synced_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value, version = excluded.version, "
                "hlc = excluded.hlc, origin = excluded.origin, updated_at = excluded.updated_at, "
                "synced_at = excluded.synced_at "
                "WHERE records.pending_seq IS NULL AND excluded.version >= records.version",
                [(*r[:7], r.synced_at or now) for r in rows],
            )

    def collection_counts(self) -> dict[str, int]:
        """Live records per collection."""
        rows = self._read("SELECT collection, count(*) FROM records WHERE value IS NOT NULL GROUP BY collection")
        return {c: int(n) for c, n in rows}

    def record_failure(self, seqs: Sequence[int], error: str) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                [(error[:500], s) for s in seqs],
            )

    def reject(self, seq: int, error: str, max_rejections: int) -> bool:
        """The primary refused outbox entry ``seq`` (the data, not the connection). After ``max_rejections``
        refusals it moves to the dead letters; if it was the key's newest pending op the record goes back to the
        last value agreed with the primary. Returns True when it was dead-lettered."""
        now = self._clock()
        with self._transaction() as conn:
            row = conn.execute(
                "UPDATE outbox SET rejections = rejections + 1, attempts = attempts + 1, last_error = ? "
                "WHERE seq = ? RETURNING rejections, op_id, collection, key, value, hlc, origin, created_at, attempts",
                (error[:1000], seq),
            ).fetchone()
            if row is None or row[0] < max_rejections:
                return False
            conn.execute(
                "INSERT INTO dead_letters (op_id, collection, key, value, hlc, origin, created_at, attempts, "
                "last_error, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row[1:], error[:1000], now),
            )
            conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            later = conn.execute(
                "SELECT max(seq) FROM outbox WHERE collection = ? AND key = ?", (row[2], row[3])
            ).fetchone()[0]
            if later is None:
                # Nothing else pending for the key: back to what the primary holds (a never-synced key: gone).
                conn.execute(
                    "DELETE FROM records WHERE collection = ? AND key = ? AND version = 0 AND pending_seq = ?",
                    (row[2], row[3], seq),
                )
                conn.execute(
                    "UPDATE records SET value = base_value, base_value = NULL, pending_seq = NULL, synced_at = ? "
                    "WHERE collection = ? AND key = ? AND pending_seq = ?",
                    (now, row[2], row[3], seq),
                )
            else:
                conn.execute(
                    "UPDATE records SET pending_seq = ? WHERE collection = ? AND key = ? AND pending_seq = ?",
                    (later, row[2], row[3], seq),
                )
            return True

    def dead_letters(self, *, limit: int = 100, after_id: int = 0) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT id, op_id, collection, key, value, hlc, origin, created_at, attempts, last_error, dead_at "
            "FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        names = (
            "id",
            "op_id",
            "collection",
            "key",
            "value",
            "hlc",
            "origin",
            "created_at",
            "attempts",
            "error",
            "dead_at",
        )
        return [dict(zip(names, r, strict=True)) for r in rows]

    def dead_letter_count(self) -> int:
        return int(self._read("SELECT count(*) FROM dead_letters")[0][0])

    def take_dead_letter(self, letter_id: int) -> dict[str, Any] | None:
        """Remove a dead letter and return it (``None`` if there is no such id)."""
        with self._transaction() as conn:
            row = conn.execute(
                "DELETE FROM dead_letters WHERE id = ? RETURNING id, op_id, collection, key, value, hlc, origin",
                (letter_id,),
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("id", "op_id", "collection", "key", "value", "hlc", "origin"), row, strict=True))

    def apply_pulled(self, rows: Sequence[Sequence[Any]], cursor: str | None, *, force: bool = False) -> int:
        """Adopt rows pulled from the primary's change feed and save the feed cursor, in one transaction. ``rows``
        are ``(collection, key, value, version, hlc, origin, updated_at, …)`` (a `StoredRow` or a feed row). A
        key with pending local ops keeps them (they reach the primary first); otherwise a newer version replaces
        the local row (``force``: any version, for a full resync). Returns how many rows changed."""
        cond = "records.pending_seq IS NULL" + ("" if force else " AND excluded.version > records.version")
        width = len(rows[0]) if rows else 7
        # Rows go to SQLite as they come (no per-row tuple is built): extra columns (the feed's stamp) are bound to
        # numbered parameters the statement mentions in an always-true test; synced_at is SQLite's own clock.
        extra = "".join(f" AND (?{n} IS NULL OR 1)" for n in range(8, width + 1))
        with self._transaction() as conn:
            cur = conn.executemany(
                "INSERT INTO records (collection, key, value, version, hlc, origin, updated_at, synced_at, "
                "pending_seq, base_value) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
                "(julianday('now') - 2440587.5) * 86400.0, NULL, NULL) "
                "ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value, version = excluded.version, "
                "hlc = excluded.hlc, origin = excluded.origin, updated_at = excluded.updated_at, "
                f"synced_at = excluded.synced_at WHERE {cond}{extra}",
                rows,
            )
            changed = cur.rowcount
            if cursor is not None:
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('pull_cursor', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (cursor,),
                )
        return changed

    def begin_resync(self) -> None:
        """Mark every synced row as unconfirmed; a full resync confirms what the primary still holds."""
        with self._transaction() as conn:
            conn.execute("UPDATE records SET synced_at = 0 WHERE pending_seq IS NULL")

    def end_resync(self) -> int:
        """Drop synced rows the full resync did not confirm (gone from the primary); returns how many."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM records WHERE synced_at = 0 AND pending_seq IS NULL").rowcount

    def meta_get(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def outbox_stats(self) -> tuple[int, float | None]:
        """(depth, created_at of the oldest pending op)."""
        rows = self._read("SELECT count(*), min(created_at) FROM outbox")
        return int(rows[0][0]), rows[0][1]

    def max_hlc(self) -> str | None:
        rows = self._read("SELECT max(hlc) FROM records")
        return rows[0][0] if rows else None

    def integrity_check(self) -> list[str]:
        return [r[0] for r in self._read("PRAGMA integrity_check")]

    def meta_set(self, name: str, value: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def get_many(self, collection: str, keys: Sequence[str]) -> list[StoredRow]:
        """Rows (tombstones included) for ``keys`` of one collection; keys never written are absent."""
        out: list[StoredRow] = []
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            sql = f"SELECT {_ROW_COLUMNS} FROM records WHERE collection = ? AND key IN ({','.join('?' * len(part))})"
            out += [_row(r) for r in self._read(sql, [collection, *part])]
        return out
