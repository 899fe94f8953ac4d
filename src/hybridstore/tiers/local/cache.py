"""A bounded in-process cache of hot rows of the local copy, so a local read of a hot key costs a dict lookup.

Coherent because one process owns a data directory (the directory lock) and the cache lives in the one
`LocalDatabase` object that every write to the file goes through: it is filled and invalidated under the tier's
lock, in the same critical section as the SQLite read or write, so a row read before a write can never be put
back after it. A transaction that does not say which keys it wrote clears the whole cache (see
``LocalDatabase._transaction``); a rebuilt file is a new object with an empty cache.

Bounded by bytes (key and JSON value text, plus a fixed overhead per entry); when full, the oldest entries go
first. Keys that are absent are cached too (``None``): a miss on a hot absent key is as cheap as a hit.
"""

from __future__ import annotations

from ...model import StoredRow

ENTRY_OVERHEAD = 200  # bytes per entry besides its text: the tuple, the dict slot, the key tuple
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


class RowCache:
    """(collection, key) → the stored row (``None``: no row). Not thread-safe: the tier's lock guards it."""

    __slots__ = ("_bytes", "hits", "max_bytes", "misses", "rows")

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        # Read directly by `LocalRecords.get` (the hot path: no method call); written only through the methods.
        self.rows: dict[tuple[str, str], StoredRow | None] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def size(self) -> int:
        """Bytes accounted for."""
        return self._bytes

    def lookup(self, key: tuple[str, str]) -> tuple[bool, StoredRow | None]:
        """``(True, row)`` when cached (``row`` is ``None`` for a key known to be absent), ``(False, None)`` if not."""
        rows = self.rows
        if key in rows:
            self.hits += 1
            return True, rows[key]
        self.misses += 1
        return False, None

    def put(self, key: tuple[str, str], row: StoredRow | None) -> None:
        """Cache ``row`` for ``key`` (replacing what was cached), unless it alone would take a quarter of the budget."""
        self.discard(key)
        cost = _cost(key, row)
        if cost > self.max_bytes >> 2:  # one huge value must not flush everything else
            return
        self.rows[key] = row
        self._bytes += cost
        if self._bytes > self.max_bytes:
            self._evict()

    def discard(self, key: tuple[str, str]) -> None:
        if key in self.rows:
            self._bytes -= _cost(key, self.rows.pop(key))

    def clear(self) -> None:
        self.rows.clear()
        self._bytes = 0

    def _evict(self) -> None:
        """Drop the oldest entries until a quarter of the budget is free (amortised: not one per insert)."""
        target = self.max_bytes * 3 // 4
        rows = self.rows
        for key in list(rows):
            if self._bytes <= target:
                break
            self._bytes -= _cost(key, rows.pop(key))


def _cost(key: tuple[str, str], row: StoredRow | None) -> int:
    text = 0 if row is None or row.value_json is None else len(row.value_json)
    return ENTRY_OVERHEAD + len(key[0]) + len(key[1]) + text
