"""AsyncHybridStore: the same store for asyncio code. Each call runs the synchronous implementation in a worker
thread, so the event loop never blocks on SQLite, fsync or the primary. One implementation, two faces."""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .config import resolve
from .model import Conflict, Page, Record, SyncReport, WriteResult
from .store import HybridStore

if TYPE_CHECKING:
    from .metrics import StoreMetrics
    from .recovery import RecoveryService


class AsyncHybridStore:
    def __init__(self, store: HybridStore) -> None:
        self.sync_store = store

    @classmethod
    async def open(
        cls,
        primary_url: str | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        node_id: str | None = None,
        **options: Any,
    ) -> AsyncHybridStore:
        config = resolve(primary_url=primary_url, data_dir=data_dir, node_id=node_id, **options)
        return cls(await asyncio.to_thread(HybridStore, config))

    @property
    def node_id(self) -> str:
        return self.sync_store.node_id

    @property
    def recovery(self) -> RecoveryService:
        """The store's recovery service (its views are plain data, no I/O unless asked to refresh)."""
        return self.sync_store.recovery

    @property
    def metrics(self) -> StoreMetrics:
        return self.sync_store.metrics

    async def set(self, collection: str, key: str, value: Any) -> WriteResult:
        return await asyncio.to_thread(self.sync_store.set, collection, key, value)

    async def get(self, collection: str, key: str) -> Record | None:
        return await asyncio.to_thread(self.sync_store.get, collection, key)

    async def delete(self, collection: str, key: str) -> WriteResult:
        return await asyncio.to_thread(self.sync_store.delete, collection, key)

    async def list(self, collection: str, *, prefix: str = "", limit: int = 100, after: str | None = None) -> Page:
        return await asyncio.to_thread(self.sync_store.list, collection, prefix=prefix, limit=limit, after=after)

    async def sync_now(
        self, *, full: bool = False, progress: Callable[[str, int, int | None], None] | None = None
    ) -> SyncReport:
        return await asyncio.to_thread(self.sync_store.sync_now, full=full, progress=progress)

    async def sync_status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync_store.sync_status)

    async def conflicts(
        self, status: str | None = "open", *, collection: str | None = None, limit: int = 100, after_id: int = 0
    ) -> builtins.list[Conflict]:
        return await asyncio.to_thread(
            self.sync_store.conflicts, status, collection=collection, limit=limit, after_id=after_id
        )

    async def get_conflict(self, conflict_id: int) -> Conflict | None:
        return await asyncio.to_thread(self.sync_store.get_conflict, conflict_id)

    async def resolve_conflict(
        self, conflict_id: int, choice: str = "local", value: Any = None, *, actor: str = "admin"
    ) -> WriteResult | None:
        return await asyncio.to_thread(self.sync_store.resolve_conflict, conflict_id, choice, value, actor=actor)

    async def dead_letters(self, *, limit: int = 100, after_id: int = 0) -> builtins.list[dict[str, Any]]:
        return await asyncio.to_thread(self.sync_store.dead_letters, limit=limit, after_id=after_id)

    async def retry_dead_letter(self, letter_id: int) -> WriteResult:
        return await asyncio.to_thread(self.sync_store.retry_dead_letter, letter_id)

    async def discard_dead_letter(self, letter_id: int, *, actor: str = "admin") -> dict[str, Any]:
        return await asyncio.to_thread(self.sync_store.discard_dead_letter, letter_id, actor=actor)

    async def health(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync_store.health)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync_store.close)

    async def __aenter__(self) -> AsyncHybridStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
