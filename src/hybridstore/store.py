"""HybridStore: the synchronous, thread-safe public API — a thin façade over a node.

It validates input, then delegates: reads and writes to the node's `Router` (which tier serves each operation,
see `hybridstore.node.router`), sync to the replayer and puller, status to the node's `StatusBoard`, services
(``recovery``, ``backups``, ``metrics``) to the node. The node itself is built by the composition root
(`hybridstore.compose.Node`); ``store.node`` exposes it to code that runs services beside the store (the web
service, tests).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .compose import Node
from .config import StoreConfig
from .errors import (
    ConflictError,
    LocalStoreError,
    PrimaryRejectedError,
    PrimaryUnavailableError,
    ValidationError,
)
from .metrics import StoreMetrics, timed
from .model import Conflict, Page, Record, SyncReport, WriteResult
from .node.status import NodeStatus
from .node.timing import TimeSource
from .recovery.service import RecoveryService
from .validation import check_address, check_collection, check_key, encode_value

if TYPE_CHECKING:
    from .backup.service import BackupService
    from .tiers.local import LocalTier

log = logging.getLogger("hybridstore")


def _positive_id(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValidationError("an id must be a positive integer")
    return value


class HybridStore:
    """See the module docstring. Use `hybridstore.open()` to make one; close it (or use ``with``)."""

    def __init__(self, config: StoreConfig, *, time: TimeSource | None = None) -> None:
        self._node = Node(config, time=time)
        self._router = self._node.router
        self._max_value_bytes = config.max_value_bytes
        self.metrics: StoreMetrics = self._node.metrics

    # -- identity and services ----------------------------------------------------------------------------------

    @property
    def node(self) -> Node:
        """The node behind this store: its gateway, local slot, journal, events, status board and services."""
        return self._node

    @property
    def config(self) -> StoreConfig:
        return self._node.config

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def data_dir(self) -> Path:
        return self._node.data_dir

    @property
    def recovery(self) -> RecoveryService:
        """The health monitor, alerts and recovery strategies (see `hybridstore.recovery`)."""
        return self._node.recovery

    @property
    def backups(self) -> BackupService:
        """The backup service of this store (created on first use; see `hybridstore.backup`)."""
        return self._node.backups()

    # -- lifecycle --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop background work and close every tier. Queued ops stay queued for the next open."""
        self._node.close()

    def __enter__(self) -> HybridStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- writes -----------------------------------------------------------------------------------------------

    @timed("set")
    def set(self, collection: str, key: str, value: Any) -> WriteResult:
        """Store ``value`` (any JSON value) under ``collection``/``key``."""
        self._node.check_open()
        check_address(collection, key)
        return self._router.write(collection, key, encode_value(value, max_bytes=self._max_value_bytes))

    @timed("delete")
    def delete(self, collection: str, key: str) -> WriteResult:
        """Delete (a tombstone, so the deletion reaches the primary and other nodes)."""
        self._node.check_open()
        check_address(collection, key)
        return self._router.write(collection, key, None)

    @timed("set_many")
    def set_many(self, collection: str, items: Iterable[tuple[str, Any]]) -> builtins.list[WriteResult]:
        """Store many values of one collection as queued writes, for bulk work (restores, imports): every item
        is validated first (a bad one raises `ValidationError` and nothing is written), then all are stored
        with their outbox rows in one SQLite transaction (the journal if SQLite fails) and pushed to the
        primary by the replayer in batches, like any queued write."""
        self._node.check_open()
        check_collection(collection)
        max_bytes = self._max_value_bytes
        encoded = []
        for key, value in items:
            check_key(key)
            encoded.append((key, encode_value(value, max_bytes=max_bytes)))
        return self._router.set_many_encoded(collection, encoded)  # op ids and stamps made for the whole batch

    # -- reads ------------------------------------------------------------------------------------------------

    @timed("get")
    def get(self, collection: str, key: str) -> Record | None:
        """The current value, or ``None``. ``Record.source`` says which tier answered."""
        self._node.check_open()
        check_address(collection, key)
        return self._router.get(collection, key)

    @timed("list")
    def list(self, collection: str, *, prefix: str = "", limit: int = 100, after: str | None = None) -> Page:
        """Live records ordered by key; pass ``page.next_after`` as ``after`` for the next page."""
        self._node.check_open()
        check_collection(collection)
        if not isinstance(prefix, str):
            raise ValidationError("prefix must be a string")
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError("limit must be an integer from 1 to 10000")
        if after is not None:
            check_key(after)
        records: builtins.list[Record] = []
        cursor = after
        # Pending deletes can thin out a page: keep reading until it is full or the collection ends.
        while True:
            chunk, cursor = self._router.list_chunk(collection, prefix, limit - len(records), cursor)
            records += chunk
            if cursor is None or len(records) >= limit:
                return Page(records, cursor)

    # -- sync and status --------------------------------------------------------------------------------------

    def sync_now(
        self, *, full: bool = False, progress: Callable[[str, int, int | None], None] | None = None
    ) -> SyncReport:
        """Replay the journal, push the outbox, then pull the primary's changes — now, in this thread. ``full``
        rebuilds the local copy from the primary (pending local ops are kept and pushed first). ``progress`` is
        called with (phase, done, total if known): phase ``"push"`` (ops settled, ops that were queued) then
        ``"pull"`` (rows pulled, rows in total when known)."""
        node = self._node
        node.check_open()
        push_progress = None
        if progress is not None:  # the queue's size is read only for a caller that shows progress
            before = node.status.snapshot(fresh=True).outbox["depth"]
            settled0 = _settled(node.replayer.totals)

            def push_progress() -> None:
                progress("push", _settled(node.replayer.totals) - settled0, before)

        report = node.replayer.drain(on_batch=push_progress)
        puller = node.puller
        local: LocalTier | None = node.slot.writable()
        if puller is not None and node.gateway.allow() and local is not None:
            try:
                report.pulled = puller.pull_now(
                    full=full, progress=None if progress is None else lambda done, total: progress("pull", done, total)
                )
            except PrimaryUnavailableError as exc:
                report.errors.append(str(exc))
            except LocalStoreError as exc:
                node.slot.mark_failed(exc, tier=local)
                report.errors.append(str(exc))
        elif full:
            report.errors.append("full resync needs the primary and a working local store")
        node.status.sample_local()
        return report

    def status(self, *, fresh: bool = False) -> NodeStatus:
        """The node's status snapshot (see `hybridstore.node.status`): never touches the primary."""
        self._node.check_open()
        return self._node.status.snapshot(fresh=fresh)

    def sync_status(self, *, refresh: bool = False) -> dict[str, Any]:
        """Sync as plain data (for the admin UI, the CLI and the API): state, last push / pull, outbox depth and
        age, counts, conflicts by strategy (as the health monitor last read them; ``refresh=True`` asks the
        primary now), dead letters, recent history, batch durations."""
        node = self._node
        if refresh:
            node.status.refresh_primary_counts()
        snap = node.status.snapshot(fresh=True)
        sync = snap.sync
        replayer, puller = node.replayer, node.puller
        history = sorted([*replayer.history, *(puller.history if puller is not None else [])], key=lambda e: e["at"])[
            -50:
        ]
        return {
            "state": sync["state"],
            "node_id": snap.node_id,
            "last_push_at": sync["last_push_at"],
            "last_pull_at": sync["last_pull_at"],
            "listening": sync["listening"],
            "outbox": {"depth": snap.outbox["depth"], "oldest_pending_age_s": snap.outbox["oldest_pending_age_s"]},
            "counts": {
                k: sync[k]
                for k in ("pushed", "pulled", "failed", "superseded", "duplicates", "manual_conflicts", "merged")
            },
            "conflicts": snap.conflicts,
            "dead_letters": snap.dead_letters,
            "batch_size": sync["batch_size"],
            "last_error": sync["last_error"],
            "history": history,
            "batch_durations_ms": [{"ops": n, "ms": ms} for n, ms in replayer.batch_durations],
        }

    def nodes(self) -> builtins.list[dict[str, Any]]:
        """Every node sharing the primary, from their heartbeat rows (see `hybridstore.node.heartbeat`): dicts of
        exactly ``node_id, host, version, last_heartbeat`` (ISO 8601), ``state, outbox_depth, last_push,
        last_pull`` (ISO 8601 or ``None``) and ``stale`` (silent for more than 3 heartbeat intervals)."""
        self._node.check_open()
        return self._node.heartbeat.nodes()

    def health(self) -> dict[str, Any]:
        """Plain data: each tier's state, outbox depth and oldest pending age, circuit state. Reads only: it
        never probes the primary (the gateway's prober does) and changes no state."""
        snap = self._node.status.snapshot(fresh=True)
        sync = snap.sync
        return {
            "node_id": snap.node_id,
            "data_dir": snap.data_dir,
            "write_mode": snap.write_mode,
            "read_policy": snap.read_policy,
            "primary": snap.primary,
            "local": snap.local,
            "journal": snap.journal,
            "circuit": snap.circuit,
            "outbox": {"depth": snap.outbox["depth"], "oldest_pending_age_s": snap.outbox["oldest_pending_age_s"]},
            "sync": {
                k: sync[k] for k in ("pushed", "superseded", "duplicates", "failed", "last_push_at", "last_error")
            },
        }

    # -- conflicts and dead letters ---------------------------------------------------------------------------

    def conflicts(
        self, status: str | None = "open", *, collection: str | None = None, limit: int = 100, after_id: int = 0
    ) -> builtins.list[Conflict]:
        """Conflicts recorded on the primary (``status``: ``"open"``, ``"resolved"`` or ``None`` for all)."""
        self._node.check_open()
        if status not in (None, "open", "resolved"):
            raise ValidationError("status must be 'open', 'resolved' or None")
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError("limit must be an integer from 1 to 10000")
        if collection is not None:
            check_collection(collection)
        rows = self._primary_call(
            "conflicts",
            lambda p: p.list_conflicts(status=status, collection=collection, limit=limit, after_id=after_id),
        )
        return [Conflict.from_row(r) for r in rows]

    def get_conflict(self, conflict_id: int) -> Conflict | None:
        self._node.check_open()
        cid = _positive_id(conflict_id)
        row = self._primary_call("conflicts", lambda p: p.get_conflict(cid))
        return None if row is None else Conflict.from_row(row)

    def resolve_conflict(
        self, conflict_id: int, choice: str = "local", value: Any = None, *, actor: str = "admin"
    ) -> WriteResult | None:
        """Settle an open manual conflict: keep the ``"local"`` value (the one that lost), the ``"remote"`` one
        (what the primary holds: nothing is written), or write ``value`` (``choice="value"``). The write goes
        through the normal write path; the resolution is audited. Returns the write's result (``None`` for
        ``"remote"``). Raises `ConflictError` if the conflict is not open."""
        self._node.check_open()
        if choice not in ("local", "remote", "value"):
            raise ValidationError("choice must be 'local', 'remote' or 'value'")
        if not isinstance(actor, str) or not actor.strip() or len(actor) > 200:
            raise ValidationError("actor must be a non-empty name")
        cid = _positive_id(conflict_id)
        row = self._primary_call("resolving a conflict", lambda p: p.get_conflict(cid))
        if row is None:
            raise ConflictError(f"no conflict with id {conflict_id}")
        conflict = Conflict.from_row(row)
        if conflict.status != "open":
            raise ConflictError(f"conflict {conflict_id} is already {conflict.status}")
        result: WriteResult | None = None
        if choice == "value":
            encoded = encode_value(value, max_bytes=self._max_value_bytes)
            result = self._router.write(conflict.collection, conflict.key, encoded)
        elif choice == "local":
            result = self._router.write(conflict.collection, conflict.key, row[5])  # JSON text; None = a deletion
        resolution = {"choice": choice, "op_id": result.op_id if result else None}
        closed = self._primary_call(
            "resolving a conflict", lambda p: p.close_conflict(conflict.id, resolution=resolution, actor=actor)
        )
        if not closed:
            raise ConflictError(f"conflict {conflict_id} was resolved by someone else meanwhile")
        return result

    def dead_letters(self, *, limit: int = 100, after_id: int = 0) -> builtins.list[dict[str, Any]]:
        """Ops the primary refused ``sync_retry_attempts`` times; they no longer block anything."""
        self._node.check_open()
        return self._need_local().dead_letters(limit=limit, after_id=after_id)

    def retry_dead_letter(self, letter_id: int, *, actor: str = "admin") -> WriteResult:
        """Write a dead letter's value again, as a new write (newest HLC), through the normal write path. The
        letter is removed only once that write is stored (on the primary, or queued); if the primary still
        refuses the value, `PrimaryRejectedError` is raised and the letter stays where it was."""
        self._node.check_open()
        lid = _positive_id(letter_id)
        local = self._need_local()
        found = local.dead_letters(limit=1, after_id=lid - 1)
        if not found or found[0]["id"] != lid:
            raise ValidationError(f"no dead letter with id {letter_id}")
        letter = found[0]
        target = f"{letter['collection']}/{letter['key']}"
        log.info("retrying dead letter %s (%s)", lid, target)
        result = self._router.write(letter["collection"], letter["key"], letter["value"])
        local.take_dead_letter(lid)  # the value lives on in the write just stored
        self._audit(actor, "deadletter.retried", target, {"id": lid, "op_id": result.op_id, "tier": result.tier})
        return result

    def discard_dead_letter(self, letter_id: int, *, actor: str = "admin") -> dict[str, Any]:
        """Drop a dead letter for good (audited on the primary when it is reachable)."""
        self._node.check_open()
        letter = self._need_local().take_dead_letter(_positive_id(letter_id))
        if letter is None:
            raise ValidationError(f"no dead letter with id {letter_id}")
        log.warning("dead letter %s discarded by %s: %s/%s", letter_id, actor, letter["collection"], letter["key"])
        self._audit(actor, "deadletter.discarded", f"{letter['collection']}/{letter['key']}", letter)
        return letter

    def _audit(self, actor: str, action: str, target: str, details: dict[str, Any]) -> None:
        """Record an admin action in the primary's audit log when it is reachable (best effort: the action
        itself is already done and logged)."""
        gateway = self._node.gateway
        if gateway.allow():
            with contextlib.suppress(PrimaryUnavailableError, PrimaryRejectedError):
                gateway.call(lambda p: p.audit(actor, action, target, details))

    def _primary_call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        gateway = self._node.gateway
        if not gateway.configured:
            raise PrimaryUnavailableError(f"{what} needs a primary; none is configured (embedded mode)")
        return gateway.call(fn)

    def _need_local(self) -> LocalTier:
        local = self._node.slot.tier
        if local is None:
            raise LocalStoreError(f"the local store is not usable: {self._node.slot.error}")
        return local


def _settled(totals: SyncReport) -> int:
    return totals.pushed + totals.superseded + totals.duplicates + totals.conflicts
