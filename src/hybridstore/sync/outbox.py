"""Outbox replay: pushes queued ops to the primary, replays the journal into SQLite.

`OutboxReplayer` owns one named background worker. Each round it (1) replays the journal into SQLite if the
journal holds anything and SQLite works, (2) pushes batches of the outbox while the gateway lets calls through.
Failures back off exponentially with full jitter. It never probes the primary: the gateway does, and its
``circuit_closed`` event wakes the replayer, which then resumes by itself, without any new write. ``drain()``
does the same work in the caller's thread (``sync_now``). Pushes are idempotent by op id, so an ambiguous
failure (the primary committed, the answer was lost) is simply pushed again and reported as a duplicate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from .. import faults
from ..backoff import full_jitter
from ..errors import (
    HybridStoreError,
    LocalStoreError,
    PrimaryRejectedError,
    PrimaryTimeoutError,
    PrimaryUnavailableError,
)
from ..events import Event, EventBus
from ..gcpause import paused_gc
from ..merge import MISSING, StrategyTable, merge3
from ..model import ApplyOutcome, Op, StoredRow, SyncReport
from ..tiers.local.outbox import follows
from ..tiers.push import AppliedBatch
from ..worker import Worker

if TYPE_CHECKING:
    from ..node.gateway import PrimaryGateway
    from ..node.origin import OriginGuard
    from ..node.slot import LocalSlot
    from ..tiers.journal import JournalTier
    from ..tiers.local import LocalTier
    from .housekeeping import Housekeeper

log = logging.getLogger("hybridstore.sync")
Pending = tuple[int, Op, "str | None"]  # outbox seq, op, merge base (last value agreed with the primary)
_RESOLUTION_NS = uuid.UUID("6f1c7f3e-3b0a-4c55-9d7e-6a1f0b8e2c41")  # op ids of merge results, derived
# Fields picked by C code: a batch holds thousands of ops, and the push loop is the drain's critical path.
_SEQ, _OP, _OUT = itemgetter(0), itemgetter(1), itemgetter(2)  # of a (seq, op, …) entry
_KEY = itemgetter(1, 2)  # of an Op: (collection, key)
_OUTCOME, _CURRENT = itemgetter(1), itemgetter(2)  # of an ApplyOutcome
_HLC = _OP_HLC = itemgetter(4)  # of a StoredRow, of an Op
IDLE_POLL = 1.0
REPLAY_BACKOFF_CAP = 30.0  # seconds, at most, between attempts to replay the journal into a failing SQLite
ROUND_BATCHES = 16  # batches per background round, between checks of the journal, the circuit and stop()


class OutboxReplayer:
    def __init__(
        self,
        *,
        slot: LocalSlot,
        journal: JournalTier,
        gateway: PrimaryGateway,
        events: EventBus,
        observe: Callable[[str], None],
        origin: OriginGuard | None = None,
        batch_size: int = 1000,
        strategies: StrategyTable | None = None,
        max_rejections: int = 3,
        encode: Callable[[Any], str] = json.dumps,
        retry_base: float = 0.05,
        retry_cap: float = 5.0,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        housekeeper: Housekeeper | None = None,
        stamps_after: Callable[[str], Callable[[], str]] | None = None,
    ) -> None:
        self._slot = slot
        self.housekeeper = housekeeper  # the settled watermark and retention, run between pushes
        self._journal = journal
        self._gateway = gateway
        self._observe = observe
        self._origin = origin  # this node's stamps order after its node id's old writes (node/origin.py)
        self._stamps_after = stamps_after  # new stamps of this node after a given one (re-stamping after a merge)
        self._wall = wall
        self._clock = clock
        self._replay_failures = 0
        self._replay_retry_at = float("-inf")
        self._journal_pushed = 0  # journal entries already pushed straight to the primary
        self.batch_size = batch_size
        self.batch_min = min(batch_size, 16)
        self.batch_max = max(batch_size, 8000)
        self._strategies = strategies or StrategyTable()
        self.max_rejections = max_rejections
        self._encode = encode
        self.state = "idle"
        self.history: deque[dict[str, Any]] = deque(maxlen=200)
        self.batch_durations: deque[tuple[int, float]] = deque(maxlen=200)
        self.conflicts_resolved: dict[str, int] = {}
        self.dead_lettered = 0
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._rng = rng or random.Random()
        self._push_lock = threading.Lock()
        self._replay_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.worker = Worker("hybridstore-replayer", self.run_once, error_delay=IDLE_POLL)
        events.subscribe(self._on_event, "circuit_closed", "local_swapped")
        self._attempt = 0
        self.totals = SyncReport()
        self.last_push_at: float | None = None
        self.last_error: str | None = None

    # -- worker -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.worker.start()

    def wake(self) -> None:
        self.worker.wake()

    def stop(self) -> bool:
        """Stop the worker; True when it ended (the push pool is shut down only then)."""
        stopped = self.worker.stop(timeout=30)
        if stopped and self._executor is not None:
            self._executor.shutdown(wait=True)
        return stopped

    def _on_event(self, event: Event) -> None:
        self._replay_retry_at = float("-inf")  # SQLite may work again: try the journal now
        self.worker.wake()  # the primary is back, or a rebuilt SQLite file is in place: push now

    def run_once(self) -> float:
        """One round of background work; returns how long to wait before the next."""
        try:
            return self._round()
        except Exception:  # never die silently: log, count, go on
            log.exception("outbox replayer round failed")
            self.totals.errors.append("replayer round crashed; see log")
            del self.totals.errors[:-20]
            return IDLE_POLL

    def _round(self) -> float:
        """One unit of background work; returns how long to wait before the next."""
        report = SyncReport()
        journal_stuck = bool(len(self._journal)) and not self._replay_journal_due(report)
        if not journal_stuck and not self._slot.usable:
            self._probe_local()
        if not self._gateway.configured:
            return IDLE_POLL * 5
        if not self._gateway.allow():
            return IDLE_POLL  # the gateway's circuit_closed event wakes us sooner
        if journal_stuck:
            # SQLite still fails: at least get the journaled writes onto the primary (idempotent; they are pushed
            # again, as duplicates, once the journal is replayed into SQLite) — after whatever of the outbox can
            # still be read, since those writes are older.
            try:
                with contextlib.suppress(LocalStoreError):
                    self._push_batches(report, ROUND_BATCHES)
                self._push_journal(report)
            except (PrimaryUnavailableError, PrimaryRejectedError):
                self._attempt += 1
                return full_jitter(self._attempt, base=self._retry_base, cap=self._retry_cap, rng=self._rng)
            return IDLE_POLL
        try:
            pushed = self._push_batches(report, ROUND_BATCHES)
        except (PrimaryUnavailableError, PrimaryRejectedError, LocalStoreError):
            self._attempt += 1
            return full_jitter(self._attempt, base=self._retry_base, cap=self._retry_cap, rng=self._rng)
        self._attempt = 0
        if not pushed and self.housekeeper is not None and self.housekeeper.due():
            self.housekeeper.run()  # the outbox is drained: bookkeeping on the primary, on its own schedule
        return 0.0 if pushed else IDLE_POLL

    # -- work -------------------------------------------------------------------------------------------------

    def _replay_journal_due(self, report: SyncReport) -> bool:
        """Replay the journal if a replay is due: after a failed one, the next waits longer (doubling up to
        ``REPLAY_BACKOFF_CAP``), so a long SQLite outage with a big journal does not re-read it every second."""
        if self._clock() < self._replay_retry_at:
            return False
        if self._replay_journal(report):
            self._replay_failures = 0
            return True
        self._replay_failures += 1
        self._replay_retry_at = self._clock() + min(REPLAY_BACKOFF_CAP, IDLE_POLL * 2 ** (self._replay_failures - 1))
        return False

    def _replay_journal(self, report: SyncReport) -> bool:
        local = self._slot.tier if self._slot.held is None else None  # never into a file awaiting its rebuild
        if local is None:
            return False
        try:
            replayed = self.replay_journal_into(local)
        except LocalStoreError as exc:
            log.debug("journal replay into SQLite failed: %s", exc)
            return False
        report.journal_replayed += replayed
        self._slot.mark_recovered(tier=local)
        return True

    def replay_journal_into(self, local: LocalTier) -> int:
        """Move every journaled op into ``local`` (one transaction) and clear them from the journal; returns how
        many. The rebuild calls it on the new file before that file is put in place. Raises `LocalStoreError`."""
        # One replay at a time: two overlapping replays would each clear the other's snapshot length and could
        # drop entries appended in between.
        with self._replay_lock:
            ops = self._journal.entries()
            if not ops:
                return 0
            stored = local.import_ops(ops)
            self._journal.clear(len(ops))
            self._journal_pushed = max(0, self._journal_pushed - len(ops))
        self.totals.journal_replayed += len(stored)
        superseded = len(ops) - len(stored)
        if superseded:
            # Each was older than a value another node wrote since: last-writer-wins settled it, as the primary
            # would have; counted, never silent.
            self.totals.superseded += superseded
            log.info("%d journaled op(s) were older than values written elsewhere since (superseded)", superseded)
        log.info("replayed %d journaled op(s) into SQLite", len(stored))
        return len(stored)

    def _probe_local(self) -> None:
        """SQLite failed earlier and nothing waits in the journal: try a real write to see if it works again."""
        local = self._slot.tier if self._slot.held is None else None
        if local is None:
            return
        try:
            local.meta_set("write_probe", str(self._wall()))
        except LocalStoreError:
            return
        self._slot.mark_recovered(tier=local)

    def _push_journal(self, report: SyncReport) -> None:
        if self._origin is not None:
            self._origin.ensure()  # journaled stamps are not re-stamped: a new data directory rarely has any
        with self._replay_lock:
            ops = self._journal.entries()[self._journal_pushed :]
            for start in range(0, len(ops), self.batch_size):
                chunk = ops[start : start + self.batch_size]
                outcomes = self._put(chunk)
                for out in outcomes:
                    if out.current is not None:
                        self._observe(out.current.hlc)
                self._journal_pushed += len(chunk)
                report.pushed += sum(1 for o in outcomes if o.outcome == "applied")
            if ops:
                log.info("pushed %d journaled op(s) straight to the primary", len(ops))

    def _push_batches(self, report: SyncReport, max_batches: int, on_batch: Callable[[], None] | None = None) -> int:
        """Push up to ``max_batches`` batches of the outbox; returns how many ops were settled.

        Pipelined: while the primary works on one batch, this thread settles the previous batch in SQLite and
        reads the next one, so SQLite's share of the time hides behind the primary's. The next batch is read
        before the current one is settled, so its base versions for keys in the current batch are patched from
        the current batch's results before it is sent — from ops that reached the primary only: after an op that
        lost, the key's later ops keep the base they were written on (see `_followed_versions`). On a failure the
        batch in flight stays in the outbox (pushing it again is harmless) and the error is raised; a batch the
        primary rejects is pushed op by op so that only the poison ops stay behind (`_isolate`)."""
        local = self._slot.tier
        if local is None or not self._gateway.configured:
            return 0
        settled = 0
        with self._push_lock:
            if self._origin is not None and not self._origin.settled:
                try:
                    self._origin.ensure()  # before anything of this node reaches the primary (re-stamps if needed)
                except PrimaryUnavailableError as exc:  # a failed push of the first batch, as far as anyone waits
                    self._failed(local, local.pending_ops(self.batch_size), exc, report)
                    raise
            self.state = "pushing"
            entries = local.pending_ops(self.batch_size)
            previous: tuple[list[Pending], Sequence[ApplyOutcome]] | None = None  # pushed, to settle
            batches = 0
            try:
                while entries and batches < max_batches:
                    # A batch allocates tuples by the thousand: no cycle search while it is in flight (`gcpause`).
                    with paused_gc():
                        batches += 1
                        started = time.perf_counter()
                        future = self._pusher().submit(self._send, entries)
                        following: list[Pending] = []
                        outcomes: Sequence[ApplyOutcome] | None
                        try:
                            if previous is not None:
                                done, previous = previous, None
                                settled += self._settle(local, *done, report)
                                if on_batch is not None:
                                    on_batch()
                            if batches < max_batches:
                                following = local.pending_ops(self.batch_size, after=entries[-1][0])
                        finally:
                            try:
                                outcomes = self._outcomes(future, local, entries, report)
                            except PrimaryRejectedError:
                                settled += self._isolate(local, entries, report)
                                outcomes = None
                        if outcomes is None:
                            # Ops of a rejected key may follow in later batches: the next round starts again from
                            # the head of the outbox, so they keep waiting behind the rejected op.
                            break
                        self._batch_done(len(entries), time.perf_counter() - started)
                        previous = (entries, outcomes)
                        if following and not isinstance(outcomes, AppliedBatch) and "merged" in map(_OUTCOME, outcomes):
                            # a merge may have re-stamped ops of the next batch (read before it): read it again
                            following = local.pending_ops(len(following), after=entries[-1][0])
                        entries = _rebased(following, entries, outcomes)
            finally:
                if previous is not None:
                    done, previous = previous, None
                    settled += self._settle(local, *done, report)
                    if on_batch is not None:
                        on_batch()
                self.state = "idle"
        return settled

    def _put(self, ops: Sequence[Op]) -> Sequence[ApplyOutcome]:
        if faults.active and faults.OUTBOX_DROP in faults.active:
            return _dropping_put(self._gateway, ops)  # test-only: a broken store (see hybridstore.faults)
        return self._gateway.call(lambda p: p.push_batch(ops))

    def _push_resolution(
        self, op: Op, strategy: str, base: str | None, local: str | None, remote: StoredRow | None
    ) -> ApplyOutcome:
        return self._gateway.call(
            lambda p: p.push_resolution(op, strategy, base=base, local=local, remote=remote, actor=f"system:{strategy}")
        )

    def _send(self, entries: Sequence[Pending]) -> Sequence[ApplyOutcome]:
        """Push one batch and settle its conflicts (merges are pushed from here too); runs in the push thread."""
        ops = [op for _, op, _ in entries]
        if self._strategies.all_last_wins:
            return self._put(ops)
        names = [self._strategies.wire_name(op.collection) for op in ops]
        bases = [base if name == "manual" else None for (_, _, base), name in zip(entries, names, strict=True)]
        outcomes = self._gateway.call(lambda p: p.push_batch(ops, strategies=names, base_values=bases))
        if not isinstance(outcomes, AppliedBatch) and any(o.outcome == "conflict" for o in outcomes):
            outcomes = self._resolve(entries, outcomes)
        return outcomes

    def _resolve(self, entries: Sequence[Pending], outcomes: Sequence[ApplyOutcome]) -> list[ApplyOutcome]:
        """Merge each conflicting key (``merge`` or a callable) and push the result; the ops of that key then
        settle with the merged row. A key that keeps conflicting stays queued (raised as unavailable)."""
        last: dict[tuple[str, str], int] = {}
        for i, ((_, op, _), out) in enumerate(zip(entries, outcomes, strict=True)):
            if out.outcome == "conflict":
                last[(op.collection, op.key)] = i
        resolved: dict[tuple[str, str], ApplyOutcome] = {}
        for key, i in last.items():
            _, op, base = entries[i]
            remote = outcomes[i].current
            for _attempt in range(5):
                merged = self._merged(op, base, remote)
                res_op = Op(
                    str(uuid.uuid5(_RESOLUTION_NS, f"{op.op_id}/{remote.version if remote else 0}")),
                    op.collection,
                    op.key,
                    merged,
                    max(op.hlc, remote.hlc) if remote else op.hlc,
                    op.origin,
                    remote.version if remote else 0,
                    self._wall(),
                )
                strategy = self._strategies.wire_name(op.collection)
                self._order_after(entries[i][0], res_op)
                out = self._push_resolution(res_op, strategy, base, op.value_json, remote)
                if out.outcome in ("applied", "duplicate"):
                    self.conflicts_resolved[strategy] = self.conflicts_resolved.get(strategy, 0) + 1
                    resolved[key] = out
                    break
                remote = out.current  # someone wrote in between: merge again against the new value
            else:
                raise PrimaryUnavailableError(f"{op.collection}/{op.key} keeps conflicting; will merge again later")
        return [
            resolved[(op.collection, op.key)]._replace(op_id=out.op_id, outcome="merged")
            if out.outcome == "conflict"
            else out
            for (_, op, _), out in zip(entries, outcomes, strict=True)
        ]

    def _order_after(self, seq: int, res_op: Op) -> None:
        """Before a merged value goes out with the newer side's stamp, re-stamp the key's ops queued behind it that
        are stamped no later (committed first: after a crash they still order after it). The primary recognises a
        replay of a node's write by its stamp being at or below that node's row's; without this, a write made on
        top of the merged one but stamped before the other side's write would be taken for a replay of the merge
        and dropped."""
        local = self._slot.tier
        if self._stamps_after is None or local is None:
            return
        stamps = self._stamps_after(res_op.hlc)
        moved = local.restamp_key(res_op.collection, res_op.key, res_op.origin, seq, res_op.hlc, stamps)
        if moved:
            log.debug("%d queued op(s) of %s/%s re-stamped after a merged value", moved, res_op.collection, res_op.key)

    def _merged(self, op: Op, base: str | None, remote: StoredRow | None) -> str | None:
        """The value that settles a conflict of ``op`` with ``remote`` (JSON text, ``None`` = deleted)."""
        strategy = self._strategies.of(op.collection)
        b = MISSING if base is None else json.loads(base)
        mine = MISSING if op.value_json is None else json.loads(op.value_json)
        theirs = MISSING if remote is None or remote.value_json is None else json.loads(remote.value_json)
        if callable(strategy):
            try:
                value = strategy(*(None if v is MISSING else v for v in (b, mine, theirs)))
                return self._encode(value)
            except Exception as exc:  # a resolver that fails rejects the op (dead letter after retries)
                raise PrimaryRejectedError(f"conflict resolver failed for {op.collection}/{op.key}: {exc}") from exc
        merged = merge3(b, mine, theirs, local_newer=remote is None or op.hlc > remote.hlc)
        return None if merged is MISSING else self._encode(merged)

    def _isolate(self, local: LocalTier, entries: Sequence[Pending], report: SyncReport) -> int:
        """The primary rejected a batch: push its ops one at a time so the good ones go through. A rejected op
        counts a rejection (dead-lettered after ``max_rejections``); later ops of its key wait behind it, other
        keys do not. Transient failures still raise."""
        blocked: set[tuple[str, str]] = set()
        versions: dict[tuple[str, str], int] = {}
        done: list[tuple[int, Op, ApplyOutcome]] = []
        try:
            for seq, op, base in entries:
                key = (op.collection, op.key)
                if key in blocked:
                    continue
                op = op._replace(base_version=versions.get(key, op.base_version))
                try:
                    out = self._send([(seq, op, base)])[0]
                except PrimaryRejectedError as exc:
                    blocked.add(key)
                    self.last_error = str(exc)
                    report.failed += 1
                    self.totals.failed += 1
                    if local.reject(seq, str(exc), self.max_rejections):
                        self.dead_lettered += 1
                        self._event("dead_letter", 1, 0.0, "error", f"{op.collection}/{op.key}: {exc}")
                        log.error("op %s on %s/%s moved to dead letters: %s", op.op_id, op.collection, op.key, exc)
                    continue
                if out.current is not None:
                    self._observe(out.current.hlc)
                versions.update(_followed_versions([(op, out)]))
                done.append((seq, op, out))
        finally:
            if done:
                local.complete(done, exact=True)
                self._count(done, report)
        return len(done)

    def _batch_done(self, size: int, seconds: float) -> None:
        self.batch_durations.append((size, round(seconds * 1000, 2)))
        self._event("push", size, seconds, "ok")
        if size >= self.batch_size:  # full batches keep succeeding: send more per round trip
            self.batch_size = min(self.batch_max, self.batch_size * 2)

    def _event(self, kind: str, count: int, seconds: float, outcome: str, error: str | None = None) -> None:
        self.history.append(
            {
                "at": self._wall(),
                "kind": kind,
                "count": count,
                "duration_ms": round(seconds * 1000, 2),
                "outcome": outcome,
                "error": error,
            }
        )

    def _pusher(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybridstore-push")
        return self._executor

    def _outcomes(
        self, future: Future[Sequence[ApplyOutcome]], local: LocalTier, entries: list[Pending], report: SyncReport
    ) -> Sequence[ApplyOutcome]:
        """Wait for a pushed batch; on failure record it (circuit, outbox attempts, batch size) and raise."""
        try:
            outcomes = future.result()
        except PrimaryUnavailableError as exc:
            # The gateway has recorded the failure (the push ran through it in the push thread).
            if isinstance(exc, PrimaryTimeoutError):  # maybe the batch is too big for the link: send less next time
                self.batch_size = max(self.batch_min, self.batch_size // 2)
            self._failed(local, entries, exc, report)
            raise
        # The clock observes the newest stamp of the batch once (a merged row carries the other side's stamp).
        if isinstance(outcomes, AppliedBatch):  # every row is its op's own write
            newest = max(map(_OP_HLC, outcomes.ops), default=None)
        else:
            newest = max(map(_HLC, filter(None, map(_CURRENT, outcomes))), default=None)  # in C: thousands of ops
        if newest is not None:
            self._observe(newest)
        return outcomes

    def _settle(
        self, local: LocalTier, entries: list[Pending], outcomes: Sequence[ApplyOutcome], report: SyncReport
    ) -> int:
        """Record a pushed batch in SQLite and count it."""
        if isinstance(outcomes, AppliedBatch):  # the usual batch, settled from its ops
            local.complete_applied(entries, outcomes, outcomes.at)
            self._tally(report, pushed=len(entries))
            self.last_push_at = self._wall()
            return len(entries)
        done = list(zip(map(_SEQ, entries), map(_OP, entries), outcomes, strict=True))
        local.complete(done)
        self._count(done, report)
        return len(done)

    def _count(self, done: Sequence[tuple[int, Op, ApplyOutcome]], report: SyncReport) -> None:
        counts = Counter(map(_OUTCOME, map(_OUT, done)))  # counted in C: thousands of ops per batch
        pushed = counts.pop("applied", 0) + counts.pop("merged", 0)
        superseded = counts.pop("superseded", 0)
        conflicts = counts.pop("manual", 0)
        duplicates = sum(counts.values())
        self._tally(report, pushed=pushed, superseded=superseded, conflicts=conflicts, duplicates=duplicates)
        self.last_push_at = self._wall()

    def _tally(
        self, report: SyncReport, *, pushed: int = 0, superseded: int = 0, conflicts: int = 0, duplicates: int = 0
    ) -> None:
        for tally in (report, self.totals):
            tally.pushed += pushed
            tally.superseded += superseded
            tally.conflicts += conflicts
            tally.duplicates += duplicates

    def _failed(self, local: LocalTier, entries: Sequence[Pending], exc: HybridStoreError, report: SyncReport) -> None:
        self.last_error = str(exc)
        report.failed += len(entries)
        report.errors.append(str(exc))
        del report.errors[:-20]
        self.totals.failed += len(entries)
        self._event("push", len(entries), 0.0, "error", str(exc))
        try:
            local.record_failure([seq for seq, _, _ in entries], str(exc))
        except LocalStoreError as failure:  # the attempt count is advisory; the op itself stays queued
            log.warning("could not record a failed push attempt in SQLite: %s", failure)

    def drain(self, *, max_batches: int | None = None, on_batch: Callable[[], None] | None = None) -> SyncReport:
        """Push everything now, in the caller's thread; stops at the first failure. For ``sync_now()``. With
        ``max_batches=0`` it only replays the journal into SQLite (no primary call at all). ``on_batch`` is called
        after each batch is settled (progress)."""
        report = SyncReport()
        replayed = not len(self._journal) or self._replay_journal(report)
        if self._gateway.configured and max_batches != 0:
            # An explicit request probes at once rather than waiting for the prober's next round.
            ok = self._gateway.allow() or self._gateway.probe_now()
            if ok and not replayed:
                try:
                    self._push_journal(report)
                except HybridStoreError as exc:
                    report.errors.append(str(exc))
            if ok:
                try:
                    self._push_batches(report, max_batches if max_batches is not None else 1 << 62, on_batch)
                except HybridStoreError as exc:
                    # What was not pushed stays queued; a push failure is already counted in the report, an
                    # error reading the outbox is not: say it.
                    if not report.errors or report.errors[-1] != str(exc):
                        report.errors.append(str(exc))
        local = self._slot.tier
        report.remaining = len(self._journal)
        if local is not None:
            try:
                report.remaining += local.outbox_stats()[0]
            except LocalStoreError as exc:
                report.errors.append(f"outbox not readable: {exc}")
        return report


def _rebased(following: list[Pending], pushed: list[Pending], outcomes: Sequence[ApplyOutcome]) -> list[Pending]:
    """The next batch (read before this one was settled) with the base versions of its keys that this batch's ops
    reached the primary for patched from this batch's results (see `_followed_versions`)."""
    if not following:
        return following
    keys = set(map(_KEY, map(_OP, following))) & set(map(_KEY, map(_OP, pushed)))  # in C: usually empty
    if not keys:
        return following
    shared = [(op, outcomes[i]) for i, (_, op, _) in enumerate(pushed) if (op.collection, op.key) in keys]
    versions = _followed_versions([(op, o) for op, o in shared if o.current is not None])
    if not versions:
        return following
    return [
        (seq, op._replace(base_version=v), base)
        if (v := versions.get((op.collection, op.key))) is not None
        else (seq, op, base)
        for seq, op, base in following
    ]


