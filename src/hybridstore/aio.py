"""AsyncHybridStore: the same store for asyncio code. One implementation, two faces.

The store is synchronous (SQLite and fsync block whatever the API looks like); the async face runs each blocking
call in worker threads of its own, so the event loop never waits on SQLite, fsync or the primary.

- **Its own bounded pool.** Each async store owns a `ThreadPoolExecutor` (``max_workers``, default
  ``min(32, cpu + 4)``) with named threads (``hybridstore-async-<node>_<n>``), shut down by `aclose()`. The
  application's default executor is never used: calls stuck on a slow primary (up to ``primary_timeout`` each)
  fill this store's pool, not the one the rest of the application relies on. A plain executor rather than an
  anyio ``CapacityLimiter`` (Starlette's choice): the threads are this store's, named after it, and gone when it
  closes, and asyncio needs no extra dependency.
- **Cancellation does not cancel the operation.** Cancelling an ``await`` (a timeout, a client that went away)
  ends the wait at once, but the call runs to the end in its thread, queued calls included: a write may be
  acknowledged after its caller stopped waiting, so after a cancelled write its value may or may not be stored
  (read it back to know). Failures nobody waits for any more are logged (``hybridstore.aio``). `aclose()` waits
  for every call already made, then closes the store.
- **Callbacks run in the worker thread** (``sync_now(progress=)``, the backup ``progress=``): to touch
  loop-owned state from them, use ``loop.call_soon_threadsafe``.
- **Mechanical parity.** Each ``Async*`` class mirrors one sync class (``MIRRORS``): a blocking method becomes a
  coroutine method derived from the sync one (`offload`: same parameters, same docstring, same types for mypy);
  a method that does no I/O stays sync (``PLAIN``); lifecycle and wiring owned by the store are left on the sync
  object (``NOT_MIRRORED``). `tests/test_async.py` checks this against ``inspect.getmembers`` of each sync class,
  so a member added there fails the test until the async face has it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import itertools
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, Generic, ParamSpec, TypeVar

from .backup.service import BackupService
from .config import StoreConfig, resolve
from .errors import ClosedError, ConfigError
from .metrics import StoreMetrics
from .recovery.service import RecoveryService
from .store import HybridStore

if TYPE_CHECKING:
    from pathlib import Path

    from .backup.settings import BackupSettings
    from .compose import Node
    from .recovery.alerts import Alert
    from .recovery.rebuild import RebuildReport
    from .recovery.service import Thresholds

log = logging.getLogger("hybridstore.aio")
S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")
RECORDS_PER_HOP = 1000  # backup records fetched per trip to a worker thread by `AsyncBackups.read_records`


def default_max_workers() -> int:
    """The stdlib's default pool size: enough for a few calls blocked on the primary while others proceed."""
    return min(32, (os.cpu_count() or 1) + 4)


def _start_thread(fn: Callable[[], R], name: str) -> concurrent.futures.Future[R]:
    """Run ``fn`` in a new (non-daemon: the interpreter waits for it) thread; its outcome lands in the future."""
    future: concurrent.futures.Future[R] = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    threading.Thread(target=run, name=name).start()
    return future


def _report_orphan(what: str, future: asyncio.Future[Any]) -> None:
    """Done callback of a call whose caller was cancelled: nobody else will see how it ended."""
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        log.warning("%s failed after its caller stopped waiting: %s", what, exc)
    else:
        log.debug("%s finished after its caller stopped waiting", what)


def _pool_size(max_workers: int | None) -> int:
    if max_workers is None:
        return default_max_workers()
    if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
        raise ConfigError("max_workers must be a positive integer (or None for the default)")
    return max_workers


class _Workers:
    """The bounded pool of one async store, shared by its faces (`backups`, `recovery`, `metrics`)."""

    def __init__(self, max_workers: int | None, name: str) -> None:
        self.max_workers = _pool_size(max_workers)
        self._executor = concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix=name)
        self.closed = False

    async def run(self, call: Callable[[], R], what: str) -> R:
        """``call()`` in a worker thread. Cancelling the wait does not stop the call (see the module docstring)."""
        if self.closed:
            raise ClosedError("the store is closed; open a new one")
        # Like asyncio.to_thread: the call sees the caller's context variables.
        future = asyncio.wrap_future(self._executor.submit(contextvars.copy_context().run, call))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(functools.partial(_report_orphan, what))
            raise

    def shutdown(self) -> None:
        """Wait for every call made so far (blocking: call it from a thread of its own)."""
        self.closed = True
        self._executor.shutdown(wait=True)


