"""HybridStore: the synchronous, thread-safe public API. Routes each operation to a tier.

Write path: write-through to the primary while its circuit is closed (acknowledged after the primary commits);
otherwise — or with ``write_mode="local_first"`` — SQLite record + outbox row in one transaction (acknowledged
as queued); if SQLite fails, the fsync'd journal (acknowledged as journaled); if that fails too,
`StorageExhaustedError` and nothing is acknowledged. A key with pending local ops is always queued behind them,
so per-key order holds. Read path: the node's own pending writes first (read-your-writes), then the primary
(``read_policy="primary_first"``) or the local copy (``"local_first"``), falling back to local.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .circuit import CircuitBreaker
from .clock import HybridClock
from .config import StoreConfig, apply_log_level, load_node_id, redact
from .errors import (
    ClosedError,
    ConflictError,
    HybridStoreError,
    JournalError,
    LocalStoreError,
    PrimaryTimeoutError,
    PrimaryUnavailableError,
    StorageExhaustedError,
    StoreLockedError,
    ValidationError,
)
from .metrics import StoreMetrics, timed
from .model import Conflict, Op, Page, Record, StoredRow, SyncReport, TierName, WriteResult, new_op_id
from .recovery.probes import wal_deleted_after_crash
from .recovery.service import RecoveryService
from .sync.merge import StrategyTable
from .sync.outbox import OutboxReplayer
from .sync.puller import ChangePuller
from .tiers.journal import JournalTier
from .tiers.local import LocalTier
from .validation import check_collection, check_key, encode_value

if TYPE_CHECKING:
    from .backup.service import BackupService
    from .tiers.primary import PrimaryTier

log = logging.getLogger("hybridstore")
LOCAL_DB = "local.db"
JOURNAL_FILE = "journal.log"


def merge_pending(
    base: list[StoredRow], pending: list[StoredRow], *, upper: str | None, limit: int
) -> tuple[list[StoredRow], str | None]:
    """Overlay a node's pending rows (tombstones included) on a page read elsewhere. ``upper`` is the last key
    the page covers (``None`` = it reached the end). Returns live rows and the cursor for the next page."""
    by_key = {r.key: r for r in base}
    for row in pending:
        if upper is None or row.key <= upper:
            by_key[row.key] = row
    live = sorted((r for r in by_key.values() if not r.deleted), key=lambda r: r.key)
    if len(live) > limit:
        live = live[:limit]
        return live, live[-1].key
    return live, upper


def _positive_id(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValidationError("an id must be a positive integer")
    return value


class HybridStore:
    """See the module docstring. Use `hybridstore.open()` to make one; close it (or use ``with``)."""

    # Set by the recovery service while the local file awaits a rebuild: SQLite must not be trusted again
    # (writes stay on the journal) even if a write probe happens to work on an undamaged page.
    _local_hold: str | None = None

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._closed = False
        self._on_close: builtins.list[Callable[[], None]] = []
        self._backups: BackupService | None = None
        data_dir = Path(config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self._lock_file = self._take_dir_lock(data_dir)
        try:
            wal_lost = wal_deleted_after_crash(data_dir / LOCAL_DB)  # must be seen before SQLite opens the file
            self._open_tiers(config, data_dir)
            self._start_services(wal_lost)
        except BaseException:
            self._release_dir_lock()
            raise

    def _open_tiers(self, config: StoreConfig, data_dir: Path) -> None:
        self.node_id = config.node_id or load_node_id(data_dir)
        self.journal = JournalTier(data_dir / JOURNAL_FILE)
        self.local: LocalTier | None = None
        self.local_error: str | None = None
        try:
            self.local = LocalTier(data_dir / LOCAL_DB, synchronous=config.synchronous)
        except LocalStoreError as exc:
            # Keep running on the journal; the recovery service can rebuild the file.
            self.local_error = str(exc)
            log.error("local SQLite unusable, writes go to the journal: %s", exc)
        self._local_ok = self.local is not None
        last = [h for h in (self._safe_max_hlc(), *(op.hlc for op in self.journal.entries())) if h]
        self.clock = HybridClock(self.node_id, last=max(last) if last else None)
        self.circuit = CircuitBreaker(
            failure_threshold=config.circuit_failures,
            reset_timeout=config.circuit_reset,
            max_reset_timeout=config.circuit_reset_max,
        )
        self.primary: PrimaryTier | None = None
        if config.primary_url:
            from .tiers.primary import PrimaryTier

            self.primary = PrimaryTier(
                config.primary_url,
                schema=config.primary_schema,
                timeout=config.primary_timeout,
                pooled=config.primary_pooled,
                node_id=self.node_id,
            )
        self.strategies = StrategyTable(config.conflict_strategy, config.conflict_strategies)
        self.replayer = OutboxReplayer(
            local=lambda: self.local,
            journal=self.journal,
            primary=self.primary,
            circuit=self.circuit,
            observe=self.clock.observe,
            on_local_recovered=self._local_recovered,
            local_ok=lambda: self._local_ok,
            batch_size=config.batch_size,
            strategies=self.strategies,
            max_rejections=config.sync_retry_attempts,
            encode=lambda value: encode_value(value, max_bytes=config.max_value_bytes),
            retry_base=config.retry_base,
            retry_cap=config.retry_cap,
        )
        self.puller: ChangePuller | None = None
        if self.primary is not None and config.pull:
            self.puller = ChangePuller(
                local=lambda: self.local if self._local_ok else None,
                primary=self.primary,
                circuit=self.circuit,
                observe=self.clock.observe,
                poll_interval=config.pull_interval,
                listen=config.listen,
            )
        if len(self.journal) and self.local is not None:
            self.replayer.drain(max_batches=0)
        if config.background:
            self.replayer.start()
            if self.puller is not None:
                self.puller.start()

    def _take_dir_lock(self, data_dir: Path) -> int:
        fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"data directory {data_dir} is in use by another process; one store per data directory"
            ) from None
        return fd

    def _release_dir_lock(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            os.close(self._lock_file)

    def _safe_max_hlc(self) -> str | None:
        try:
            return self.local.max_hlc() if self.local else None
        except LocalStoreError:
            return None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop background work and close every tier. Queued ops stay queued for the next open."""
        if self._closed:
            return
        self._closed = True
        for stop in reversed(self._on_close):  # services first (they may still use the tiers), newest first
            try:
                stop()
            except Exception:
                log.exception("a service failed to stop cleanly")
        if self.puller is not None:
            self.puller.stop()
        self.replayer.stop()
        if self.primary is not None:
            self.primary.close()
        if self.local is not None:
            self.local.close()
        self._release_dir_lock()

    def on_close(self, stop: Callable[[], None]) -> None:
        """Register a service's stop function; `close()` calls them, newest first, before closing the tiers."""
        self._on_close.append(stop)

    def _start_services(self, wal_lost: bool) -> None:
        """The store's own services: metrics, and the recovery service (its monitor thread runs with
        ``background``)."""
        apply_log_level()
        self.metrics = StoreMetrics(self)
        self.recovery = RecoveryService(self, wal_lost_at_open=wal_lost)
        self.recovery.register_backup_source(self._newest_backup_rows)
        self.on_close(self.recovery.stop)
        if self.config.background:
            self.recovery.start()

    def __enter__(self) -> HybridStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the store is closed; open a new one")

    # -- writes -----------------------------------------------------------------------------------------------

    @timed("set")
    def set(self, collection: str, key: str, value: Any) -> WriteResult:
        """Store ``value`` (any JSON value) under ``collection``/``key``."""
        self._check_open()
        check_collection(collection)
        check_key(key)
        return self._write(collection, key, encode_value(value, max_bytes=self.config.max_value_bytes))

    @timed("delete")
    def delete(self, collection: str, key: str) -> WriteResult:
        """Delete (a tombstone, so the deletion reaches the primary and other nodes)."""
        self._check_open()
        check_collection(collection)
        check_key(key)
        return self._write(collection, key, None)

    def _write(self, collection: str, key: str, value_json: str | None) -> WriteResult:
        op = Op(new_op_id(), collection, key, value_json, self.clock.now(), self.node_id, 0, time.time())
        if self.primary is not None and self.config.write_mode == "write_through" and self.circuit.allow():
            result = self._write_through(op)
            if result is not None:
                return result
        return self._queue(op)

    def _write_through(self, op: Op) -> WriteResult | None:
        """Write on the primary, or ``None`` when the op must be queued instead."""
        assert self.primary is not None
        if len(self.journal):
            return None  # journaled ops go first
        row = None
        if self._local_ok and self.local is not None:
            try:
                row = self.local.get(op.collection, op.key)
            except LocalStoreError as exc:
                self._local_failed(exc)  # the primary can still take the write
        if row is not None and row.synced_at is None:
            return None  # pending local ops for this key go first
        op = op._replace(base_version=row.version if row else 0)
        strategy = self.strategies.wire_name(op.collection)
        try:
            if strategy == "last_wins":
                outcome = self.primary.put_many([op])[0]
            else:
                base = row.value_json if row is not None else None
                outcome = self.primary.put_many([op], strategies=[strategy], base_values=[base])[0]
        except PrimaryUnavailableError as exc:
            self.circuit.record_failure(timeout=isinstance(exc, PrimaryTimeoutError))
            self.replayer.wake()
            log.warning("primary write failed, queued locally: %s", exc)
            return None
        self.circuit.record_success()
        if outcome.outcome == "conflict":
            # Concurrent change under a merge strategy: queue the op; the pusher merges and pushes the result (the
            # primary remembers the op as a conflict, so pushing it again reports the conflict again).
            return None
        cur = outcome.current
        assert cur is not None
        self.clock.observe(cur.hlc)
        self._refresh_local(cur)  # a failure here loses nothing: the write is safe on the primary
        if outcome.outcome == "manual":
            log.info("write to %s/%s conflicts; queued for manual resolution", op.collection, op.key)
        return WriteResult("primary", cur.version, False, op.op_id, op.hlc, outcome.outcome == "manual")

    def _queue(self, op: Op) -> WriteResult:
        if self._local_ok and self.local is not None and not len(self.journal):
            try:
                self.local.queue(op)
            except LocalStoreError as exc:
                self._local_failed(exc)
            else:
                self._wake_pusher()
                return WriteResult("local", 0, True, op.op_id, op.hlc)
        try:
            self.journal.put(op)
        except JournalError as exc:
            raise StorageExhaustedError(
                f"write NOT saved: the primary, SQLite and the journal all failed ({exc}); free disk space or "
                "fix permissions in the data directory"
            ) from exc
        self.replayer.wake()  # the journal must be replayed as soon as SQLite works
        return WriteResult("journal", 0, True, op.op_id, op.hlc)

    def _wake_pusher(self) -> None:
        # Only when a push can happen now: waking the thread on every write while the primary is down (or
        # absent) costs a context switch per write for nothing.
        if self.primary is not None and self.circuit.allow():
            self.replayer.wake()

    def _local_failed(self, exc: LocalStoreError) -> None:
        if self._local_ok:
            log.error("local SQLite failed, writes go to the journal until it recovers: %s", exc)
        self._local_ok = False
        self.local_error = str(exc)

    def _local_recovered(self) -> None:
        if self._local_hold is not None:
            return
        if not self._local_ok:
            log.info("local SQLite works again")
        self._local_ok = True
        self.local_error = None

    # -- reads ------------------------------------------------------------------------------------------------

    @timed("get")
    def get(self, collection: str, key: str) -> Record | None:
        """The current value, or ``None``. ``Record.source`` says which tier answered."""
        self._check_open()
        check_collection(collection)
        check_key(key)
        if len(self.journal):
            jrow = self.journal.get(collection, key)
            if jrow is not None:
                return None if jrow.deleted else jrow.to_record("journal")
        local_row = None
        if self.local is not None:
            try:
                local_row = self.local.get(collection, key)
            except LocalStoreError as exc:
                self._local_failed(exc)
        if local_row is not None and local_row.synced_at is None:
            return None if local_row.deleted else local_row.to_record("local")
        if self.primary is not None and self.config.read_policy == "primary_first" and self.circuit.allow():
            try:
                row = self.primary.get(collection, key)
            except PrimaryUnavailableError as exc:
                self.circuit.record_failure(timeout=isinstance(exc, PrimaryTimeoutError))
            else:
                self.circuit.record_success()
                if row is None:
                    return None
                self.clock.observe(row.hlc)
                if local_row is None or local_row.version != row.version:
                    self._refresh_local(row)
                return None if row.deleted else row.to_record("primary")
        if local_row is None or local_row.deleted:
            return None
        return local_row.to_record("local")

    def _refresh_local(self, row: StoredRow) -> None:
        if self.local is not None and self._local_ok:
            try:
                self.local.store_synced(row)
            except LocalStoreError as exc:
                self._local_failed(exc)

    @timed("list")
    def list(self, collection: str, *, prefix: str = "", limit: int = 100, after: str | None = None) -> Page:
        """Live records ordered by key; pass ``page.next_after`` as ``after`` for the next page."""
        self._check_open()
        check_collection(collection)
        if not isinstance(prefix, str):
            raise ValidationError("prefix must be a string")
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError("limit must be an integer from 1 to 10000")
        if after is not None:
            check_key(after)
        records: list[Record] = []
        cursor = after
        # Pending deletes can thin out a page: keep reading until it is full or the collection ends.
        while True:
            chunk, cursor = self._list_chunk(collection, prefix, limit - len(records), cursor)
            records += chunk
            if cursor is None or len(records) >= limit:
                return Page(records, cursor)

    def _list_chunk(
        self, collection: str, prefix: str, limit: int, after: str | None
    ) -> tuple[builtins.list[Record], str | None]:
        rows: builtins.list[StoredRow] | None = None
        base_tier: TierName = "primary"
        if self.primary is not None and self.config.read_policy == "primary_first" and self.circuit.allow():
            try:
                rows = self.primary.scan(collection, prefix=prefix, after=after, limit=limit)
                self.circuit.record_success()
            except PrimaryUnavailableError as exc:
                self.circuit.record_failure(timeout=isinstance(exc, PrimaryTimeoutError))
        local_pending: list[StoredRow] = []
        try:
            if rows is None:
                base_tier = "local"
                rows = self.local.scan(collection, prefix=prefix, after=after, limit=limit) if self.local else []
            elif self.local is not None:
                upper = rows[-1].key if len(rows) == limit else None
                local_pending = self.local.pending_rows(collection, prefix=prefix, after=after, upper=upper)
        except LocalStoreError as exc:
            self._local_failed(exc)
            rows = rows or []
        upper = rows[-1].key if len(rows) == limit else None
        journal_pending = (
            self.journal.pending_rows(collection, prefix=prefix, after=after, upper=upper) if len(self.journal) else []
        )
        tiers: dict[str, TierName] = {r.key: "local" for r in local_pending}
        tiers.update((r.key, "journal") for r in journal_pending)
        merged, next_after = merge_pending(rows, local_pending + journal_pending, upper=upper, limit=limit)
        return [r.to_record(tiers.get(r.key, base_tier)) for r in merged], next_after

    # -- sync and health --------------------------------------------------------------------------------------

    def sync_now(self, *, full: bool = False, progress: Callable[[int, int | None], None] | None = None) -> SyncReport:
        """Replay the journal, push the outbox, then pull the primary's changes — now, in this thread. ``full``
        rebuilds the local copy from the primary (pending local ops are kept and pushed first). ``progress`` is
        called with (rows pulled, rows in total if known)."""
        self._check_open()
        report = self.replayer.drain()
        if self.puller is not None and self.circuit.allow() and self.local is not None and self._local_ok:
            try:
                report.pulled = self.puller.pull(full=full, progress=progress)
            except PrimaryUnavailableError as exc:
                self.circuit.record_failure(timeout=isinstance(exc, PrimaryTimeoutError))
                report.errors.append(str(exc))
            except LocalStoreError as exc:
                self._local_failed(exc)
                report.errors.append(str(exc))
        elif full:
            report.errors.append("full resync needs the primary and a working local store")
        return report

    def sync_status(self) -> dict[str, Any]:
        """Sync as plain data (for the admin UI, the CLI and the API): state, last push / pull, outbox depth and
        age, counts, conflicts by strategy, dead letters, recent history, batch durations."""
        depth, oldest, dead = 0, None, None
        if self.local is not None:
            with contextlib.suppress(LocalStoreError):
                depth, oldest = self.local.outbox_stats()
                dead = self.local.dead_letter_count()
        depth += len(self.journal)
        puller = self.puller
        if self.primary is None:
            state = "local_only"
        elif self.circuit.state != "closed":
            state = "offline"
        elif self.replayer.state == "pushing":
            state = "pushing"
        elif puller is not None and puller.state == "pulling":
            state = "pulling"
        elif dead or (depth and self.replayer.last_error):
            state = "error"
        else:
            state = "idle"
        conflicts: dict[str, Any] | None = None
        if self.primary is not None and self.circuit.allow():
            try:
                conflicts = self.primary.conflict_counts()
            except PrimaryUnavailableError:
                conflicts = None
        totals = self.replayer.totals
        history = sorted(
            [*self.replayer.history, *(puller.history if puller is not None else [])], key=lambda e: e["at"]
        )[-50:]
        return {
            "state": state,
            "node_id": self.node_id,
            "last_push_at": self.replayer.last_push_at,
            "last_pull_at": puller.last_pull_at if puller is not None else None,
            "listening": bool(puller is not None and puller.listening),
            "outbox": {
                "depth": depth,
                "oldest_pending_age_s": None if oldest is None else round(max(0.0, time.time() - oldest), 3),
            },
            "counts": {
                "pushed": totals.pushed,
                "pulled": puller.pulled if puller is not None else 0,
                "failed": totals.failed,
                "superseded": totals.superseded,
                "duplicates": totals.duplicates,
                "manual_conflicts": totals.conflicts,
                "merged": sum(self.replayer.conflicts_resolved.values()),
            },
            "conflicts": conflicts,
            "dead_letters": dead,
            "batch_size": self.replayer.batch_size,
            "last_error": self.replayer.last_error or (puller.last_error if puller is not None else None),
            "history": history,
            "batch_durations_ms": [{"ops": n, "ms": ms} for n, ms in self.replayer.batch_durations],
        }

    # -- conflicts and dead letters ---------------------------------------------------------------------------

    def conflicts(
        self, status: str | None = "open", *, collection: str | None = None, limit: int = 100, after_id: int = 0
    ) -> builtins.list[Conflict]:
        """Conflicts recorded on the primary (``status``: ``"open"``, ``"resolved"`` or ``None`` for all)."""
        self._check_open()
        if status not in (None, "open", "resolved"):
            raise ValidationError("status must be 'open', 'resolved' or None")
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError("limit must be an integer from 1 to 10000")
        if collection is not None:
            check_collection(collection)
        primary = self._need_primary("conflicts")
        rows = primary.list_conflicts(status=status, collection=collection, limit=limit, after_id=after_id)
        return [Conflict.from_row(r) for r in rows]

    def get_conflict(self, conflict_id: int) -> Conflict | None:
        self._check_open()
        row = self._need_primary("conflicts").get_conflict(_positive_id(conflict_id))
        return None if row is None else Conflict.from_row(row)

    def resolve_conflict(
        self, conflict_id: int, choice: str = "local", value: Any = None, *, actor: str = "admin"
    ) -> WriteResult | None:
        """Settle an open manual conflict: keep the ``"local"`` value (the one that lost), the ``"remote"`` one
        (what the primary holds: nothing is written), or write ``value`` (``choice="value"``). The write goes
        through the normal write path; the resolution is audited. Returns the write's result (``None`` for
        ``"remote"``). Raises `ConflictError` if the conflict is not open."""
        self._check_open()
        if choice not in ("local", "remote", "value"):
            raise ValidationError("choice must be 'local', 'remote' or 'value'")
        if not isinstance(actor, str) or not actor.strip() or len(actor) > 200:
            raise ValidationError("actor must be a non-empty name")
        primary = self._need_primary("resolving a conflict")
        row = primary.get_conflict(_positive_id(conflict_id))
        if row is None:
            raise ConflictError(f"no conflict with id {conflict_id}")
        conflict = Conflict.from_row(row)
        if conflict.status != "open":
            raise ConflictError(f"conflict {conflict_id} is already {conflict.status}")
        result: WriteResult | None = None
        if choice == "value":
            encoded = encode_value(value, max_bytes=self.config.max_value_bytes)
            result = self._write(conflict.collection, conflict.key, encoded)
        elif choice == "local":
            result = self._write(conflict.collection, conflict.key, row[5])  # JSON text; None = a deletion
        resolution = {"choice": choice, "op_id": result.op_id if result else None}
        if not primary.close_conflict(conflict.id, resolution=resolution, actor=actor):
            raise ConflictError(f"conflict {conflict_id} was resolved by someone else meanwhile")
        return result

    def dead_letters(self, *, limit: int = 100, after_id: int = 0) -> builtins.list[dict[str, Any]]:
        """Ops the primary refused ``sync_retry_attempts`` times; they no longer block anything."""
        self._check_open()
        return self._need_local().dead_letters(limit=limit, after_id=after_id)

    def retry_dead_letter(self, letter_id: int) -> WriteResult:
        """Write a dead letter's value again, as a new write (newest HLC), through the normal write path."""
        self._check_open()
        letter = self._need_local().take_dead_letter(_positive_id(letter_id))
        if letter is None:
            raise ValidationError(f"no dead letter with id {letter_id}")
        log.info("retrying dead letter %s (%s/%s)", letter_id, letter["collection"], letter["key"])
        return self._write(letter["collection"], letter["key"], letter["value"])

    def discard_dead_letter(self, letter_id: int, *, actor: str = "admin") -> dict[str, Any]:
        """Drop a dead letter for good (audited on the primary when it is reachable)."""
        self._check_open()
        letter = self._need_local().take_dead_letter(_positive_id(letter_id))
        if letter is None:
            raise ValidationError(f"no dead letter with id {letter_id}")
        log.warning("dead letter %s discarded by %s: %s/%s", letter_id, actor, letter["collection"], letter["key"])
        if self.primary is not None and self.circuit.allow():
            with contextlib.suppress(PrimaryUnavailableError):
                self.primary.audit(actor, "deadletter.discarded", f"{letter['collection']}/{letter['key']}", letter)
        return letter

    def _need_primary(self, what: str) -> PrimaryTier:
        if self.primary is None:
            raise PrimaryUnavailableError(f"{what} needs a primary; none is configured (embedded mode)")
        return self.primary

    def _need_local(self) -> LocalTier:
        if self.local is None:
            raise LocalStoreError(f"the local store is not usable: {self.local_error}")
        return self.local

    def health(self) -> dict[str, Any]:
        """Plain data: each tier's state, outbox depth and oldest pending age, circuit state."""
        depth, oldest = 0, None
        local: dict[str, Any]
        if self.local is None:
            local = {"state": "down", "detail": self.local_error or "not open"}
        else:
            local = self.local.health().to_dict()
            if not self._local_ok:
                local["state"] = "degraded" if local["state"] == "healthy" else local["state"]
                local["detail"] = self.local_error or local["detail"]
            with contextlib.suppress(LocalStoreError):
                depth, oldest = self.local.outbox_stats()
        primary: dict[str, Any]
        if self.primary is None:
            primary = {"state": "disabled", "detail": "no primary configured (embedded mode)"}
        elif self.circuit.state == "closed" and not self._closed:
            primary = self.primary.health().to_dict()
            if primary["state"] != "healthy":
                self.circuit.record_failure()
        else:
            primary = {
                "state": "down",
                "detail": self.primary.last_error or "circuit open",
                "url": redact(self.primary.url),
                "schema": self.primary.schema,
            }
        journal = self.journal.health().to_dict()
        return {
            "node_id": self.node_id,
            "data_dir": str(self.data_dir),
            "write_mode": self.config.write_mode,
            "read_policy": self.config.read_policy,
            "primary": primary,
            "local": local,
            "journal": journal,
            "circuit": self.circuit.snapshot(),
            "outbox": {
                "depth": depth + journal.get("entries", 0),
                "oldest_pending_age_s": None if oldest is None else round(max(0.0, time.time() - oldest), 3),
            },
            "sync": {
                "pushed": self.replayer.totals.pushed,
                "superseded": self.replayer.totals.superseded,
                "duplicates": self.replayer.totals.duplicates,
                "failed": self.replayer.totals.failed,
                "last_push_at": self.replayer.last_push_at,
                "last_error": self.replayer.last_error,
            },
        }

    # -- services ---------------------------------------------------------------------------------------------

    @property
    def backups(self) -> BackupService:
        """The backup service of this store (created on first use; see `hybridstore.backup`)."""
        self._check_open()
        if self._backups is None:
            from .backup.service import BackupService

            self._backups = BackupService(self)
        elif self.config.background:
            self._backups.start()  # idempotent; the recovery service may have created it without its thread
        return self._backups

    def _newest_backup_rows(self) -> Iterator[StoredRow] | None:
        """The records of the newest verified backup, for the recovery service's rebuild while the primary is
        unreachable (``None`` when there is none, or backups are not installed)."""
        try:
            service = self._backups
            if service is None:  # read the repository only: no backup thread, no emergency backup of a broken store
                from .backup.service import BackupService

                service = self._backups = BackupService(self, start=False)
            newest = next((b for b in service.list_backups() if b.verified), None)
        except (ImportError, HybridStoreError) as exc:
            log.warning("no backup to rebuild from: %s", exc)
            return None
        if newest is None:
            return None
        log.info("rebuilding from backup %s (%s, taken at %s)", newest.id, newest.kind, newest.created_at)

        def rows() -> Iterator[StoredRow]:
            for kind, collection, line in service.read_records(newest.id):
                if kind == "collection":
                    key, value, version, hlc, origin, updated_at = line
                    value_json = encode_value(value, max_bytes=self.config.max_value_bytes)
                    yield StoredRow(collection, key, value_json, version, hlc, origin, updated_at)

        return rows()

    @timed("set_many")
    def set_many(self, collection: str, items: Iterable[tuple[str, Any]]) -> builtins.list[WriteResult]:
        """Store many values of one collection as queued writes, for bulk work (restores, imports): every item
        is validated first (a bad one raises `ValidationError` and nothing is written), then all are stored
        with their outbox rows in one SQLite transaction (the journal if SQLite fails) and pushed to the
        primary by the replayer in batches, like any queued write."""
        self._check_open()
        check_collection(collection)
        ops: builtins.list[Op] = []
        for key, value in items:
            check_key(key)
            value_json = encode_value(value, max_bytes=self.config.max_value_bytes)
            ops.append(Op(new_op_id(), collection, key, value_json, self.clock.now(), self.node_id, 0, time.time()))
        if not ops:
            return []
        if self._local_ok and self.local is not None and not len(self.journal):
            try:
                self.local.import_ops(ops)
            except LocalStoreError as exc:
                self._local_failed(exc)
            else:
                self._wake_pusher()
                return [WriteResult("local", 0, True, op.op_id, op.hlc) for op in ops]
        return [self._queue(op) for op in ops]
