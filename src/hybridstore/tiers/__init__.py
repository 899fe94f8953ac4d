"""The storage tiers: primary (PostgreSQL), local (SQLite), journal (file). `Tier` is what they share; the role
protocols in ``base.py`` say what each one does beyond it."""

from .base import (
    ChangeFeed,
    Journal,
    Outbox,
    PendingRows,
    PrimaryWrites,
    PullCursor,
    RecordStore,
    Tier,
    TierHealth,
)

__all__ = [
    "ChangeFeed",
    "Journal",
    "Outbox",
    "PendingRows",
    "PrimaryWrites",
    "PullCursor",
    "RecordStore",
    "Tier",
    "TierHealth",
]
