"""The pull side: rows adopted from the primary's change feed, the feed cursor, full resync, and the node's small
metadata (`PullCursor` in ``tiers/base.py``).

Contract:

- ``apply_pulled`` adopts feed rows and saves the cursor in one transaction, so after a crash the feed resumes
  from the last cursor whose rows are stored. A key with pending local ops keeps them (they reach the primary
  first) and the row is kept aside instead, so that settling those ops ends at the newest row the node has seen
  (see `LocalPullCursor.apply_pulled`); otherwise only a newer version replaces the local row (any version with
  ``force``).
- ``begin_resync`` … ``end_resync``: rows the full resync did not confirm (gone from the primary) are dropped;
  rows with pending local ops are never touched.
- ``meta_get`` / ``meta_set``: small named strings kept with the data (the cursor is ``pull_cursor``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from ...model import StoredRow
from .database import LocalDatabase

_SAVE_META = "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value"
# The version the node knows for a key with pending local ops (no row: none pending).
_KNOWN_VERSION = "SELECT version FROM records WHERE collection = ? AND key = ? AND pending_seq IS NOT NULL"
# Which rows of a page (by position) are for keys with pending local ops, with the version the node knows.
_PENDING_IN_PAGE = """
SELECT j.key, r.version FROM json_each(?) AS j
JOIN records AS r ON r.collection = json_extract(j.value, '$[0]') AND r.key = json_extract(j.value, '$[1]')
WHERE r.pending_seq IS NOT NULL
"""


class LocalPullCursor(LocalDatabase):
    """Change-feed rows, cursor, resync, metadata."""

    def apply_pulled(self, rows: Sequence[Sequence[Any]], cursor: str | None, *, force: bool = False) -> int:
        """Adopt rows pulled from the primary's change feed and save the feed cursor, in one transaction. ``rows``
        are ``(collection, key, value, version, hlc, origin, updated_at, …)`` (a `StoredRow` or a feed row). A
        newer version replaces the local row (``force``: any version, for a full resync). Returns how many rows
        changed.

        A key with pending local ops keeps them: they reach the primary first and the push settles the key. But
        the cursor moves past the row all the same, and the push may have been applied *before* that row was
        written (its answer still on the way back): settling it would then adopt an older row than one already
        pulled, and the feed would never bring the newer one again — the node would keep a stale value for good.
        So such a row is kept aside (the newest per key, in memory: ``_pulled_aside``) and `complete` / `reject`
        end the key at whichever is newer, the push's row or the one set aside. Memory is enough: a push that
        is not settled yet stays in the outbox, so after a crash it is pushed again, and the primary answers a
        replayed op with its current row — newer than anything pulled before."""
        cond = "records.pending_seq IS NULL" + ("" if force else " AND excluded.version > records.version")
        width = len(rows[0]) if rows else 7
        # Rows go to SQLite as they come (no per-row tuple is built): extra columns (the feed's stamp) are bound to
        # numbered parameters the statement mentions in an always-true test; synced_at is SQLite's own clock.
        extra = "".join(f" AND (?{n} IS NULL OR 1)" for n in range(8, width + 1))
        with self._transaction(precise=True) as conn:
            discard = self.cache.discard
            for row in rows:
                discard((row[0], row[1]))
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
            if changed < len(rows):
                self._set_aside(conn, rows)
            if cursor is not None:
                conn.execute(_SAVE_META, ("pull_cursor", cursor))
        return changed

    def _set_aside(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Keep aside the rows of keys with pending ops that are newer than what the node knows (inside the
        caller's transaction, under the lock). Should that transaction fail, what was set aside is still a row
        the primary held: adopting it later, when it is the newest, is right."""
        # The keys with pending ops are the outbox's: when it holds fewer entries than the page (the usual case:
        # none or a few), they are read from it; otherwise the page's keys are looked up in records.
        queued = conn.execute("SELECT collection, key FROM outbox LIMIT ?", (len(rows) + 1,)).fetchall()
        if not queued:
            return
        if len(queued) <= len(rows):
            keys = set(queued)
            found = [
                (i, known)
                for i, r in enumerate(rows)
                if (r[0], r[1]) in keys
                for (known,) in conn.execute(_KNOWN_VERSION, (r[0], r[1])).fetchall()
            ]
        else:
            found = conn.execute(_PENDING_IN_PAGE, (json.dumps([(r[0], r[1]) for r in rows]),)).fetchall()
        for i, known in found:
            row = rows[i]
            key = (row[0], row[1])
            kept = self._pulled_aside.get(key)
            if row[3] > known and (kept is None or row[3] > kept.version):
                self._pulled_aside[key] = StoredRow(*row[:7])

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

    def meta_set(self, name: str, value: str) -> None:
        with self._transaction(precise=True) as conn:  # no record row
            conn.execute(_SAVE_META, (name, value))
