"""The read and write paths: which tier serves each operation (inputs are validated by the façade).

Write path: write-through to the primary while its circuit is closed (acknowledged after the primary commits);
otherwise — or with ``write_mode="local_first"`` — SQLite record + outbox row in one transaction (acknowledged
as queued); if SQLite fails, the fsync'd journal (acknowledged as journaled); if that fails too,
`StorageExhaustedError` and nothing is acknowledged. A key with pending local ops is always queued behind them,
so per-key order holds. Read path: the node's own pending writes first (read-your-writes), then the primary
(``read_policy="primary_first"``) or the local copy (``"local_first"``), falling back to local.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable
from itertools import repeat
from typing import TYPE_CHECKING, Any

from ..errors import JournalError, LocalStoreError, PrimaryUnavailableError, StorageExhaustedError
from ..merge import StrategyTable
from ..model import Op, Record, StoredRow, TierName, WriteResult, new_op_id, new_op_ids
from ..validation import encode_value

if TYPE_CHECKING:
    from .core import NodeCore

log = logging.getLogger("hybridstore")
_LOCAL: TierName = "local"
_OP_ID, _OP_HLC = operator.itemgetter(0), operator.itemgetter(4)  # of an `Op`
# `Op` from a tuple of all its fields, without the generated ``__new__``'s Python frame (the write hot path).
_make_op: Callable[[tuple[str, str, str, str | None, str, str, int, float]], Op] = functools.partial(tuple.__new__, Op)


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


class Router:
    def __init__(self, node: NodeCore, strategies: StrategyTable) -> None:
        self._node = node
        self._gateway = node.gateway
        self._slot = node.slot
        self._journal = node.journal
        self._clock = node.clock
        self._strategies = strategies
        self._wall = node.time.wall
        self._node_id = node.node_id  # fixed for the node's life (the configuration is read per call: it can change)

    # -- writes -----------------------------------------------------------------------------------------------

    def new_op(self, collection: str, key: str, value_json: str | None) -> Op:
        return _make_op((new_op_id(), collection, key, value_json, self._clock.now(), self._node_id, 0, self._wall()))

    def new_ops(self, collection: str, items: list[tuple[str, str]]) -> list[Op]:
        """`new_op` of each (key, value text) in order, made at once: the op ids and stamps of the whole batch in
        one go (`new_op_ids`, `HybridClock.now_many`: increasing in ``items``' order, after every earlier stamp)."""
        n = len(items)
        keys, texts = zip(*items, strict=True) if n else ((), ())
        fields = zip(
            new_op_ids(n),
            repeat(collection, n),
            keys,
            texts,
            self._clock.now_many(n),
            repeat(self._node_id, n),
            repeat(0, n),
            repeat(self._wall(), n),
            strict=True,
        )
        return list(map(_make_op, fields))

    def write(self, collection: str, key: str, value_json: str | None) -> WriteResult:
        node = self._node
        if (
            node.config.write_mode == "write_through"
            and self._gateway.allow()
            and (node.origin.settled or self._origin_settled())
        ):
            op = self.new_op(collection, key, value_json)  # stamped after the check: after the node id's old writes
            result = self._write_through(op)
            if result is not None:
                return result
            return self.queue(op)
        return self.queue(self.new_op(collection, key, value_json))

    def _origin_settled(self) -> bool:
        """Does this node's clock order after everything its node id wrote before (`OriginGuard`)? Asks the
        primary the first time on a new data directory; False (the write is queued) if it cannot be asked."""
        origin = self._node.origin
        if origin.settled:
            return True
        try:
            origin.ensure()
        except PrimaryUnavailableError:
            return False
        return True

    def _write_through(self, op: Op) -> WriteResult | None:
        """Write on the primary, or ``None`` when the op must be queued instead."""
        if len(self._journal):
            return None  # journaled ops go first
        row = None
        local = self._slot.writable()
        if local is not None:
            try:
                row = local.get(op.collection, op.key)
            except LocalStoreError as exc:
                self._slot.mark_failed(exc, tier=local)  # the primary can still take the write
        strategy = self._strategies.wire_name(op.collection)
        base = None  # the merge base, if the strategy needs one
        if row is not None:
            if row.synced_at is None:
                return None  # pending local ops for this key go first
            # base_version = the row's version (built as a tuple: `_replace` is a Python-level call)
            op = _make_op((op[0], op[1], op[2], op[3], op[4], op[5], row.version, op[7]))
            if strategy != "last_wins":
                base = row.value_json
        try:
            outcome = self._gateway.call(lambda p: p.put_one(op, strategy=strategy, base_value=base))
        except PrimaryUnavailableError as exc:
            self._node.sync.wake()
            log.warning("primary write failed, queued locally: %s", exc)
            return None
        if outcome.outcome == "conflict":
            # Concurrent change under a merge strategy: queue the op; the pusher merges and pushes the result (the
            # primary remembers the op as a conflict, so pushing it again reports the conflict again).
            return None
        cur = outcome.current
        assert cur is not None
        if cur.hlc != op.hlc:  # our own stamp is no news to our clock
            self._clock.observe(cur.hlc)
        self.refresh_local(cur)  # a failure here loses nothing: the write is safe on the primary
        if outcome.outcome == "manual":
            log.info("write to %s/%s conflicts; queued for manual resolution", op.collection, op.key)
        return WriteResult("primary", cur.version, False, op.op_id, op.hlc, outcome.outcome == "manual")

    def queue(self, op: Op) -> WriteResult:
        local = self._slot.writable()
        if local is not None and not len(self._journal):
            try:
                stored = local.queue(op)
            except LocalStoreError as exc:
                self._slot.mark_failed(exc, tier=local)
            else:
                self._wake_pusher()
                return WriteResult("local", 0, True, stored.op_id, stored.hlc)
        return self._journaled(op)

    def _journaled(self, op: Op) -> WriteResult:
        try:
            self._journal.put(op)
        except JournalError as exc:
            raise StorageExhaustedError(
                f"write NOT saved: the primary, SQLite and the journal all failed ({exc}); free disk space or "
                "fix permissions in the data directory"
            ) from exc
        self._node.sync.wake()  # the journal must be replayed as soon as SQLite works
        return WriteResult("journal", 0, True, op.op_id, op.hlc)

    def queue_many(self, ops: list[Op]) -> list[WriteResult]:
        """Queue many ops: one SQLite transaction (the journal if SQLite fails)."""
        local = self._slot.writable()
        if local is not None and not len(self._journal):
            try:
                stored = local.import_ops(ops, fresh=True)
            except LocalStoreError as exc:
                self._slot.mark_failed(exc, tier=local)
            else:
                self._wake_pusher()
                n, tier = len(stored), _LOCAL
                ids, stamps = map(_OP_ID, stored), map(_OP_HLC, stored)
                return list(map(WriteResult, repeat(tier, n), repeat(0, n), repeat(True, n), ids, stamps))
        return [self.queue(op) for op in ops]

    def set_many(self, collection: str, items: list[tuple[str, Any]]) -> list[WriteResult]:
        """`BulkWriter`: queue already validated keys with their values (encoded here)."""
        limit = self._node.config.max_value_bytes
        return self.set_many_encoded(collection, [(key, encode_value(value, max_bytes=limit)) for key, value in items])

    def set_many_encoded(self, collection: str, items: list[tuple[str, str]]) -> list[WriteResult]:
        """`BulkWriter`: queue already validated keys with values already encoded by `encode_value`."""
        return self.queue_many(self.new_ops(collection, items)) if items else []

    def _wake_pusher(self) -> None:
        # Only when a push can happen now: waking the thread on every write while the primary is down (or
        # absent) costs a context switch per write for nothing.
        if self._gateway.allow():
            self._node.sync.wake()

    # -- reads ------------------------------------------------------------------------------------------------

    def get(self, collection: str, key: str) -> Record | None:
        if len(self._journal):
            jrow = self._journal.get(collection, key)
            if jrow is not None:
                return None if jrow.deleted else jrow.to_record("journal")
        local_row = None
        local = self._slot.tier
        if local is not None:
            try:
                local_row = local.get(collection, key)
            except LocalStoreError as exc:
                self._slot.mark_failed(exc, tier=local)
        primary_first = self._node.config.read_policy == "primary_first"
        if local_row is not None and (local_row.synced_at is None or not primary_first):
            # Pending (read-your-writes) or local_first: the local row answers.
            return None if local_row.value_json is None else local_row.to_record("local")
        if primary_first and self._gateway.allow():
            try:
                row = self._gateway.call(lambda p: p.get(collection, key))
            except PrimaryUnavailableError:
                pass
            else:
                if row is None:
                    return None
                self._clock.observe(row.hlc)
                if local_row is None or local_row.version != row.version:
                    self.refresh_local(row)
                return None if row.deleted else row.to_record("primary")
        if local_row is None or local_row.deleted:
            return None
        return local_row.to_record("local")

    def refresh_local(self, row: StoredRow) -> None:
        local = self._slot.writable()
        if local is not None:
            try:
                local.store_synced(row)
            except LocalStoreError as exc:
                self._slot.mark_failed(exc, tier=local)

    def list_chunk(
        self, collection: str, prefix: str, limit: int, after: str | None
    ) -> tuple[list[Record], str | None]:
        rows: list[StoredRow] | None = None
        base_tier: TierName = "primary"
        if self._node.config.read_policy == "primary_first" and self._gateway.allow():
            try:
                rows = self._gateway.call(lambda p: p.scan(collection, prefix=prefix, after=after, limit=limit))
            except PrimaryUnavailableError:
                rows = None
        local_pending: list[StoredRow] = []
        local = self._slot.tier
        try:
            if rows is None:
                base_tier = "local"
                rows = local.scan(collection, prefix=prefix, after=after, limit=limit) if local else []
            elif local is not None:
                upper = rows[-1].key if len(rows) == limit else None
                local_pending = local.pending_rows(collection, prefix=prefix, after=after, upper=upper)
        except LocalStoreError as exc:
            self._slot.mark_failed(exc, tier=local)
            rows = rows or []
        upper = rows[-1].key if len(rows) == limit else None
        journal_pending = (
            self._journal.pending_rows(collection, prefix=prefix, after=after, upper=upper)
            if len(self._journal)
            else []
        )
        tiers: dict[str, TierName] = {r.key: "local" for r in local_pending}
        tiers.update((r.key, "journal") for r in journal_pending)
        merged, next_after = merge_pending(rows, local_pending + journal_pending, upper=upper, limit=limit)
        return [r.to_record(tiers.get(r.key, base_tier)) for r in merged], next_after
