"""The narrow protocols services depend on. Services (sync, backups, recovery, metrics, restore, rebuild, the web
service) take a `NodeCore`, never `HybridStore`; the composition root (`node.build`) builds the concrete node.

Who owns which state:
- `PrimaryGateway` (``node.gateway``): every primary call, the circuit, the liveness prober, outage detection.
- `LocalSlot` (``node.slot``): the current SQLite tier and whether it may be used.
- `JournalTier` (``node.journal``): the last-resort append-only file.
- `Pusher` (``node.sync``): the outbox replayer: pushes queued writes, replays the journal.
- `EventBus` (``node.events``): state changes, published by the gateway, the slot and the services.
- `StatusBoard` (``node.status``): the one status snapshot every view reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import HybridClock
from ..config import StoreConfig
from ..events import EventBus
from ..model import SyncReport, WriteResult
from .gateway import PrimaryGateway
from .slot import LocalSlot
from .timing import TimeSource

if TYPE_CHECKING:
    from ..tiers.journal import JournalTier
    from ..tiers.local import LocalTier
    from .origin import OriginGuard
    from .status import StatusBoard


class Pusher(Protocol):
    """The outbox replayer as other services see it."""

    state: str
    totals: SyncReport
    last_error: str | None
    last_push_at: float | None
    batch_size: int
    history: deque[dict[str, Any]]
    batch_durations: deque[tuple[int, float]]
    conflicts_resolved: dict[str, int]

    def wake(self) -> None:
        """Push soon (a write was queued, or the primary is back)."""

    def replay_journal_into(self, local: LocalTier) -> int:
        """Move the journal's ops into ``local`` and clear them from the journal; returns how many."""
        ...

    def drain(self, *, max_batches: int | None = None, on_batch: Callable[[], None] | None = None) -> SyncReport:
        """Replay the journal and push the outbox now, in the caller's thread; ``max_batches=0`` replays only."""
        ...


class BulkWriter(Protocol):
    """The node's write path for bulk work (restores): values go through the same routing as any write."""

    def set_many(self, collection: str, items: list[tuple[str, Any]]) -> list[WriteResult]: ...

    def set_many_encoded(self, collection: str, items: list[tuple[str, str]]) -> list[WriteResult]:
        """``items``: keys with values already encoded by `hybridstore.validation.encode_value`."""
        ...


class NodeCore(Protocol):
    """What a service may use of a node. Everything here is safe to call from any thread."""

    config: StoreConfig
    node_id: str
    data_dir: Path
    events: EventBus
    clock: HybridClock
    time: TimeSource
    gateway: PrimaryGateway
    slot: LocalSlot
    journal: JournalTier
    sync: Pusher
    status: StatusBoard
    origin: OriginGuard

    @property
    def closed(self) -> bool: ...

    def on_close(self, stop: Callable[[], object]) -> None:
        """Register a service's stop function; closing the node calls them, newest first, before the tiers
        close. A stop function that returns ``False`` says its thread did not stop: the tiers are then left
        open rather than closed under it."""

    def check_open(self) -> None:
        """Raise `ClosedError` if the node is closed."""


def outbox_figures(local: LocalTier | None, journal: JournalTier) -> tuple[int, float | None, str | None]:
    """Writes waiting for the primary (outbox + journal), the oldest one's creation time (epoch), and the error
    if the outbox could not be read (the depth is then a lower bound: the journal only)."""
    from ..errors import LocalStoreError

    depth, oldest, error = len(journal), None, None
    if local is not None:
        try:
            n, oldest = local.outbox_stats()
            depth += n
        except LocalStoreError as exc:
            error = str(exc)
    return depth, oldest, error
