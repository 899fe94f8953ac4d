"""RecoveryService: the store's health monitor, failure detector, recovery strategies and alerts.

One named background worker runs `check()` every ``health_interval`` seconds (faster while the primary is
suspected down) and stops when the node closes. Each check reads the primary's state from the gateway (which
runs the node's single liveness prober; the service never probes the primary itself), probes the node's own
files, raises or resolves alerts, and runs the strategies:

- ``cache_fallback``: while an outage lasts, writes are routed to SQLite (the router and the gateway's circuit
  do it; the service records the event, from the gateway's ``primary_down``, with how many writes queued);
- ``sync_retry``: when the gateway reports the primary back (``primary_up``: it has closed the circuit with a
  fresh pool, and the replayer is pushing); the event ends when the outbox has drained, with the count pushed;
- ``rebuild_local``: a corrupt or unreadable ``local.db`` (quick_check, a corruption error, a deleted
  write-ahead log) is rebuilt from the primary, else from the newest verified backup (a registered source),
  else — with no primary configured — from what can be salvaged; see `rebuild.py`;
- ``manual_intervention``: when no automatic strategy can work (local corrupt and the primary down, no
  backup; or a rebuild failed), an alert says what state the node is in and what to do. The service keeps
  checking and rebuilds by itself as soon as it can.

Time comes from the node's `TimeSource` (``monotonic``, ``wall``), so tests drive `check()` with a fake clock.
Primary-side counts (conflicts) are refreshed here, on the monitor's schedule, into the node's status board.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..events import Event
from ..model import StoredRow
from ..node.prober import ProbeResult
from ..worker import Worker
from . import probes
from .alerts import Alert, AlertBook, AlertKind, LogSink, Severity
from .health import not_available, overall_state
from .history import HISTORY_FILE, RecoveryHistory, StrategyEvent
from .rebuild import RebuildReport, RowSource, backup_pages, primary_pages, rebuild_local
from .webhook import WebhookSink

if TYPE_CHECKING:
    from ..node.core import NodeCore

log = logging.getLogger("hybridstore.recovery")
BackupSource = Callable[[], Iterable[StoredRow | tuple[str, str, Any]] | None]
SyncStatusProvider = Callable[[], Mapping[str, Any]]
SUSPECT_INTERVAL = 0.25  # seconds between checks while the primary is failing
MAX_EVENTS = 200
SYNC_STATUS_INTERVAL = 2.0  # seconds between questions to the sync engine
WRITE_PROBE_INTERVAL = 5.0  # seconds between write probes of SQLite while it works
REBUILD_RETRY_BASE = 5.0  # seconds before retrying a failed rebuild, doubling
REBUILD_RETRY_CAP = 300.0


@dataclass
class Thresholds:
    """When alerts fire. Change them at run time through ``store.recovery.thresholds``."""

    low_storage_bytes: int = 100 * 1024 * 1024  # free space in the data directory below this
    sync_failure_after: float = 300.0  # seconds the outbox has not moved while the primary answers
    conflicts_alert_at: int = 100  # unresolved conflicts
    quick_check_interval: float = 300.0  # seconds between integrity checks of local.db


class RecoveryService:
    def __init__(
        self,
        node: NodeCore,
        *,
        interval: float | None = None,
        wal_lost_at_open: bool = False,
    ) -> None:
        cfg = node.config
        self._node = node
        self._gateway = node.gateway
        self._slot = node.slot
        self._clock: Callable[[], float] = node.time.monotonic
        self._wall: Callable[[], float] = node.time.wall
        clock = self._clock
        self.interval = interval if interval is not None else cfg.health_interval
        self.auto_recover = cfg.auto_recover
        self.thresholds = Thresholds(
            cfg.low_storage_bytes, cfg.sync_failure_after, cfg.conflicts_alert_at, cfg.quick_check_interval
        )
        self.history = RecoveryHistory(node.data_dir / HISTORY_FILE)
        self.webhook = WebhookSink(cfg.alert_webhook_url) if cfg.alert_webhook_url else None
        sinks: list[Any] = [LogSink()] + ([self.webhook] if self.webhook else [])
        self.book = AlertBook(store=self.history, sinks=sinks, node_id=node.node_id, clock=self._wall)
        self.detector = node.gateway.detector
        self._transitions: list[Event] = []
        self._events_lock = threading.Lock()  # the gateway's primary_down / primary_up, handled by the next check
        self._open: dict[str, StrategyEvent] = {}
        self._events: list[StrategyEvent] = self.history.load_events(MAX_EVENTS)
        for event in self._events:  # strategies cut short by the last stop
            if event.outcome == "running":
                self._end(event, "failed", "interrupted: the store stopped while it ran")
        self._backup_source: BackupSource | None = None
        self._sync_status: SyncStatusProvider | None = None
        self._sync_cache: tuple[float, dict[str, int | None]] | None = None
        self._lock = threading.Lock()  # one check at a time
        self.worker = Worker("hybridstore-health", self._run_once, error_delay=self.interval)
        self.checks = 0
        self._status: dict[str, Any] | None = None
        self._rebuild_reason: str | None = None
        self._last_quick_check: float | None = None
        self._quick_check: dict[str, Any] = {"ok": None, "at": None, "detail": "not run yet"}
        self._seen_local_error: tuple[str | None, str | None] = (None, None)
        self._progress_at = clock()
        self._progress_mark: tuple[int, int] = (-1, -1)
        self._fallback_mark = (0, 0)
        self.last_rebuild: RebuildReport | None = None
        self._write_probe: tuple[float, ProbeResult] | None = None
        self._rebuild_failures = 0
        self._rebuild_retry_at = 0.0
        node.events.subscribe(self._on_primary, "primary_down", "primary_up")
        node.events.subscribe(self._on_circuit_open, "circuit_open")
        node.events.subscribe(self._on_backup, "backup_failed", "backup_taken")
        node.status.provide("health", self.last_status)
        if wal_lost_at_open:
            self._need_rebuild("write-ahead log deleted after a crash")

    # -- hooks for other services -----------------------------------------------------------------------------

    def register_backup_source(self, source: BackupSource) -> None:
        """``source()`` returns the rows of the newest verified backup (tombstones included), or ``None`` if
        there is none. Used to rebuild a corrupt local store while the primary is unreachable."""
        self._backup_source = source

    def register_sync_status(self, provider: SyncStatusProvider) -> None:
        """``provider()`` returns ``{"dead_letters": int, "unresolved_conflicts": int}`` (or the sync engine's
        ``{"dead_letters": int, "conflicts": {strategy: {"open": int, …}}}``). Without one, the service reads
        the node's status board (dead letters from SQLite, conflicts refreshed from the primary on its
        schedule)."""
        self._sync_status = provider
        self._sync_cache = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> bool:
        """Stop the monitor; True when its thread ended (its files are closed only then)."""
        if not self.worker.stop(timeout=30):
            return False
        if self.webhook is not None and not self.webhook.close():
            return False
        self.history.close()
        return True

    def wake(self) -> None:
        """Check now instead of at the next tick."""
        self.worker.wake()

    def _run_once(self) -> float:
        self.check()
        delay = self.interval
        if self.detector.suspect or self.detector.in_outage:
            delay = min(delay, SUSPECT_INTERVAL)
        return delay

    def _on_primary(self, event: Event) -> None:
        # Runs in the gateway's prober thread: only note it; the strategies run in the monitor's check.
        with self._events_lock:
            self._transitions.append(event)
        self.worker.wake()

    def _on_backup(self, event: Event) -> None:
        # Raised by the backup service's worker; the alert book is thread-safe and the work is a row in recovery.db.
        failed = event.kind == "backup_failed"
        self.book.update(
            "backup_failed",
            failed,
            message=f"{event.detail}; backups are retried automatically. Check free space in the backup "
            "directory and, for encrypted backups, HYBRIDSTORE_BACKUP_PASSPHRASE"
            if failed
            else "",
            severity="critical",
            details=event.data,
            resolution=event.detail,
        )

    def _on_circuit_open(self, event: Event) -> None:
        self.worker.wake()  # a call just failed: look now

    # -- public views -----------------------------------------------------------------------------------------

    def get_health_status(self, *, refresh: bool = False) -> dict[str, Any]:
        """Plain data: overall state, each component, active alerts, recent strategy events — the monitor's
        latest result, or a check made now with ``refresh=True``. Without a monitor thread (``background=False``)
        every call checks now and only observes: no alert is raised and no strategy runs."""
        running = self.worker.running
        if refresh or self._status is None or not running:
            if not refresh and self._status is not None and self._lock.locked():
                return self._status  # a check (maybe a rebuild) is running: do not wait for it to observe
            return self.check(act=running and refresh)
        return self._status

    def last_status(self) -> dict[str, Any] | None:
        return self._status

    def alerts(self, active: bool | None = None) -> list[Alert]:
        """Alert records, newest first: all, only active (``True``) or only resolved (``False``)."""
        return self.book.list(active)

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        """Strategy events, newest first."""
        return [e.to_dict() for e in reversed(self._events[-limit:])]

    def sync_counts(self, *, refresh: bool = True) -> dict[str, int | None]:
        """Dead letters and unresolved conflicts (``None``: not known). Conflicts come from the primary, asked
        through the gateway at most every few seconds, and only with ``refresh`` (the monitor's checks):
        otherwise the last counts the board holds."""
        now = self._clock()
        if self._sync_cache is not None and now - self._sync_cache[0] < SYNC_STATUS_INTERVAL:
            return self._sync_cache[1]
        counts: dict[str, int | None] = {"dead_letters": None, "unresolved_conflicts": None}
        try:
            if self._sync_status is not None:
                counts = sync_counts_from(self._sync_status())
            else:
                board = self._node.status
                if refresh:
                    board.refresh_primary_counts()
                snap = board.snapshot()
                counts = sync_counts_from({"dead_letters": snap.dead_letters, "conflicts": snap.conflicts})
        except Exception as exc:
            log.warning("sync status provider failed: %s", exc)
        if refresh:
            self._sync_cache = (now, counts)
        return counts

    # -- the check --------------------------------------------------------------------------------------------

    def check(self, *, act: bool = True) -> dict[str, Any]:
        """Probe everything once; with ``act``, also raise/resolve alerts and run strategies. Without a running
        prober (no background work), or before its first probe, ``act`` drives one round of the gateway's prober
        first."""
        with self._lock:
            if act and (not self._gateway.worker.running or self._gateway.last_probe is None):
                # Without a running prober, or before its first probe (the monitor's first check can come first):
                # never act on a primary nobody has asked yet.
                self._gateway.tick()
            self._node.status.sample_local()
            now = self._clock()
            self.checks += 1
            components: dict[str, dict[str, Any]] = {}
            if act:
                self._handle_transitions()
            components["primary"] = self._check_primary()
            components["local"] = self._check_local(now)
            components["journal"] = self._node.journal.health().to_dict()
            components["disk"] = self._check_disk(components["local"])
            components["sync"] = self._check_sync(now, components["primary"])
            counts = self.sync_counts(refresh=act)
            components["dead_letters"] = _count_component("dead letters", counts["dead_letters"], 1)
            components["conflicts"] = _count_component(
                "unresolved conflicts", counts["unresolved_conflicts"], self.thresholds.conflicts_alert_at
            )
            if act:
                self._alerts(components, counts)
                self._strategies(components)
                if self._rebuild_reason is None and components["local"]["state"] == "down":
                    components["local"] = self._check_local(now)  # it was just rebuilt
            recovering = bool(self._open.get("sync_retry") or self._open.get("rebuild_local"))
            status = {
                "overall": overall_state(components, outage=self.detector.in_outage, recovering=recovering),
                "checked_at": self._wall(),
                "node_id": self._node.node_id,
                "components": components,
                "alerts": [a.to_dict() for a in self.book.list(active=True)],
                "strategies": self.events(10),
            }
            if self.webhook is not None:
                status["webhook"] = self.webhook.stats()
            self._status = status
            return status

    def _handle_transitions(self) -> None:
        with self._events_lock:
            transitions, self._transitions = self._transitions, []
        for event in transitions:
            if event.kind == "primary_down":
                self._outage_started(event.detail)
            else:
                self._outage_ended()

    def _check_primary(self) -> dict[str, Any]:
        snap = self._gateway.snapshot()
        if not snap["configured"]:
            return {"state": "disabled", "detail": snap["detail"]}
        # Liveness, not routing: a circuit opened by a timed-out push says nothing about whether the primary
        # answers (a stalled outbox is judged against a primary that answers).
        if snap["state"] == "misconfigured" or snap["outage"]:
            state = "down"
        elif snap["live"] is False:
            state = "degraded"
        elif snap["live"] is None:
            state = "down" if snap["state"] == "down" else "unknown"  # never probed: nothing to act on yet
        else:
            state = "healthy"
        out: dict[str, Any] = {"state": state, "detail": snap["detail"], "schema": snap["schema"]}
        if "latency_ms" in snap:
            out["latency_ms"] = snap["latency_ms"]
        out["outage"] = snap["outage"]
        out["misconfigured"] = snap["state"] == "misconfigured"
        out["consecutive_failures"] = snap["consecutive_failures"]
        return out

    def _check_local(self, now: float) -> dict[str, Any]:
        slot = self._slot
        local = slot.tier
        path = self._node.data_dir / "local.db"
        if local is None:
            if self._rebuild_reason is None:
                self._need_rebuild(f"local store could not be opened: {slot.error}")
            return {"state": "down", "detail": slot.error or "not open", "path": str(path)}
        if self._rebuild_reason is None and probes.wal_missing(local):
            self._need_rebuild("write-ahead log deleted while the store was running")
        if self._rebuild_reason is None and slot.held is not None:
            self._need_rebuild(slot.held)  # e.g. SQLite reported corruption on a call (`LocalSlot.mark_failed`)
        # Any new SQLite failure (even one the replayer has since seen work again) triggers an integrity check.
        failure = (slot.error, local.last_error)
        due = self._last_quick_check is None or now - self._last_quick_check >= self.thresholds.quick_check_interval
        if self._rebuild_reason is None and (due or (any(failure) and failure != self._seen_local_error)):
            self._seen_local_error = failure
            self._last_quick_check = now
            problems = probes.quick_check(path)
            ok = problems == ["ok"]
            detail = "; ".join(p for p in " ".join(problems).splitlines()[:4] if not p.startswith("***"))
            self._quick_check = {"ok": ok, "at": self._wall(), "detail": detail[:500]}
            if not ok:
                self._need_rebuild(f"integrity check failed: {self._quick_check['detail']}")
        out: dict[str, Any] = {"path": str(path), "quick_check": dict(self._quick_check)}
        if self._rebuild_reason is not None:
            out.update(state="down", detail=self._rebuild_reason)
            return out
        # A real write, but not at every tick: a node that only reads should not write all day (flash wear).
        if slot.usable and self._write_probe is not None and now - self._write_probe[0] < WRITE_PROBE_INTERVAL:
            probe = self._write_probe[1]
        else:
            probe = probes.write_probe(local)
            self._write_probe = (now, probe)
        out["write_probe_ok"] = probe.ok
        if probe.latency_ms is not None:
            out["write_probe_ms"] = round(probe.latency_ms, 3)
        if not probe.ok:
            out.update(state="degraded", detail=probe.error, disk_full=probes.is_disk_full(probe.error))
        elif not slot.usable:
            # A write that fits an existing page still works on a full disk: the store's own failures tell.
            detail = slot.error or "recovering"
            out.update(state="degraded", detail=detail, disk_full=probes.is_disk_full(detail))
        else:
            out.update(state="healthy", detail="")
        return out

    def _need_rebuild(self, reason: str) -> None:
        if self._rebuild_reason is None:
            log.error("local store needs a rebuild: %s", reason)
            self._rebuild_reason = reason
            # New writes go to the journal (fsync'd) rather than into a file that is about to be moved aside.
            self._slot.hold(reason)

    def _check_disk(self, local: Mapping[str, Any]) -> dict[str, Any]:
        space = probes.disk_space(self._node.data_dir)
        threshold = self.thresholds.low_storage_bytes
        out: dict[str, Any] = {"path": str(self._node.data_dir), "threshold_bytes": threshold}
        full = bool(local.get("disk_full"))
        if space is None:
            out.update(state="unknown", detail="free space unknown")
        else:
            out.update(free_bytes=space.free_bytes, total_bytes=space.total_bytes)
            low = space.free_bytes < threshold
            out["state"] = "degraded" if low or full else "healthy"
            out["detail"] = "SQLite reports the disk is full" if full else ("low free space" if low else "")
        out["low"] = out["state"] == "degraded"
        return out

    def _check_sync(self, now: float, primary: Mapping[str, Any]) -> dict[str, Any]:
        snap = self._node.status.snapshot()  # sampled at the start of this check
        depth, lag = snap.outbox["depth"], snap.outbox["oldest_pending_age_s"]
        sync = self._node.sync
        totals = sync.totals
        settled = totals.pushed + totals.superseded + totals.duplicates
        mark = (depth, settled)
        if depth == 0 or settled != self._progress_mark[1] or depth < self._progress_mark[0]:
            self._progress_at = now
        self._progress_mark = mark
        attempts = settled + totals.failed
        stalled_for = now - self._progress_at
        stalled = depth > 0 and primary.get("state") == "healthy" and stalled_for >= self.thresholds.sync_failure_after
        return {
            "state": "degraded" if stalled else "healthy",
            "detail": f"outbox has not moved for {stalled_for:.0f}s: {sync.last_error}" if stalled else "",
            "outbox_depth": depth,
            "outbox_error": snap.outbox["error"],
            "lag_s": lag,
            "pushed": totals.pushed,
            "failed": totals.failed,
            "success_rate": None if attempts == 0 else round(settled / attempts, 4),
            "last_error": sync.last_error,
            "stalled": stalled,
        }

    # -- alerts -----------------------------------------------------------------------------------------------

    def _alert(
        self, kind: AlertKind, active: bool, message: str, severity: Severity = "warning", **details: Any
    ) -> None:
        self.book.update(kind, active, message=message, severity=severity, details=details)

    def _alerts(self, c: Mapping[str, Mapping[str, Any]], counts: Mapping[str, int | None]) -> None:
        primary = c["primary"]
        self._alert(
            "primary_outage",
            self.detector.in_outage and not primary.get("misconfigured"),
            f"primary PostgreSQL unreachable ({primary.get('detail')}); writes are queued locally and will be "
            "pushed when it returns",
            "critical",
        )
        self._alert(
            "primary_misconfigured",
            bool(primary.get("misconfigured")),
            f"the primary refuses this node ({primary.get('detail')}); writes are queued locally. Fix the URL "
            "(database name), the credentials (role, password) or the role's privileges",
            "critical",
        )
        self._alert(
            "local_corruption",
            self._rebuild_reason is not None,
            f"local SQLite store unusable ({self._rebuild_reason}); writes go to the journal until it is rebuilt",
            "critical",
        )
        disk = c["disk"]
        self._alert(
            "low_storage",
            bool(disk.get("low")),
            f"low storage in {disk['path']}: {disk.get('detail')} (free {disk.get('free_bytes')} bytes, "
            f"threshold {disk['threshold_bytes']}); free disk space",
            "critical" if c["local"].get("disk_full") else "warning",
            free_bytes=disk.get("free_bytes"),
        )
        sync = c["sync"]
        dead = counts.get("dead_letters") or 0
        self._alert(
            "sync_failure",
            bool(sync["stalled"]) or dead > 0,
            f"sync failing: {sync['outbox_depth']} write(s) waiting, {dead} dead letter(s); last error: "
            f"{sync['last_error']}",
            "critical",
        )
        conflicts = counts.get("unresolved_conflicts")
        self._alert(
            "conflicts_backlog",
            conflicts is not None and conflicts >= self.thresholds.conflicts_alert_at,
            f"{conflicts} unresolved conflicts (threshold {self.thresholds.conflicts_alert_at}); resolve them "
            "in the admin UI or with `hybridstore conflicts`",
        )

    # -- strategies -------------------------------------------------------------------------------------------

    def _begin(self, strategy: str, summary: str, **details: Any) -> StrategyEvent:
        event = StrategyEvent(strategy, self._wall(), summary, details=details)
        self._events.append(event)
        del self._events[:-MAX_EVENTS]
        self._open[strategy] = event
        self.history.save_event(event)
        log.info("recovery strategy %s started: %s", strategy, summary)
        return event

    def _end(self, event: StrategyEvent, outcome: Any, summary: str, **details: Any) -> None:
        event.outcome = outcome
        event.ended_at = self._wall()
        event.summary = summary
        event.details.update(details)
        if self._open.get(event.strategy) is event:
            del self._open[event.strategy]
        self.history.save_event(event)
        log.info("recovery strategy %s %s: %s", event.strategy, outcome, summary)

    def _outage_started(self, error: str) -> None:
        retry = self._open.get("sync_retry")
        if retry is not None:
            self._end(retry, "failed", "interrupted by a new outage")
        self._fallback_mark = (self._depth(), self._settled())
        self._begin("cache_fallback", f"primary unreachable ({error}); writes routed to the local store")

    def _outage_ended(self) -> None:
        fallback = self._open.get("cache_fallback")
        # The replayer may have started pushing already (its own probe can beat the confirmation): count from
        # the start of the outage, when nothing could be pushed.
        depth0, settled0 = self._fallback_mark
        settled = self._settled()
        waiting = self._depth() + settled - settled0
        queued = max(0, waiting - depth0)
        if fallback is not None:
            self._end(fallback, "succeeded", f"primary back; {queued} write(s) queued meanwhile", queued=queued)
        self._node.sync.wake()  # the gateway closed the circuit (its event woke the replayer too): push now
        self._begin(
            "sync_retry",
            f"primary back; pushing {waiting} queued write(s)",
            depth=waiting,
            pushed_before=settled0,
            started_mono=self._clock(),
        )

    def _strategies(self, c: Mapping[str, Mapping[str, Any]]) -> None:
        retry = self._open.get("sync_retry")
        if retry is not None:
            sync = c["sync"]
            pushed = self._settled() - retry.details["pushed_before"]
            # Done when the backlog of the outage is pushed (new writes may keep the outbox non-empty).
            if sync["outbox_depth"] == 0 or pushed >= retry.details["depth"]:
                secs = self._clock() - retry.details.pop("started_mono")
                self._end(retry, "succeeded", f"outbox drained: {pushed} write(s) pushed in {secs:.2f}s", pushed=pushed)
        if self._rebuild_reason is not None:
            self._try_rebuild(c)

    def _try_rebuild(self, c: Mapping[str, Mapping[str, Any]]) -> None:
        reason = self._rebuild_reason
        assert reason is not None
        if self._clock() < self._rebuild_retry_at:
            return  # the last attempt failed: back off
        rows: RowSource | None
        if self._gateway.configured and c["primary"]["state"] == "healthy":
            source, rows = "primary", primary_pages(self._gateway)
        elif self._backup_source is not None and (backup := self._safe_backup()) is not None:
            source, rows = "backup", backup_pages(backup)
        elif not self._gateway.configured:
            source, rows = "salvage only", None  # embedded: every write lives in this node's files
        else:
            self._manual(
                True,
                f"the local SQLite store is unusable ({reason}) and the primary is unreachable, with no verified "
                "backup to rebuild from. Writes are kept in the journal (data_dir/journal.log): do not delete "
                "it. The store rebuilds by itself when the primary returns; to act now, restore connectivity "
                "to the primary or register a backup, and keep the data directory intact.",
            )
            return
        if not self.auto_recover:
            self._manual(
                True,
                f"the local SQLite store is unusable ({reason}); automatic recovery is off. Stop the process, move "
                "local.db and its -wal/-shm files aside (keep them) and start again, or enable auto_recover.",
            )
            return
        event = self._begin("rebuild_local", f"rebuilding the local store from {source}: {reason}", source=source)
        try:
            report = rebuild_local(self._node, reason=reason, source=source, rows=rows)
        except Exception as exc:  # whatever the source or the disk did, record it and retry later
            self._rebuild_failures += 1
            delay = min(REBUILD_RETRY_CAP, REBUILD_RETRY_BASE * 2 ** (self._rebuild_failures - 1))
            self._rebuild_retry_at = self._clock() + delay
            self._end(event, "failed", f"rebuild from {source} failed: {exc}; next attempt in {delay:g}s")
            self._manual(
                True,
                f"rebuilding the local store from {source} failed ({exc}); writes are kept in the journal. It "
                "will be retried; if it keeps failing, check disk space and permissions of the data directory.",
            )
            return
        self.last_rebuild = report
        self._rebuild_failures = 0
        self._rebuild_retry_at = 0.0
        self._rebuild_reason = None
        self._last_quick_check = None  # check the new file at the next tick
        self._seen_local_error = (None, None)
        lost = len(report.unrecovered)
        # Alerts first, then the event: whoever waits for the event sees the alerts it caused.
        self.book.update("local_corruption", False, resolution=f"rebuilt from {source}")
        if lost:
            self._manual(
                True,
                f"the local store was rebuilt but {lost} acknowledged write(s) could not be recovered from the "
                f"broken file ({', '.join(report.moved_aside)}); see the rebuild event for their positions",
            )
        else:
            self._manual(False, "")
        self._end(
            event,
            "succeeded" if lost == 0 else "failed",
            f"rebuilt from {source} in {report.seconds:.2f}s: {report.records_from_source} record(s) loaded, "
            f"{report.requeued} queued write(s) recovered, {report.journal_replayed} journaled write(s) replayed, "
            f"{lost} acknowledged write(s) not recoverable; broken file kept in {', '.join(report.moved_aside)}",
            report=report.to_dict(),
        )

    def _manual(self, active: bool, message: str) -> None:
        if active and not self.book.is_active("manual_intervention"):
            event = self._begin("manual_intervention", message)
            self._end(event, "succeeded", message)
        self.book.update(
            "manual_intervention", active, message=message, severity="critical", resolution="recovered automatically"
        )

    def _safe_backup(self) -> Iterable[StoredRow | tuple[str, str, Any]] | None:
        assert self._backup_source is not None
        try:
            return self._backup_source()
        except Exception as exc:
            log.warning("backup source failed: %s", exc)
            return None

    def _settled(self) -> int:
        t = self._node.sync.totals
        return t.pushed + t.superseded + t.duplicates

    def _depth(self) -> int:
        depth: int = self._node.status.snapshot(fresh=True).outbox["depth"]
        return depth


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def sync_counts_from(data: Mapping[str, Any]) -> dict[str, int | None]:
    conflicts = data.get("unresolved_conflicts")
    by_strategy = data.get("conflicts")
    if conflicts is None and isinstance(by_strategy, Mapping):
        conflicts = sum(int(statuses.get("open", 0)) for statuses in by_strategy.values())
    return {"dead_letters": _int_or_none(data.get("dead_letters")), "unresolved_conflicts": _int_or_none(conflicts)}


def _count_component(what: str, count: int | None, threshold: int) -> dict[str, Any]:
    if count is None:
        return not_available(what)
    return {
        "state": "degraded" if count >= threshold else "healthy",
        "available": True,
        "count": count,
        "detail": f"{count} {what}",
    }