class _Face(Generic[S]):
    """An async view of a sync object ``S`` whose blocking methods run in the store's worker threads."""

    MIRRORS: ClassVar[type]  # the sync class this face mirrors
    PLAIN: ClassVar[frozenset[str]] = frozenset()  # its methods that do no I/O: they stay sync here
    NOT_MIRRORED: ClassVar[frozenset[str]] = frozenset()  # its public members left on the sync object, on purpose

    def __init__(self, workers: _Workers, target: Callable[[], S]) -> None:
        self._workers = workers
        self._target = target  # resolved in the worker thread: getting it may itself block (``store.backups``)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, member in vars(cls).items():
            if getattr(member, "_offloaded", False):
                member.__qualname__ = f"{cls.__qualname__}.{name}"

    async def _call(self, fn: Callable[Concatenate[S, P], R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        name = fn.__name__
        target = self._target

        def call() -> R:
            method: Callable[P, R] = getattr(target(), name)  # by name: a subclass's override is honoured
            return method(*args, **kwargs)

        return await self._workers.run(call, f"{type(self).__name__}.{name}()")


def offload(fn: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[_Face[S], P], Coroutine[Any, Any, R]]:
    """The coroutine method of a face that runs the sync method ``fn`` in the store's worker threads."""

    @functools.wraps(fn)
    async def method(face: _Face[S], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await face._call(fn, *args, **kwargs)

    method._offloaded = True  # type: ignore[attr-defined]
    return method


class AsyncBackups(_Face[BackupService]):
    """``store.backups`` for asyncio code (see `hybridstore.backup.service.BackupService`): every method does file
    or primary I/O, so every one is a coroutine. The service is created on first use, in a worker thread."""

    MIRRORS = BackupService
    NOT_MIRRORED = frozenset(
        {
            "start",  # the store starts the service's thread (with ``background``) ...
            "stop",  # ... and stops it on close
            "passphrase",  # a secret from the environment; nothing for the async face to hand out
            "status_section",  # read by the node's status board, not by applications
        }
    )

    tick = offload(BackupService.tick)
    seconds_until_due = offload(BackupService.seconds_until_due)
    get_config = offload(BackupService.get_config)
    create_manual_backup = offload(BackupService.create_manual_backup)
    list_backups = offload(BackupService.list_backups)
    get_backup = offload(BackupService.get_backup)
    check_file = offload(BackupService.check_file)
    verify_backup = offload(BackupService.verify_backup)
    restore_backup = offload(BackupService.restore_backup)
    export_backup = offload(BackupService.export_backup)
    import_backup = offload(BackupService.import_backup)
    delete_backup = offload(BackupService.delete_backup)
    pin_backup = offload(BackupService.pin_backup)
    prune = offload(BackupService.prune)
    rotate_passphrase = offload(BackupService.rotate_passphrase)
    stats = offload(BackupService.stats)

    async def update_config(self, **changes: Any) -> BackupSettings:
        """Validate and apply settings (``enabled``, ``automatic``, ``interval_hours``, ``max_backups``,
        ``compress``, ``encrypt``, ``source``); persisted locally and on the primary when reachable."""
        # Written out: `offload` cannot type a method whose only parameters are ``**changes``.
        target = self._target
        return await self._workers.run(lambda: target().update_config(**changes), "AsyncBackups.update_config()")

    async def read_records(self, backup_id: str) -> AsyncIterator[tuple[str, str, Any]]:
        """Every (section kind, section name, parsed line) of a backup, read in worker threads a batch at a time
        (the backup is never held in memory whole). Stop early with ``aclose()`` on the iterator (or leave the
        ``async for``): the file is closed."""
        records: Iterator[tuple[str, str, Any]] = await self._call(BackupService.read_records, backup_id)
        lock = threading.Lock()  # a cancelled batch may still be reading when the iterator is closed

        def batch() -> list[tuple[str, str, Any]]:
            with lock:
                return list(itertools.islice(records, RECORDS_PER_HOP))

        def close() -> None:
            with lock:
                if isinstance(records, Generator):
                    records.close()

        try:
            while chunk := await self._workers.run(batch, "AsyncBackups.read_records()"):
                for item in chunk:
                    yield item
        finally:
            try:
                await self._workers.run(close, "AsyncBackups.read_records() close")
            except ClosedError:
                close()  # the pool is closing: close here (at worst after a batch a cancelled read left running)


class AsyncRecovery(_Face[RecoveryService]):
    """``store.recovery`` for asyncio code (see `hybridstore.recovery.service.RecoveryService`). Checking probes
    every tier and may wait on the primary: `check`, `get_health_status` and `sync_counts` are coroutines. The
    monitor's results, alerts and events are held in memory: those views stay sync."""

    MIRRORS = RecoveryService
    PLAIN = frozenset({"last_status", "alerts", "events", "wake"})
    NOT_MIRRORED = frozenset(
        {
            "start",  # the store starts the monitor (with ``background``) and stops it on close
            "stop",
            "register_backup_source",  # wiring between the store's services
            "register_sync_status",
        }
    )

    check = offload(RecoveryService.check)
    get_health_status = offload(RecoveryService.get_health_status)
    sync_counts = offload(RecoveryService.sync_counts)

    def last_status(self) -> dict[str, Any] | None:
        """The monitor's latest result (``None`` before the first check); no I/O."""
        return self._target().last_status()

    def alerts(self, active: bool | None = None) -> list[Alert]:
        """Alert records, newest first: all, only active (``True``) or only resolved (``False``); no I/O."""
        return self._target().alerts(active)

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        """Strategy events, newest first; no I/O."""
        return self._target().events(limit)

    def wake(self) -> None:
        """Ask the monitor to check now instead of at its next tick (returns at once)."""
        self._target().wake()

    @property
    def thresholds(self) -> Thresholds:
        """When alerts fire; change them at run time (plain data)."""
        return self._target().thresholds

    @property
    def last_rebuild(self) -> RebuildReport | None:
        return self._target().last_rebuild


class AsyncMetrics(_Face[StoreMetrics]):
    """``store.metrics`` for asyncio code (see `hybridstore.metrics.StoreMetrics`). A scrape reads SQLite and
    reads SQLite: `prometheus_text` and `data` are coroutines. Per-operation figures are in memory."""

    MIRRORS = StoreMetrics
    PLAIN = frozenset({"op_stats"})
    NOT_MIRRORED = frozenset({"observe", "record", "failed"})  # recorded by the store's own operation paths

    prometheus_text = offload(StoreMetrics.prometheus_text)
    data = offload(StoreMetrics.data)

    def op_stats(self) -> dict[tuple[str, str], tuple[list[int], float]]:
        """(op, tier) -> (cumulative count per bucket, +Inf last; sum of seconds); no I/O."""
        return self._target().op_stats()


class AsyncHybridStore(_Face[HybridStore]):
    """`HybridStore` for asyncio code: the same methods, parameters, results and errors, awaitable. Open one with
    ``async with hybridstore.open_async(...) as store`` (or ``store = await hybridstore.open_async(...)``, then
    ``await store.aclose()``). See the module docstring for threads, cancellation and callbacks."""

    MIRRORS = HybridStore

    def __init__(self, store: HybridStore, *, max_workers: int | None = None) -> None:
        """Wrap an open store; the async store owns it from now on (`aclose` closes it)."""
        super().__init__(_Workers(max_workers, f"hybridstore-async-{store.node_id}"), lambda: store)
        self.sync_store = store
        self._backups = AsyncBackups(self._workers, lambda: store.backups)
        self._recovery = AsyncRecovery(self._workers, lambda: store.recovery)
        self._metrics = AsyncMetrics(self._workers, lambda: store.metrics)
        self._closing: concurrent.futures.Future[None] | None = None

    @classmethod
    def open(
        cls,
        primary_url: str | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        node_id: str | None = None,
        max_workers: int | None = None,
        **options: Any,
    ) -> OpeningStore:
        """`hybridstore.open` for asyncio code; see `hybridstore.open_async`."""
        config = resolve(primary_url=primary_url, data_dir=data_dir, node_id=node_id, **options)
        _pool_size(max_workers)  # a bad value fails here, before the store takes its data directory
        return OpeningStore(functools.partial(cls._open, config, max_workers))

    @classmethod
    async def _open(cls, config: StoreConfig, max_workers: int | None) -> AsyncHybridStore:
        # Opened in a thread of its own: the pool is named after the node id, known once the store is open.
        opening = _start_thread(functools.partial(HybridStore, config), "hybridstore-async-open")
        try:
            store = await asyncio.shield(asyncio.wrap_future(opening))
        except asyncio.CancelledError:
            opening.add_done_callback(_close_abandoned)  # else the data directory stays locked
            raise
        return cls(store, max_workers=max_workers)

    # -- plain data: no I/O -----------------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.sync_store.node_id

    @property
    def config(self) -> StoreConfig:
        return self.sync_store.config

    @property
    def data_dir(self) -> Path:
        return self.sync_store.data_dir

    @property
    def max_workers(self) -> int:
        """The size of this store's worker pool."""
        return self._workers.max_workers

    @property
    def backups(self) -> AsyncBackups:
        """The backup service (`AsyncBackups`; created on first use, in a worker thread)."""
        return self._backups

    @property
    def recovery(self) -> AsyncRecovery:
        """The recovery service (`AsyncRecovery`); the sync object is ``sync_store.recovery``."""
        return self._recovery

    @property
    def metrics(self) -> AsyncMetrics:
        """The store's metrics (`AsyncMetrics`); the sync object is ``sync_store.metrics``."""
        return self._metrics

    @property
    def node(self) -> Node:
        """The node behind the store (synchronous objects: for wiring services beside it, not for the loop)."""
        return self.sync_store.node

    # -- the store's operations, in the worker threads --------------------------------------------------------

    set = offload(HybridStore.set)
    set_many = offload(HybridStore.set_many)
    get = offload(HybridStore.get)
    delete = offload(HybridStore.delete)
    list = offload(HybridStore.list)
    sync_now = offload(HybridStore.sync_now)
    sync_status = offload(HybridStore.sync_status)
    health = offload(HybridStore.health)
    nodes = offload(HybridStore.nodes)
    status = offload(HybridStore.status)
    conflicts = offload(HybridStore.conflicts)
    get_conflict = offload(HybridStore.get_conflict)
    resolve_conflict = offload(HybridStore.resolve_conflict)
    dead_letters = offload(HybridStore.dead_letters)
    retry_dead_letter = offload(HybridStore.retry_dead_letter)
    discard_dead_letter = offload(HybridStore.discard_dead_letter)

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Refuse new calls (`ClosedError`), wait for every call already made (cancelled ones included), close
        the store, and shut the worker pool down. Idempotent; cancelling it does not stop the closing."""
        if self._closing is None:
            self._workers.closed = True
            self._closing = _start_thread(self._close_now, "hybridstore-async-close")
        await asyncio.shield(asyncio.wrap_future(self._closing))

    def _close_now(self) -> None:
        try:
            self._workers.shutdown()
        finally:
            self.sync_store.close()

    async def close(self) -> None:
        """Same as `aclose` (the name `HybridStore` uses)."""
        await self.aclose()

    async def __aenter__(self) -> AsyncHybridStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _close_abandoned(opening: concurrent.futures.Future[HybridStore]) -> None:
    """A store opened for a caller that was cancelled meanwhile: close it, in a thread (this may run on the loop)."""
    if opening.exception() is None:
        threading.Thread(target=opening.result().close, name="hybridstore-async-abandoned").start()


class OpeningStore:
    """What `hybridstore.open_async` returns: ``await`` it for the store (close it with ``aclose()``), or use it
    as ``async with`` (the store is closed on exit)."""

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, AsyncHybridStore]]) -> None:
        self._opener = opener  # called on await / enter: an OpeningStore never awaited leaves nothing behind
        self._store: AsyncHybridStore | None = None

    def __await__(self) -> Generator[Any, None, AsyncHybridStore]:
        return self._opener().__await__()

    async def __aenter__(self) -> AsyncHybridStore:
        self._store = await self._opener()
        return self._store

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._store is not None:
            await self._store.aclose()
