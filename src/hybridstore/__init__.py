"""hybridstore: keep an application's data available and safe when its database is not.

>>> import hybridstore
>>> with hybridstore.open(data_dir="./data") as store:          # doctest: +SKIP
...     store.set("products", "p1", {"name": "Shoe", "price": 10})
"""

from __future__ import annotations

import os
from typing import Any

from .aio import AsyncHybridStore, OpeningStore
from .config import StoreConfig, resolve
from .errors import (
    BackupError,
    BackupTamperedError,
    ClosedError,
    ConfigError,
    ConflictError,
    CorruptionError,
    HybridStoreError,
    JournalError,
    LocalStoreError,
    PrimaryRejectedError,
    PrimaryTimeoutError,
    PrimaryUnavailableError,
    StorageExhaustedError,
    StoreLockedError,
    UnavailableError,
    ValidationError,
    WrongPassphraseError,
)
from .model import Page, Record, SyncReport, WriteResult
from .store import HybridStore

__version__ = "0.1.0"


def open(
    primary_url: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    node_id: str | None = None,
    **options: Any,
) -> HybridStore:
    """Open a store. ``primary_url`` (else ``HYBRIDSTORE_PRIMARY_URL`` / ``SUPABASE_DB_URL`` / ``DATABASE_URL``)
    names the PostgreSQL primary; without one the store runs embedded (SQLite + journal) and queues every
    write for the day a primary is configured. Options: see `StoreConfig`; ``time=`` takes a
    `hybridstore.node.timing.TimeSource` (clocks and randomness of every service: a fake clock in tests)."""
    time = options.pop("time", None)  # a `hybridstore.node.timing.TimeSource` (tests: a fake clock)
    return HybridStore(resolve(primary_url=primary_url, data_dir=data_dir, node_id=node_id, **options), time=time)


def open_async(
    primary_url: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    node_id: str | None = None,
    max_workers: int | None = None,
    **options: Any,
) -> OpeningStore:
    """`open` for asyncio code: the same store behind awaitable methods, run in a pool of ``max_workers`` threads
    of its own (default ``min(32, cpu + 4)``). Use ``async with hybridstore.open_async(...) as store:`` (closed on
    exit) or ``store = await hybridstore.open_async(...)`` (then ``await store.aclose()``). Cancelling an
    ``await`` does not cancel the operation underneath: see `hybridstore.aio`."""
    return AsyncHybridStore.open(primary_url, data_dir=data_dir, node_id=node_id, max_workers=max_workers, **options)


__all__ = [
    "AsyncHybridStore",
    "BackupError",
    "BackupTamperedError",
    "ClosedError",
    "ConfigError",
    "ConflictError",
    "CorruptionError",
    "HybridStore",
    "HybridStoreError",
    "JournalError",
    "LocalStoreError",
    "Page",
    "PrimaryRejectedError",
    "PrimaryTimeoutError",
    "PrimaryUnavailableError",
    "Record",
    "StorageExhaustedError",
    "StoreConfig",
    "StoreLockedError",
    "SyncReport",
    "UnavailableError",
    "ValidationError",
    "WriteResult",
    "WrongPassphraseError",
    "open",
    "open_async",
]