def _followed_versions(pushed: Sequence[tuple[Op, ApplyOutcome]]) -> dict[tuple[str, str], int]:
    """The primary versions that the keys' later queued ops are based on after these outcomes: the versions of
    the rows the pushed ops made (see `follows`). An op that lost (superseded, manual), was merged, or was applied
    before while the row has moved on since (a duplicate whose row is another write) teaches nothing: the key's
    next op was written on top of it, not on top of the row now there, so it must be judged against that row as a
    conflict — under last_wins by HLC, under merge by merging, under manual by an admin — never be taken for a
    follow-up of a write its node had not seen when it was made."""
    return {
        (o.current.collection, o.current.key): o.current.version
        for op, o in pushed
        if o.current is not None and follows(op, o)
    }


def _dropping_put(gateway: PrimaryGateway, ops: Sequence[Op]) -> list[ApplyOutcome]:
    """Test-only (`hybridstore.faults`): push all but one op in ``faults.EVERY``, and report the dropped ones as
    applied (with their own value as the primary's row), so the node settles them and they are lost."""
    dropped = {i for i in range(len(ops)) if faults.due(faults.OUTBOX_DROP)}
    kept = iter(gateway.call(lambda p: p.put_many([op for i, op in enumerate(ops) if i not in dropped])))
    return [
        ApplyOutcome(
            op.op_id,
            "applied",
            StoredRow(op.collection, op.key, op.value_json, op.base_version + 1, op.hlc, op.origin, time.time()),
        )
        if i in dropped
        else next(kept)
        for i, op in enumerate(ops)
    ]
