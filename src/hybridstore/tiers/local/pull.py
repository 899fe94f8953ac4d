"""The pull side: rows adopted from the primary's change feed, the feed cursor, full resync, and the node's small
metadata (`PullCursor` in ``tiers/base.py``).

Contract:

- ``apply_pulled`` adopts feed rows and saves the cursor in one transaction, so after a crash the feed resumes
  from the last cursor whose rows are stored. A key with pending local ops keeps them (they reach the primary
  first); otherwise only a newer version replaces the local row (any version with ``force``).
- ``begin_resync`` … ``end_resync``: rows the full resync did not confirm (gone from the primary) are dropped;
  rows with pending local ops are never touched.
- ``meta_get`` / ``meta_set``: small named strings kept with the data (the cursor is ``pull_cursor``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .database import LocalDatabase

_SAVE_META = "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value"


class LocalPullCursor(LocalDatabase):
    """Change-feed rows, cursor, resync, metadata."""

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
                conn.execute(_SAVE_META, ("pull_cursor", cursor))
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

    def meta_set(self, name: str, value: str) -> None:
        with self._transaction() as conn:
            conn.execute(_SAVE_META, (name, value))
