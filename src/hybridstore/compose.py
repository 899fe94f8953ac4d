"""The composition root: `Node` builds every part of a node and wires them together, in one place.

Order of construction (and, reversed, of shutdown): directory lock → journal, SQLite tier (in its `LocalSlot`) →
hybrid clock → circuit + `PrimaryGateway` → sync (replayer, puller) → `StatusBoard` → services (recovery
monitor, metrics; backups on first use) → the heartbeat (`node.heartbeat`). Time and randomness come from one
`TimeSource`. If anything fails half way, whatever was already opened or started is stopped and closed again
before the error propagates: a failed open leaks no thread, pool, file or lock.

Services receive the node as a `NodeCore` (see `node.core`): they never see the `HybridStore` façade.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .circuit import CircuitBreaker
from .clock import HybridClock, StampsAfter
from .config import StoreConfig, load_node_id
from .errors import ClosedError, ConfigError, HybridStoreError, LocalStoreError, StoreLockedError
from .events import EventBus
from .merge import StrategyTable
from .metrics import StoreMetrics
from .model import StoredRow
from .node.core import Pusher
from .node.gateway import PrimaryGateway
from .node.heartbeat import Heartbeat
from .node.origin import OriginGuard
from .node.router import Router
from .node.slot import LocalSlot
from .node.status import PullerView, StatusBoard
from .node.timing import TimeSource
from .recovery.probes import wal_deleted_after_crash
from .recovery.service import RecoveryService
from .sync.housekeeping import Housekeeper
from .sync.outbox import OutboxReplayer
from .sync.puller import ChangePuller
from .tiers.journal import JournalTier
from .tiers.local import LocalTier
from .validation import encode_value

if TYPE_CHECKING:
    from .backup.service import BackupService

log = logging.getLogger("hybridstore")
LOCAL_DB = "local.db"
JOURNAL_FILE = "journal.log"


class Node:
    """One running node (see the module docstring). Implements `NodeCore`."""

    def __init__(self, config: StoreConfig, *, time: TimeSource | None = None) -> None:
        self.config = config
        self.time = time or TimeSource()
        self._closed = False
        self._close_lock = threading.Lock()
        self._on_close: list[Callable[[], object]] = []
        self._backups: BackupService | None = None
        self._backups_lock = threading.Lock()
        self.data_dir = Path(config.data_dir)
        _prepare_data_dir(self.data_dir)
        self._lock_fd = _take_dir_lock(self.data_dir)
        # Undo steps, for a failed open and for close(): threads to stop (each says whether it stopped), then
        # resources to close — only when every thread has stopped, so nothing is closed under a running thread.
        self._workers: list[Callable[[], object]] = []
        self._resources: list[Callable[[], object]] = []
        try:
            self._build(config)
        except BaseException:
            self._teardown()
            raise

    # -- building -------------------------------------------------------------------------------------------------

    def _build(self, config: StoreConfig) -> None:
        t = self.time
        self.events = EventBus(wall=t.wall)
        wal_lost = wal_deleted_after_crash(self.data_dir / LOCAL_DB)  # must be seen before SQLite opens the file
        self.node_id = config.node_id or load_node_id(self.data_dir)
        self.journal = JournalTier(self.data_dir / JOURNAL_FILE)
        self._resources.append(self.journal.close)
        local: LocalTier | None = None
        error: str | None = None
        try:
            local = LocalTier(self.data_dir / LOCAL_DB, synchronous=config.synchronous)
            local.coalesce_pending = config.coalesce
            if not config.primary_url:
                local.embedded()
        except LocalStoreError as exc:
            # Keep running on the journal; the recovery service can rebuild the file.
            error = str(exc)
            log.error("local SQLite unusable, writes go to the journal: %s", exc)
        self.slot = LocalSlot(local, self.events, error=error)
        self._resources.append(self.slot.close)
        last = [h for h in (_max_hlc(local), *(op.hlc for op in self.journal.entries())) if h]
        self.clock = HybridClock(self.node_id, last=max(last) if last else None)
        circuit = CircuitBreaker(
            failure_threshold=config.circuit_failures,
            reset_timeout=config.circuit_reset,
            max_reset_timeout=config.circuit_reset_max,
            clock=t.monotonic,
        )
        primary = None
        if config.primary_url:
            from .tiers.primary import PrimaryTier

            primary = PrimaryTier(
                config.primary_url,
                schema=config.primary_schema,
                timeout=config.primary_timeout,
                pooled=config.primary_pooled,
                node_id=self.node_id,
                migrate=config.migrate,
                session_url=config.primary_session_url,
            )
            self._resources.append(primary.close)
        self.gateway = PrimaryGateway(
            primary,
            circuit,
            self.events,
            interval=config.health_interval,
            probe_timeout=min(1.0, config.primary_timeout),
            clock=t.monotonic,
            wall=t.wall,
        )
        self._workers.append(self.gateway.stop)
        # A node id with no stamp in this data directory may have written before, from another one: its first
        # writes to the primary wait until its clock is past what it wrote then (node/origin.py).
        self.origin = OriginGuard(self.node_id, self.clock, self.gateway, self.slot, needed=bool(primary and not last))
        self.strategies = StrategyTable(config.conflict_strategy, config.conflict_strategies)
        self.replayer = OutboxReplayer(
            slot=self.slot,
            journal=self.journal,
            gateway=self.gateway,
            events=self.events,
            observe=self.clock.observe,
            stamps_after=lambda floor: StampsAfter(self.clock, floor),
            origin=self.origin,
            batch_size=config.batch_size,
            strategies=self.strategies,
            max_rejections=config.sync_retry_attempts,
            encode=lambda value: encode_value(value, max_bytes=config.max_value_bytes),
            retry_base=config.retry_base,
            retry_cap=config.retry_cap,
            rng=t.rng,
            wall=t.wall,
            clock=t.monotonic,
            housekeeper=Housekeeper(
                node_id=self.node_id,
                slot=self.slot,
                journal=self.journal,
                gateway=self.gateway,
                clock=t.monotonic,
            )
            if primary is not None
            else None,
        )
        self._workers.append(self.replayer.stop)
        self.sync: Pusher = self.replayer
        self.puller: ChangePuller | None = None
        if primary is not None and config.pull:
            self.puller = ChangePuller(
                slot=self.slot,
                gateway=self.gateway,
                observe=self.clock.observe,
                poll_interval=config.pull_interval,
                listen=config.listen,
                wall=t.wall,
            )
            self._workers.append(self.puller.stop)
        self.status = StatusBoard(self, puller=self._puller_view)
        self.router = Router(self, self.strategies)
        if len(self.journal) and local is not None:
            self.replayer.drain(max_batches=0)
        self.metrics = StoreMetrics(self)
        self.recovery = RecoveryService(self, wal_lost_at_open=wal_lost)
        self.recovery.register_backup_source(self._newest_backup_rows)
        self._workers.append(self.recovery.stop)
        self.heartbeat = Heartbeat(
            node_id=self.node_id,
            gateway=self.gateway,
            status=lambda: self.status.snapshot(fresh=True),  # the outbox counted now: a cheap local count
            interval=config.heartbeat_interval,
            wall=t.wall,
            monotonic=t.monotonic,
        )
        self._workers.append(self.heartbeat.stop)  # stops first: its last row says "stopped"
        if config.background:
            self.gateway.start()
            self.replayer.start()
            if self.puller is not None:
                self.puller.start()
            self.recovery.start()
            if primary is not None:
                self.heartbeat.start()
            if config.backups:
                self._start_backups()

    def _start_backups(self) -> None:
        """Scheduled and emergency backups run whenever the node runs its services, unless ``backups=False``."""
        from .backup import missing_dependencies

        missing = missing_dependencies()
        if missing:
            log.warning(
                "scheduled and emergency backups are off: %s missing (pip install 'hybridstore[backup]')",
                ", ".join(missing),
            )
            return
        self.backups(start=True)

    def _puller_view(self) -> PullerView | None:
        p = self.puller
        if p is None:
            return None
        return PullerView(p.state, p.pulled, p.last_pull_at, p.last_error, p.listening)

    # -- NodeCore -------------------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise ClosedError("the store is closed; open a new one")

    def on_close(self, stop: Callable[[], object]) -> None:
        self._on_close.append(stop)

    def backups(self, *, start: bool | None = None) -> BackupService:
        """The node's backup service, created once (thread-safe). ``start=False`` reads the repository without
        starting the backup thread (the recovery monitor uses it to find a backup to rebuild from)."""
        with self._backups_lock:
            self.check_open()
            if self._backups is None:
                from .backup.service import BackupService

                self._backups = BackupService(self, writer=self.router, start=False)
            if start if start is not None else self.config.background:
                self._backups.start()
            return self._backups

    # -- closing --------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop background work and close every tier. Queued ops stay queued for the next open."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._teardown()

    def _teardown(self) -> None:
        stopped = True
        # Services first (they may still use the tiers), newest first; then the node's own threads, in reverse.
        for stop in [*reversed(self._on_close), *reversed(self._workers)]:
            try:
                if stop() is False:
                    stopped = False
            except Exception:
                log.exception("a part of the node failed to stop cleanly")
        self._on_close.clear()
        self._workers.clear()
        if not stopped:
            log.error("a background thread did not stop: files and lock are left open rather than closed under it")
            return
        for close in reversed(self._resources):
            try:
                close()
            except Exception:
                log.exception("closing a tier failed")
        self._resources.clear()
        _release_dir_lock(self._lock_fd)

    # -- recovery's backup source ---------------------------------------------------------------------------------

    def _newest_backup_rows(self) -> Iterator[StoredRow] | None:
        """The records of the newest verified backup, for a rebuild while the primary is unreachable (``None``
        when there is none, or backups are not installed)."""
        from .backup.service import newest_backup_rows

        try:
            service = self.backups(start=False)
        except (ImportError, HybridStoreError) as exc:
            log.warning("no backup to rebuild from: %s", exc)
            return None
        return newest_backup_rows(service, max_value_bytes=self.config.max_value_bytes)


def _max_hlc(local: LocalTier | None) -> str | None:
    try:
        return local.max_hlc() if local is not None else None
    except LocalStoreError:
        return None


def _prepare_data_dir(path: Path) -> None:
    """Create the data directory if it does not exist; anything that makes it unusable (a file in the way, no
    permission, a read-only file system) is a `ConfigError` that names the path, never a bare `OSError`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"data directory {path} is a file, not a directory; choose another data_dir") from None
    except NotADirectoryError:
        parent = next((p for p in path.parents if p.exists()), path)
        raise ConfigError(f"data directory {path} lies under {parent}, which is a file, not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {path}: {exc.strerror or exc}") from None
    lock = path / "lock"
    if not os.access(path, os.W_OK | os.X_OK) or (lock.exists() and not os.access(lock, os.W_OK)):
        raise ConfigError(
            f"data directory {path} is not writable by this process (read-only or owned by another user); a store "
            "needs to write its files there"
        )


def _take_dir_lock(data_dir: Path) -> int:
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(
            f"data directory {data_dir} is in use by another process; one store per data directory"
        ) from None
    with contextlib.suppress(OSError):  # who holds it, for the message another process gives (cli/datadir.py)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_dir_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
