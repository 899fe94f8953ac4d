"""Read-only figures about the node's SQLite file that the local tier has no method for yet: bytes per
collection, and each outbox entry's attempts and last error.

They are read on a connection of their own, opened read-only (``mode=ro``), so nothing here can change the
store; the tables are those of ``migrations/local/``. Once `LocalTier` offers ``collection_stats()`` and
``pending_entries()``, the commands should use them and this module can go.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import LocalStoreError


@dataclass(frozen=True)
class CollectionFigures:
    collection: str
    records: int  # live records (tombstones excluded)
    bytes: int  # their values as stored: UTF-8 JSON
    pending: int  # outbox entries (writes and deletes) not yet accepted by the primary

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    op_id: str
    collection: str
    key: str
    deleted: bool
    created_at: float
    attempts: int  # pushes tried (failed to reach the primary, or refused by it)
    rejections: int  # refusals by the primary (at the limit: a dead letter)
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _reading(db: Path) -> Iterator[sqlite3.Connection]:
    try:
        conn = sqlite3.connect(f"file:{quote(str(db.resolve()))}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise LocalStoreError(f"cannot read {db}: {exc}") from exc
    try:
        yield conn
    except sqlite3.Error as exc:
        raise LocalStoreError(f"cannot read {db}: {exc}") from exc
    finally:
        conn.close()


def collection_figures(db: Path) -> list[CollectionFigures]:
    """Every collection with live records or pending writes, by name."""
    with _reading(db) as conn:
        live = conn.execute(
            "SELECT collection, count(*), coalesce(sum(length(CAST(value AS BLOB))), 0) FROM records "
            "WHERE value IS NOT NULL GROUP BY collection"
        ).fetchall()
        pending = dict(conn.execute("SELECT collection, count(*) FROM outbox GROUP BY collection").fetchall())
    figures = {c: CollectionFigures(c, n, size, pending.get(c, 0)) for c, n, size in live}
    for c, n in pending.items():
        figures.setdefault(c, CollectionFigures(c, 0, 0, n))
    return [figures[c] for c in sorted(figures)]


def outbox_entries(db: Path, *, limit: int, collection: str | None = None) -> list[OutboxEntry]:
    """The oldest ``limit`` outbox entries (of one collection, if given), oldest first."""
    sql = (
        "SELECT seq, op_id, collection, key, value IS NULL, created_at, attempts, rejections, last_error FROM outbox"
        + (" WHERE collection = ?" if collection else "")
        + " ORDER BY seq LIMIT ?"
    )
    params: tuple[Any, ...] = (collection, limit) if collection else (limit,)
    with _reading(db) as conn:
        rows = conn.execute(sql, params).fetchall()
    return [OutboxEntry(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7], r[8]) for r in rows]


__all__ = ["CollectionFigures", "OutboxEntry", "collection_figures", "outbox_entries"]
