"""The node's SQLite database (WAL), shared by the local tier's parts: one connection, one lock, one transaction
helper, the schema (``migrations/local/``), and the one write every local op goes through.

Contract:

- Every local write stores the record and its outbox row atomically — one statement (`_store_fresh`, the common
  fresh write) or one ``BEGIN IMMEDIATE`` transaction (`_store_op`) — so a write is either queued for the primary
  or not made at all.
- Durability follows ``synchronous``: ``NORMAL`` (default) survives a crash of the process (SIGKILL included);
  ``FULL`` also survives power loss / OS crash, at the cost of an fsync per commit.
- Thread-safe: one connection guarded by ``_lock`` (SQLite serialises writers anyway).
- Errors: every SQLite failure is raised as `LocalStoreError`, or `CorruptionError` when the file is damaged
  (`map_sqlite_error`), and remembered in ``last_error`` for `health`. A failed transaction is rolled back.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

from ...clock import beyond_drift, stamp_after
from ...errors import CorruptionError, LocalStoreError
from ...migrations import migrate_sqlite
from ...model import Op, StoredRow, TierName
from ..base import TierHealth
from .cache import DEFAULT_MAX_BYTES, RowCache

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}

ROW_COLUMNS = "collection, key, value, version, hlc, origin, updated_at, synced_at"
as_row = StoredRow._make
_new_row = functools.partial(tuple.__new__, StoredRow)  # a row from a tuple of its 8 fields, in C

_UPSERT_PENDING = """
INSERT INTO records (collection, key, value, version, hlc, origin, updated_at, synced_at, pending_seq)
VALUES (?, ?, ?, 0, ?, ?, ?, NULL, ?)
ON CONFLICT (collection, key) DO UPDATE SET
    value = excluded.value, hlc = excluded.hlc, origin = excluded.origin,
    updated_at = excluded.updated_at, synced_at = NULL, pending_seq = excluded.pending_seq,
    base_value = CASE WHEN records.pending_seq IS NULL THEN records.value ELSE records.base_value END
