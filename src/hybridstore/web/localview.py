"""Read-only figures about the node's SQLite file that the local tier has no method for yet: bytes per
collection, and each outbox entry's attempts and last error (for the CLI's ``collections`` and ``pending``, and
the API's ``/collections`` and ``/outbox``; no FastAPI needed).

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
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import LocalStoreError

if TYPE_CHECKING:
    from ..store import HybridStore


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


def outbox_view(store: HybridStore, *, collection: str | None, limit: int) -> dict[str, Any]:
    """What waits for the primary, as plain data: ``depth``, ``oldest_created_at``, ``dead_letters``, the oldest
    ``limit`` outbox ``entries`` and the emergency ``journal``'s ops (of one collection, if given).
    `LocalStoreError` if the local store is not usable."""
    local = store.node.slot.tier
    if local is None:
        raise LocalStoreError(f"the local store is not usable: {store.node.slot.error}; see `hybridstore repair`")
    depth, oldest = local.outbox_stats()
    entries = outbox_entries(local.path, limit=limit, collection=collection)
    journal = [
        {
            "tier": "journal",
            "op_id": op.op_id,
            "collection": op.collection,
            "key": op.key,
            "deleted": op.deleted,
            "created_at": op.created_at,
        }
        for op in store.node.journal.entries()
        if collection in (None, op.collection)
    ]
    return {
        "depth": depth,
        "oldest_created_at": oldest,
        "dead_letters": local.dead_letter_count(),
        "entries": [e.to_dict() for e in entries],
        "journal": journal,
    }


__all__ = ["CollectionFigures", "OutboxEntry", "collection_figures", "outbox_entries", "outbox_view"]
