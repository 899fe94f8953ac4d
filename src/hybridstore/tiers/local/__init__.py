"""LocalTier: the node's SQLite database (WAL) — records, the outbox of ops the primary has not accepted yet,
and what the node pulled from the primary.

One class, three jobs, one module each, all on one connection (``database.py``: lock, transactions, schema,
the record + outbox write):

- ``records.py``  `LocalRecords` — the local copy of the records (`RecordStore`);
- ``outbox.py``   `LocalOutbox` — ops waiting for the primary, and dead letters (`Outbox`);
- ``pull.py``     `LocalPullCursor` — change-feed rows, the feed cursor, full resync, metadata (`PullCursor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..keyrange import key_range
from .database import SYNCHRONOUS_MODES, map_sqlite_error
from .outbox import LocalOutbox
from .pull import LocalPullCursor
from .records import LocalRecords

__all__ = ["SYNCHRONOUS_MODES", "LocalTier", "key_range", "map_sqlite_error"]


class LocalTier(LocalRecords, LocalOutbox, LocalPullCursor):
    """SQLite tier. Thread-safe: one connection guarded by a lock (SQLite serialises writers anyway)."""


if TYPE_CHECKING:  # mypy checks that the tier fulfils every protocol it claims
    from ..base import Outbox, PendingRows, PullCursor, RecordStore, Tier

    def _protocols(tier: LocalTier) -> tuple[Tier, RecordStore, Outbox, PendingRows, PullCursor]:
        return tier, tier, tier, tier, tier
