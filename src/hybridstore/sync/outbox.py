"""Outbox replay: pushes queued ops to the primary, replays the journal into SQLite.

`OutboxReplayer` owns one named background thread. Each round it (1) replays the journal into SQLite if the
journal holds anything and SQLite works, (2) probes the primary when the circuit allows a probe, (3) pushes
one batch of the outbox. Failures back off exponentially with full jitter; the thread resumes by itself when the
primary returns, without any new write. ``drain()`` does the same work in the caller's thread (``sync_now``).
Pushes are idempotent by op id, so an ambiguous failure (the primary committed, the answer was lost) is
simply pushed again and reported as a duplicate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..backoff import full_jitter
from ..circuit import CircuitBreaker
from ..errors import (
    HybridStoreError,
    LocalStoreError,
    PrimaryRejectedError,
    PrimaryTimeoutError,
    PrimaryUnavailableError,
)
from ..model import ApplyOutcome, Op, StoredRow, SyncReport
from .merge import MISSING, StrategyTable, merge3

if TYPE_CHECKING:
    from ..tiers.journal import JournalTier
    from ..tiers.local import LocalTier
    from ..tiers.primary import PrimaryTier

log = logging.getLogger("hybridstore.sync")
Pending = tuple[int, Op, "str | None"]  # outbox seq, op, merge base (last value agreed with the primary)
_RESOLUTION_NS = uuid.UUID("6f1c7f3e-3b0a-4c55-9d7e-6a1f0b8e2c41")  # op ids of merge results, derived
IDLE_POLL = 1.0
ROUND_BATCHES = 16  # batches per background round, between checks of the journal, the circuit and stop()


class OutboxReplayer:
    def __init__(
        self,
        *,
        local: Callable[[], LocalTier | None],
        journal: JournalTier,
        primary: PrimaryTier | None,
        circuit: CircuitBreaker,
        observe: Callable[[str], None],
        on_local_recovered: Callable[[], None],
        local_ok: Callable[[], bool] = lambda: True,
        batch_size: int = 1000,
        strategies: StrategyTable | None = None,
        max_rejections: int = 3,
        encode: Callable[[Any], str] = json.dumps,
        retry_base: float = 0.05,
        retry_cap: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._local = local
        self._journal = journal
        self._primary = primary
        self._circuit = circuit
        self._observe = observe
        self._on_local_recovered = on_local_recovered
        self._local_ok = local_ok
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
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._attempt = 0
        self.totals = SyncReport()
        self.last_push_at: float | None = None
        self.last_error: str | None = None

    # -- thread -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hybridstore-replayer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _loop(self) -> None:
        self.probe_at_start()
        while not self._stop.is_set():
            self._wake.clear()  # before the round, so a wake() during it is not lost
            try:
                delay = self._round()
            except Exception:  # never die silently: log, count, go on
                log.exception("outbox replayer round failed")
                self.totals.errors.append("replayer round crashed; see log")
                del self.totals.errors[:-20]
                delay = IDLE_POLL
            if delay > 0:
                self._wake.wait(delay)

    def _round(self) -> float:
        """One unit of background work; returns how long to wait before the next."""
        report = SyncReport()
        journal_stuck = bool(len(self._journal)) and not self._replay_journal(report)
        if not journal_stuck and not self._local_ok():
            self._probe_local()
        if self._primary is None:
            return IDLE_POLL * 5
        if self._circuit.state != "closed":
            if not self._circuit.probe_due():
                return max(0.01, min(IDLE_POLL, self._circuit.seconds_until_probe()))
            return 0.0 if self._probe() else self._circuit.seconds_until_probe()
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
        return 0.0 if pushed else IDLE_POLL

    def probe_at_start(self) -> None:
        """Find out at start-up whether the primary answers, so that when it does not (a terminal opened
        offline), the first write goes straight to SQLite instead of waiting out the timeout."""
        if self._primary is None or self._circuit.state != "closed":
            return
        try:
            self._primary.probe()
        except PrimaryUnavailableError as exc:
            log.warning("primary unreachable at start-up, working locally: %s", exc)
            self._circuit.trip()

    def _probe(self) -> bool:
        """Probe the primary; True when it answered (the circuit is then closed)."""
        assert self._primary is not None
        try:
            self._primary.probe()
        except PrimaryUnavailableError as exc:
            self._circuit.record_failure()
            log.debug("primary probe failed: %s", exc)
            return False
        # Fresh pool: connections from before the outage are dead, and the pool's own reconnect backoff may
        # have grown to minutes.
        self._primary.reset_pool()
        self._circuit.record_success()
        log.info("primary is reachable again; circuit closed")
        return True

    # -- work -------------------------------------------------------------------------------------------------

    def _replay_journal(self, report: SyncReport) -> bool:
        local = self._local()
        if local is None:
            return False
        # One replay at a time: two overlapping replays would each clear the other's snapshot length and could
        # drop entries appended in between.
        with self._replay_lock:
            ops = self._journal.entries()
            if not ops:
                return True
            try:
                local.import_ops(ops)
            except LocalStoreError as exc:
                log.debug("journal replay into SQLite failed: %s", exc)
                return False
            self._journal.clear(len(ops))
            self._journal_pushed = max(0, self._journal_pushed - len(ops))
        report.journal_replayed += len(ops)
        self.totals.journal_replayed += len(ops)
        log.info("replayed %d journaled op(s) into SQLite", len(ops))
        self._on_local_recovered()
        return True

    def _probe_local(self) -> None:
        """SQLite failed earlier and nothing waits in the journal: try a real write to see if it works again."""
        local = self._local()
        if local is None:
            return
        try:
            local.meta_set("write_probe", str(time.time()))
        except LocalStoreError:
            return
        self._on_local_recovered()

    def _push_journal(self, report: SyncReport) -> None:
        assert self._primary is not None
        with self._replay_lock:
            ops = self._journal.entries()[self._journal_pushed :]
            for start in range(0, len(ops), self.batch_size):
                chunk = ops[start : start + self.batch_size]
                try:
                    outcomes = self._primary.put_many(chunk)
                except PrimaryUnavailableError as exc:
                    self._circuit.record_failure(timeout=isinstance(exc, PrimaryTimeoutError))
                    raise
                self._circuit.record_success()
                for out in outcomes:
                    if out.current is not None:
                        self._observe(out.current.hlc)
                self._journal_pushed += len(chunk)
                report.pushed += sum(1 for o in outcomes if o.outcome == "applied")
            if ops:
                log.info("pushed %d journaled op(s) straight to the primary", len(ops))

    def _push_batches(self, report: SyncReport, max_batches: int) -> int:
        """Push up to ``max_batches`` batches of the outbox; returns how many ops were settled.

        Pipelined: while the primary works on one batch, this thread settles the previous batch in SQLite and
        reads the next one, so SQLite's share of the time hides behind the primary's. The next batch is read
        before the current one is settled, so its base versions for keys in the current batch are patched from
        the current batch's results before it is sent. On a failure the batch in flight stays in the outbox
        (pushing it again is harmless) and the error is raised; a batch the primary rejects is pushed op by op so
        that only the poison ops stay behind (`_isolate`)."""
        local = self._local()
        if local is None or self._primary is None:
            return 0
        settled = 0
        with self._push_lock:
            self.state = "pushing"
            entries = local.pending_ops(self.batch_size)
            previous: list[tuple[int, Op, ApplyOutcome]] = []
            batches = 0
            try:
                while entries and batches < max_batches:
                    batches += 1
                    started = time.perf_counter()
                    future = self._pusher().submit(self._send, entries)
                    following: list[Pending] = []
                    outcomes: list[ApplyOutcome] | None
                    try:
                        if previous:
                            done, previous = previous, []
                            settled += self._settle(local, done, report)
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
                    previous = [(seq, op, out) for (seq, op, _), out in zip(entries, outcomes, strict=True)]
                    versions = {(o.current.collection, o.current.key): o.current.version for o in outcomes if o.current}
                    entries = [
                        (seq, op._replace(base_version=versions.get((op.collection, op.key), op.base_version)), base)
                        for seq, op, base in following
                    ]
            finally:
                if previous:
                    done, previous = previous, []
                    settled += self._settle(local, done, report)
                self.state = "idle"
        return settled

    def _send(self, entries: Sequence[Pending]) -> list[ApplyOutcome]:
        """Push one batch and settle its conflicts (merges are pushed from here too); runs in the push thread."""
        assert self._primary is not None
        ops = [op for _, op, _ in entries]
        if self._strategies.all_last_wins:
            return self._primary.put_many(ops)
        names = [self._strategies.wire_name(op.collection) for op in ops]
        bases = [base if name == "manual" else None for (_, _, base), name in zip(entries, names, strict=True)]
        outcomes = self._primary.put_many(ops, strategies=names, base_values=bases)
        if any(o.outcome == "conflict" for o in outcomes):
            outcomes = self._resolve(entries, outcomes)
        return outcomes

    def _resolve(self, entries: Sequence[Pending], outcomes: list[ApplyOutcome]) -> list[ApplyOutcome]:
        """Merge each conflicting key (``merge`` or a callable) and push the result; the ops of that key then
        settle with the merged row. A key that keeps conflicting stays queued (raised as unavailable)."""
        assert self._primary is not None
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
                    time.time(),
                )
                strategy = self._strategies.wire_name(op.collection)
                out = self._primary.push_resolution(
                    res_op, strategy, base=base, local=op.value_json, remote=remote, actor=f"system:{strategy}"
                )
                if out.outcome in ("applied", "duplicate"):
                    self.conflicts_resolved[strategy] = self.conflicts_resolved.get(strategy, 0) + 1
                    resolved[key] = out
                    break
                remote = out.current  # someone wrote in between: merge again against the new value
            else:
                raise PrimaryUnavailableError(f"{op.collection}/{op.key} keeps conflicting; will merge again later")
        return [
            resolved[(op.collection, op.key)]._replace(op_id=out.op_id) if out.outcome == "conflict" else out
            for (_, op, _), out in zip(entries, outcomes, strict=True)
        ]

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
                except PrimaryUnavailableError as exc:
                    self._circuit.record_failure(timeout=isinstance(exc, PrimaryTimeoutError))
                    raise
                if out.current is not None:
                    versions[key] = out.current.version
                    self._observe(out.current.hlc)
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
                "at": time.time(),
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
        self, future: Future[list[ApplyOutcome]], local: LocalTier, entries: list[Pending], report: SyncReport
    ) -> list[ApplyOutcome]:
        """Wait for a pushed batch; on failure record it (circuit, outbox attempts, batch size) and raise."""
        try:
            outcomes = future.result()
        except PrimaryUnavailableError as exc:
            timeout = isinstance(exc, PrimaryTimeoutError)
            self._circuit.record_failure(timeout=timeout)
            if timeout:  # maybe the batch is too big for the link: send less next time
                self.batch_size = max(self.batch_min, self.batch_size // 2)
            self._failed(local, entries, exc, report)
            raise
        self._circuit.record_success()
        for outcome in outcomes:
            if outcome.current is not None:
                self._observe(outcome.current.hlc)
        return outcomes

    def _settle(self, local: LocalTier, done: list[tuple[int, Op, ApplyOutcome]], report: SyncReport) -> int:
        """Record a pushed batch in SQLite and count it."""
        local.complete(done)
        self._count(done, report)
        return len(done)

    def _count(self, done: Sequence[tuple[int, Op, ApplyOutcome]], report: SyncReport) -> None:
        for _, _, out in done:
            if out.outcome == "applied":
                report.pushed += 1
                self.totals.pushed += 1
            elif out.outcome == "superseded":
                report.superseded += 1
                self.totals.superseded += 1
            elif out.outcome == "manual":
                report.conflicts += 1
                self.totals.conflicts += 1
            else:
                report.duplicates += 1
                self.totals.duplicates += 1
        self.last_push_at = time.time()

    def _failed(self, local: LocalTier, entries: Sequence[Pending], exc: HybridStoreError, report: SyncReport) -> None:
        self.last_error = str(exc)
        report.failed += len(entries)
        report.errors.append(str(exc))
        del report.errors[:-20]
        self.totals.failed += len(entries)
        self._event("push", len(entries), 0.0, "error", str(exc))
        try:
            local.record_failure([seq for seq, _, _ in entries], str(exc))
        except LocalStoreError:
            pass

    def drain(self, *, max_batches: int | None = None) -> SyncReport:
        """Push everything now, in the caller's thread; stops at the first failure. For ``sync_now()``."""
        report = SyncReport()
        replayed = not len(self._journal) or self._replay_journal(report)
        if self._primary is not None:
            ok = self._circuit.state == "closed"
            if not ok:
                self._circuit.begin_probe()
                ok = self._probe()
            if ok and not replayed:
                try:
                    self._push_journal(report)
                except HybridStoreError as exc:
                    report.errors.append(str(exc))
            if ok:
                try:
                    self._push_batches(report, max_batches if max_batches is not None else 1 << 62)
                except HybridStoreError:
                    pass  # counted in the report; what was not pushed stays queued
        local = self._local()
        if local is not None:
            try:
                report.remaining = local.outbox_stats()[0] + len(self._journal)
            except LocalStoreError:
                report.remaining = len(self._journal)
        else:
            report.remaining = len(self._journal)
        return report
