"""The local copy of the records (`RecordStore` in ``tiers/base.py``).

Contract:

- A row is the newest this node knows for its key: its own pending write (``synced_at is None``) or the last row
  it saw on the primary (``synced_at`` = when). Tombstones stay until purged; ``get`` and ``get_many`` return
  them, ``scan`` and the counts do not.
- ``put`` stores an op and queues it for the primary in one transaction (see `LocalDatabase._store_op`); a
  stale op (HLC not newer than the stored row's) changes nothing.
- ``store_synced`` / ``store_synced_many`` adopt rows the primary holds, but never over a key with pending
  local ops (they must reach the primary first) and never an older version over a newer one.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ...model import Op, StoredRow
from ..keyrange import key_range
from .database import ROW_COLUMNS, LocalDatabase, as_row

# `StoredRow` from a tuple of all its fields, without the generated ``__new__``'s Python frame.
_make_row: Callable[[tuple[Any, ...]], StoredRow] = functools.partial(tuple.__new__, StoredRow)
_GET = f"SELECT {ROW_COLUMNS} FROM records WHERE collection = ? AND key = ?"


class LocalRecords(LocalDatabase):
    """Records: reads, local writes, and rows adopted from the primary."""

    def get(self, collection: str, key: str) -> StoredRow | None:
        name = (collection, key)
        cache = self.cache
        with self._lock:  # the read hot path: no helper calls; filled under the lock that every write holds
            if name in cache.rows:
                cache.hits += 1
                return cache.rows[name]
            cache.misses += 1
            try:
                row = self._conn.execute(_GET, name).fetchone()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            found = None if row is None else as_row(row)
            self.cache.put(name, found)
        return found

    def put(self, op: Op) -> StoredRow:
        """Store ``op`` and queue it for the primary, in one transaction. A stale or repeated op (HLC not newer
        than the stored one) changes nothing."""
        now = self._clock()
        with self._transaction(precise=True) as conn:  # _store_op discards the key's cached row
            self._store_op(conn, op, now, fresh=False)
            row = conn.execute(_GET, (op.collection, op.key)).fetchone()
        return as_row(row)

    def scan(self, collection: str, *, prefix: str = "", after: str | None = None, limit: int = 100) -> list[StoredRow]:
        low, inclusive, high = key_range(prefix, after)
        sql = f"SELECT {ROW_COLUMNS} FROM records WHERE collection = ? AND value IS NOT NULL"
        sql += " AND key >= ?" if inclusive else " AND key > ?"
        params: list[Any] = [collection, low]
        if high is not None:
            sql += " AND key < ?"
            params.append(high)
        sql += " ORDER BY key LIMIT ?"
        params.append(limit)
        return [as_row(r) for r in self._read(sql, params)]

    def get_many(self, collection: str, keys: Sequence[str]) -> list[StoredRow]:
        """Rows (tombstones included) for ``keys`` of one collection; keys never written are absent."""
        out: list[StoredRow] = []
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            sql = f"SELECT {ROW_COLUMNS} FROM records WHERE collection = ? AND key IN ({','.join('?' * len(part))})"
            out += [as_row(r) for r in self._read(sql, [collection, *part])]
        return out

    def store_synced(self, row: StoredRow) -> None:
        """Adopt a row the primary holds (write-through result, read-through refresh), unless this key has
        pending local ops, which must reach the primary first."""
        now = self._clock()
        name = (row.collection, row.key)
        # One statement in autocommit mode is its own transaction: no BEGIN/COMMIT round of calls.
        with self._lock:
            conn = self._conn
            try:
                cur = conn.execute(
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
                self.cache.discard(name)
                raise self._error(exc) from exc
            if cur.rowcount:  # stored as given: the next read or write-through of the key needs no SELECT
                # `row` with synced_at = now (built as a tuple: `_replace` is a Python-level call); replaces the
                # cached row
                self.cache.put(name, _make_row((*row[:7], now)))
            else:
                self.cache.discard(name)

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

    def count_live(self) -> int:
        """How many live records (tombstones excluded) this node holds, in all collections."""
        return int(self._read("SELECT count(*) FROM records WHERE value IS NOT NULL")[0][0])

    def max_hlc(self) -> str | None:
        """The largest HLC stored (the node's clock starts after it)."""
        rows = self._read("SELECT max(hlc) FROM records")
        return rows[0][0] if rows else None
