"""Keeping the primary's bookkeeping bounded: this node's settled watermark, and retention.

The primary records what makes a replay detectable (migration 0008): the record rows, a mark per (key, node)
when a node's op lost or its row was overwritten by another node, and each node's **settled watermark** — every op
of the node with an HLC below it is settled and out of its outbox and journal for good. A replay below the
watermark is a duplicate whatever was pruned since, so marks below it can go, and so can everything older than
the retention.

The watermark is the smallest of: the oldest HLC still in the journal, the oldest in the outbox (read in that
order: an op moves from the journal to the outbox, never back), and a stamp ``SAFETY`` before now on the wall
clock — an op is stamped before it is sent or queued (a write-through that fails ambiguously is queued with its
stamp), and that takes far less than ``SAFETY``; an HLC is never behind the wall clock of the moment it was made.

`Housekeeper` is driven by the replayer's rounds: it reports the watermark every ``report_interval`` and prunes
every ``prune_interval`` (one node at a time: the primary holds an advisory lock while one prunes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import HybridStoreError, LocalStoreError

if TYPE_CHECKING:
    from ..node.gateway import PrimaryGateway
    from ..node.slot import LocalSlot
    from ..tiers.journal import JournalTier

log = logging.getLogger("hybridstore.sync")
SAFETY = 600.0  # seconds: far longer than any op waits between its stamp and its queueing


@dataclass(frozen=True)
class Retention:
    """How long the primary keeps its bookkeeping (documented defaults; docs/sync.md)."""

    ledger_days: float = 30.0  # settled marks (and the old applied_ops ledger); marks under a watermark go at once
    conflict_days: float = 90.0  # resolved conflicts (open ones are kept until resolved)
    audit_days: float = 365.0  # the audit log
    prune_interval: float = 3600.0  # seconds between prune rounds of this node
    report_interval: float = 60.0  # seconds between watermark reports of this node
    batch: int = 10_000  # rows deleted per table per round, at most


def settled_watermark(journal_min: str | None, outbox_min: str | None, wall: float, node: str) -> str:
    """The watermark to report: below the oldest op still pending, and ``SAFETY`` seconds before ``wall``."""
    floor = f"{max(0, int((wall - SAFETY) * 1000)):012x}.000000.{node}"
    return min(s for s in (journal_min, outbox_min, floor) if s is not None)


class Housekeeper:
    """Reports this node's settled watermark and runs the retention, each on its own schedule."""

    def __init__(
        self,
        *,
        node_id: str,
        slot: LocalSlot,
        journal: JournalTier,
        gateway: PrimaryGateway,
        retention: Retention | None = None,
        clock: Callable[[], float],
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: monotonic seconds, for the schedules. ``wall``: the wall clock the node's HLC follows (not a
        test's fake one: the watermark is compared with HLC stamps)."""
        self.node_id = node_id
        self.retention = retention or Retention()
        self._slot = slot
        self._journal = journal
        self._gateway = gateway
        self._wall = wall
        self._clock = clock
        # Not at start-up (a node opening touches the primary as little as it can): after the first interval.
        self._report_at = clock() + self.retention.report_interval
        self._prune_at = clock() + self.retention.prune_interval
        self.last_reported: str | None = None
        self.last_pruned: dict[str, int] = {}

    def due(self) -> bool:
        now = self._clock()
        return now >= self._report_at or now >= self._prune_at

    def run(self) -> None:
        """Do what is due; a failure waits for the next round (nothing here is urgent)."""
        now = self._clock()
        if now >= self._report_at:
            self._report_at = now + self.retention.report_interval
            self.report()
        if now >= self._prune_at:
            self._prune_at = now + self.retention.prune_interval
            self.prune()

    def watermark(self) -> str | None:
        """This node's watermark now, or ``None`` if the outbox cannot be read."""
        journal = self._journal.entries()  # first: an op leaves the journal only once it is in the outbox
        journal_min = min((op.hlc for op in journal if op.origin == self.node_id), default=None)
        local = self._slot.tier if self._slot.held is None else None
        if local is None:
            return None
        try:
            outbox_min = local.oldest_pending_hlc(self.node_id)
        except LocalStoreError:
            return None
        return settled_watermark(journal_min, outbox_min, self._wall(), self.node_id)

    def report(self) -> str | None:
        """Send the watermark to the primary; returns it (``None`` if nothing was sent)."""
        mark = self.watermark()
        if mark is None or not self._gateway.configured or not self._gateway.allow():
            return None
        try:
            self._gateway.call(lambda p: p.report_settled(self.node_id, mark))
            self._gateway.call(lambda p: p.compact_counts())  # on the same schedule: cheap, and keeps counts cheap
        except HybridStoreError as exc:
            log.debug("settled watermark not reported: %s", exc)
            return None
        self.last_reported = mark
        return mark

    def prune(self) -> dict[str, int]:
        """Run one round of retention on the primary; returns rows deleted per table (``{}``: another node was
        pruning, or the primary could not be reached)."""
        if not self._gateway.configured or not self._gateway.allow():
            return {}
        r = self.retention
        try:
            done = self._gateway.call(
                lambda p: p.prune(
                    ledger_days=r.ledger_days, conflict_days=r.conflict_days, audit_days=r.audit_days, limit=r.batch
                )
            )
        except HybridStoreError as exc:
            log.debug("retention round failed: %s", exc)
            return {}
        if any(done.values()):
            log.info("retention on the primary: %s", ", ".join(f"{k} {v}" for k, v in done.items() if v))
        self.last_pruned = done
        return done