WHERE excluded.hlc > records.hlc
"""
# The key's pending op, if no push can have sent it yet (its seq is above every seq handed to the pusher).
_DROP_PENDING = (
    "DELETE FROM outbox WHERE seq = (SELECT pending_seq FROM records WHERE collection = ? AND key = ?) AND seq > ?"
)
# `_DROP_PENDING` for a batch of keys of one collection (a JSON array of them): one statement whose cost follows
# the keys that exist (a lookup each, in SQLite), not one call from Python per key. CROSS JOIN keeps the keys the
# outer loop (SQLite's planner would otherwise scan the records for each key).
_DROP_PENDING_MANY = """
DELETE FROM outbox WHERE seq IN (
    SELECT r.pending_seq FROM json_each(?3) AS j CROSS JOIN records AS r
    WHERE r.collection = ?2 AND r.key = j.value AND r.pending_seq > ?1
)
"""
_INSERT_OUTBOX = """
INSERT INTO outbox (seq, op_id, collection, key, value, hlc, origin, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
# The common fresh write as one statement (`_store_fresh`): an insert into a connection-local view whose INSTEAD OF
# trigger does `_store_op`'s work — drop the key's pending op when coalescing (only one no push has read, the seq
# above ``drop_above``), upsert the record, queue the op. One statement is its own transaction (a write statement
# takes the write lock before it reads), so it is as atomic as BEGIN IMMEDIATE … COMMIT, and costs a quarter of
# the calls into SQLite. A stored row whose stamp is not older than the op's makes the trigger do nothing at
# all (RAISE(IGNORE)): the caller sees no change and takes `_store_op`'s path, which re-stamps the op. Else the
# trigger hands the stored row's version to the connection's ``hs_stored_version`` function (a new row's is 0),
# so the writer knows the whole row it wrote and can cache it without reading it back. TEMP objects live with
# the connection only: nothing of this is in the file.
_FRESH_WRITE_SCHEMA = """
CREATE TEMP VIEW IF NOT EXISTS hs_fresh_write
    (seq, op_id, collection, key, value, hlc, origin, created_at, updated_at, drop_above)
AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0;
CREATE TEMP TRIGGER IF NOT EXISTS hs_fresh_write INSTEAD OF INSERT ON hs_fresh_write BEGIN
    SELECT CASE WHEN hlc >= NEW.hlc THEN RAISE(IGNORE) ELSE hs_stored_version(version) END
        FROM records WHERE collection = NEW.collection AND key = NEW.key;
    DELETE FROM outbox WHERE seq > NEW.drop_above
        AND seq = (SELECT pending_seq FROM records WHERE collection = NEW.collection AND key = NEW.key);
    INSERT INTO records (collection, key, value, version, hlc, origin, updated_at, synced_at, pending_seq)
    VALUES (NEW.collection, NEW.key, NEW.value, 0, NEW.hlc, NEW.origin, NEW.updated_at, NULL, NEW.seq)
    ON CONFLICT (collection, key) DO UPDATE SET
        value = excluded.value, hlc = excluded.hlc, origin = excluded.origin,
        updated_at = excluded.updated_at, synced_at = NULL, pending_seq = excluded.pending_seq,
        base_value = CASE WHEN records.pending_seq IS NULL THEN records.value ELSE records.base_value END;
    INSERT INTO outbox (seq, op_id, collection, key, value, hlc, origin, created_at)
    VALUES (NEW.seq, NEW.op_id, NEW.collection, NEW.key, NEW.value, NEW.hlc, NEW.origin, NEW.created_at);
END;
"""
_FRESH_WRITE = "INSERT INTO temp.hs_fresh_write VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_NO_DROP = 1 << 62  # ``drop_above`` when not coalescing: no seq is above it


def map_sqlite_error(exc: sqlite3.Error) -> LocalStoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code in _CORRUPT_CODES or "malformed" in str(exc):
        return CorruptionError(f"local SQLite database is corrupt: {exc}")
    return LocalStoreError(f"local SQLite database failed: {exc}")


class LocalDatabase:
    """The connection and its plumbing; the tier's parts (records, outbox, pull cursor) build on it."""

    name: TierName = "local"

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        cache_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        self.path = Path(path)
        self._clock = clock
        # Coalescing: a new write replaces the key's pending op instead of queueing behind it — unless that op may
        # have been sent already (a push that failed may still have committed: only the op itself, pushed again,
        # settles that). A key rewritten 1,000 times during an outage is pushed once, with the merge base and base
        # version of its first pending op (kept by the record row); an embedded store's outbox holds at most one
        # op per key, so disk use follows the records however often keys are rewritten.
        self.coalesce_pending = False
        self._lock = threading.Lock()
        # Hot rows, filled and invalidated under ``_lock`` (see `cache`); 0 bytes: nothing is cached.
        self.cache = RowCache(cache_bytes)
        self.last_error: str | None = None
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
            self._conn.execute("PRAGMA journal_mode=WAL").fetchall()
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            migrate_sqlite(self._conn, "local")
            # The stored version a fresh write keeps (set by the trigger, read under ``_lock`` right after it).
            self._kept_version = [0]
            self._conn.create_function("hs_stored_version", 1, functools.partial(self._kept_version.__setitem__, 0))
            self._conn.executescript(_FRESH_WRITE_SCHEMA)
            row = self._conn.execute("SELECT max(seq) FROM outbox").fetchone()
        except sqlite3.Error as exc:
            with contextlib.suppress(Exception):
                self._conn.close()
            raise map_sqlite_error(exc) from exc
        self._next_seq = (row[0] or 0) + 1  # the outbox seq the next queued op gets
        # The largest seq handed to a pusher: ops at or below it may be on the primary already, and are never
        # coalesced. Every op found at open may have been sent before a crash.
        self._sent_seq = self._next_seq - 1
        # Rows the change feed delivered for keys with pending ops (so not adopted), newest per key: settling a
        # push never adopts a row older than one of these (`LocalPullCursor.apply_pulled`). Guarded by ``_lock``.
        self._pulled_aside: dict[tuple[str, str], StoredRow] = {}

    # -- plumbing ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, *, precise: bool = False) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` under the tier lock; rolls back on any exception. The row cache is
        cleared at the end unless the caller is ``precise``: it discards the rows it writes itself (or writes
        none), inside the transaction."""
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
            finally:
                if not precise:
                    self.cache.clear()

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

    def _store_op(self, conn: sqlite3.Connection, op: Op, now: float, *, fresh: bool) -> Op | None:
        """Store ``op`` as the key's pending value and queue it in the outbox (inside the caller's transaction);
        returns the op as stored. When the stored row's HLC is not older than the op's: a ``fresh`` write (made
        now, after everything this node has seen) is re-stamped just after that row — the only way it can be
        older is a stamp the clock refused to adopt (beyond the drift guard), and a write must never be
        acknowledged and then lost to it; a replayed op (journal, rebuild) is re-stamped only in that case too,
        else it is older than a write made elsewhere since and loses under last-writer-wins: ``None``, nothing
        written. An op whose exact stamp is stored already is that same write: returned, nothing written again."""
        seq = self._next_seq
        self.cache.discard((op.collection, op.key))
        if fresh and self.coalesce_pending:  # a fresh write is always stored (below): its predecessor can go
            conn.execute(_DROP_PENDING, (op.collection, op.key, self._sent_seq))
        cur = conn.execute(_UPSERT_PENDING, (op.collection, op.key, op.value_json, op.hlc, op.origin, now, seq))
        if not cur.rowcount:
            stored = conn.execute(
                "SELECT hlc FROM records WHERE collection = ? AND key = ?", (op.collection, op.key)
            ).fetchone()
            if stored is not None and stored[0] == op.hlc:
                return op  # the same write is stored already (replayed twice, or pulled back from the primary)
            if stored is None or not (fresh or beyond_drift(stored[0])):
                return None
            op = op._replace(hlc=stamp_after(stored[0], op.origin))
            cur = conn.execute(_UPSERT_PENDING, (op.collection, op.key, op.value_json, op.hlc, op.origin, now, seq))
            if not cur.rowcount:  # pragma: no cover - a stamp after the stored one always wins
                raise LocalStoreError(f"could not order a write to {op.collection}/{op.key} after the stored value")
        conn.execute(
            _INSERT_OUTBOX,
            (seq, op.op_id, op.collection, op.key, op.value_json, op.hlc, op.origin, op.created_at or now),
        )
        self._next_seq = seq + 1
        return op

    def _store_fresh(self, op: Op, now: float) -> Op:
        """Store a fresh write and queue it (`_store_op` with ``fresh=True``), in one statement when the stored row
        is older (the common case), else in a transaction through `_store_op`. Takes the tier lock."""
        key = (op.collection, op.key)
        with self._lock:
            conn = self._conn
            seq = self._next_seq
            # The key's cached row stays valid until the statement changes the row (then it is replaced, below): a
            # statement that fails or changes nothing leaves the file as it was.
            kept = self._kept_version
            kept[0] = 0
            before = conn.total_changes
            try:
                conn.execute(
                    _FRESH_WRITE,
                    (
                        seq,
                        op.op_id,
                        op.collection,
                        op.key,
                        op.value_json,
                        op.hlc,
                        op.origin,
                        op.created_at or now,
                        now,
                        self._sent_seq if self.coalesce_pending else _NO_DROP,
                    ),
                )
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            if conn.total_changes != before:
                self._next_seq = seq + 1
                # The row as stored (the next read of the key needs no SELECT).
                self.cache.put(
                    key, _new_row((op.collection, op.key, op.value_json, kept[0], op.hlc, op.origin, now, None))
                )
                return op
        with self._transaction(precise=True) as conn:  # a stored stamp not older than the op's: re-stamp it
            stored = self._store_op(conn, op, now, fresh=True)
        assert stored is not None  # a fresh write is always stored
        return stored

    def _store_fresh_many(self, conn: sqlite3.Connection, ops: Sequence[Op], now: float) -> list[Op] | None:
        """`_store_op` of many fresh writes to distinct keys: one statement for the keys' coalescing, then two
        ``executemany`` (the statements' parameters built column by column, in C: a bulk write or a restore pays
        no Python call per row). ``None``, with nothing changed, when some op would need `_store_op`'s slow path
        (a key written twice in ``ops``, or a stored row whose stamp is not older than the op's): the caller
        then stores them one by one."""
        n = len(ops)
        op_ids, collections, keys, values, stamps, origins, _, created = zip(*ops, strict=True)
        names = list(zip(collections, keys, strict=True))
        if len(set(names)) != n:
            return None
        seq = self._next_seq
        seqs = range(seq, seq + n)
        for name in self.cache.rows.keys() & names:  # the cached ones only, found by C code
            self.cache.discard(name)
        if not all(created):
            created = tuple(c or now for c in created)
        conn.execute("SAVEPOINT hs_bulk")
        try:
            if self.coalesce_pending:
                self._drop_pending_many(conn, collections, keys)
            cur = conn.executemany(
                _UPSERT_PENDING, zip(collections, keys, values, stamps, origins, repeat(now, n), seqs, strict=True)
            )
            if cur.rowcount != n:
                conn.execute("ROLLBACK TO hs_bulk")
                return None
            conn.executemany(
                _INSERT_OUTBOX, zip(seqs, op_ids, collections, keys, values, stamps, origins, created, strict=True)
            )
        finally:
            conn.execute("RELEASE hs_bulk")
        self._next_seq = seq + n
        return list(ops)

    def _drop_pending_many(self, conn: sqlite3.Connection, collections: Sequence[str], keys: Sequence[str]) -> None:
        """`_DROP_PENDING` of each (collection, key) (inside the caller's transaction): the pending op of each key
        that no push can have sent yet goes, so the new op replaces it (coalescing)."""
        groups: dict[str, list[str]] = {}
        if len(set(collections)) == 1:  # the usual batch: one collection
            groups[collections[0]] = list(keys)
        else:
            for collection, key in zip(collections, keys, strict=True):
                groups.setdefault(collection, []).append(key)
        for collection, names in groups.items():
            conn.execute(_DROP_PENDING_MANY, (self._sent_seq, collection, json.dumps(names, ensure_ascii=False)))

    # -- the whole file ---------------------------------------------------------------------------------------

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

    def integrity_check(self) -> list[str]:
        """SQLite's ``PRAGMA integrity_check``: ``["ok"]`` for a sound file (a full read of it: slow on big files)."""
        return [r[0] for r in self._read("PRAGMA integrity_check")]

    def close(self) -> None:
        with self._lock:  # closing a broken file must not raise
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self.cache.clear()
