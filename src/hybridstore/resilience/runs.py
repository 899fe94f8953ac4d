"""The history of resilience runs: each run (its options, status, progress and report) kept as one JSON file in a
directory, so runs and their reports outlive the process that made them; and the monthly schedule (off by default).

A run's ``status`` is ``running``, then ``passed`` (every scenario passed), ``failed`` (one did not) or ``error``
(the run could not be made: no sandbox, an unexpected exception; its ``error`` says why). A run that was
``running`` when its process died is found as ``error`` on the next start.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, HybridStoreError
from ..worker import Worker
from .runner import RunOptions, run

log = logging.getLogger("hybridstore.resilience")
Status = Literal["running", "passed", "failed", "error"]
SCHEDULE_ENV = "HYBRIDSTORE_RESILIENCE_EVERY_DAYS"  # the scheduled run's period in days; unset or 0: off
MONTH_DAYS = 30.0


@dataclass
class RunRecord:
    id: str
    status: Status
    options: dict[str, Any]
    started_at: float
    progress: dict[str, Any] = field(default_factory=lambda: {"scenario": None, "done": 0, "total": 0})
    finished_at: float | None = None
    trigger: str = "manual"  # or "schedule"
    error: str | None = None
    report: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """Everything but the report (the list of runs)."""
        data = asdict(self)
        data.pop("report")
        return data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunBook:
    """See the module docstring. One run at a time (a second one is refused while one runs). Thread-safe."""

    def __init__(self, directory: Path, *, keep: int = 100) -> None:
        self.directory = directory
        self.keep = keep
        self._lock = threading.Lock()
        self._runs: dict[str, RunRecord] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._load()

    def _load(self) -> None:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            try:
                rec = RunRecord(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("unreadable resilience run %s: %s", path, exc)
                continue
            if rec.status == "running":  # its process died with it
                rec.status, rec.error = "error", "the process running it ended before it finished"
                self._save(rec)
            self._runs[rec.id] = rec

    def _save(self, rec: RunRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{rec.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec.to_dict(), default=str), encoding="utf-8")
        os.replace(tmp, path)

    def list(self) -> list[RunRecord]:
        """Newest first."""
        with self._lock:
            return sorted(self._runs.values(), key=lambda r: r.started_at, reverse=True)

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(run_id)

    def running(self) -> RunRecord | None:
        with self._lock:
            return next((r for r in self._runs.values() if r.status == "running"), None)

    def begin(self, options: RunOptions, *, trigger: str = "manual") -> RunRecord:
        """Register a new run (checked options); `ConfigError` if one is running already."""
        options.check()
        with self._lock:
            if any(r.status == "running" for r in self._runs.values()):
                raise ConfigError("a resilience run is in progress already; wait for it to end")
            rec = RunRecord(
                f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}",
                "running",
                {"scenarios": list(options.scenarios), "duration": options.duration, "seed": options.seed},
                time.time(),
                trigger=trigger,
            )
            rec.progress["total"] = len(options.scenarios)
            self._runs[rec.id] = rec
            self._cancels[rec.id] = options.cancel
            self._prune()
        self._save(rec)
        return rec

    def execute(
        self, rec: RunRecord, options: RunOptions, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> RunRecord:
        """Run it (in the caller's thread), keeping its progress and, at the end, its report and status."""

        def step(p: dict[str, Any]) -> None:
            rec.progress = {"scenario": p["scenario"], "done": p["done"], "total": p["total"], "step": p["step"]}
            if progress is not None:
                progress(p)

        try:
            report = run(options, progress=step)
        except (HybridStoreError, OSError) as exc:
            rec.error, rec.status = f"{type(exc).__name__}: {exc}", "error"
        except Exception as exc:  # never leave a run "running" for ever
            log.exception("resilience run %s failed", rec.id)
            rec.error, rec.status = f"{type(exc).__name__}: {exc}", "error"
        else:
            rec.report = report
            rec.status = "passed" if report["passed"] else "failed"
            if report.get("cancelled"):
                rec.error, rec.status = "cancelled: the service stopped", "error"
        rec.finished_at = time.time()
        with self._lock:
            self._cancels.pop(rec.id, None)
        self._save(rec)
        return rec

    def cancel_all(self) -> None:
        """Ask every running run to stop as soon as it can (the service is stopping)."""
        with self._lock:
            events = list(self._cancels.values())
        for event in events:
            event.set()

    def _prune(self) -> None:
        done = sorted((r for r in self._runs.values() if r.status != "running"), key=lambda r: r.started_at)
        for rec in done[: max(0, len(self._runs) - self.keep)]:
            self._runs.pop(rec.id, None)
            (self.directory / f"{rec.id}.json").unlink(missing_ok=True)


def schedule_days(env: dict[str, str] | None = None) -> float:
    """The scheduled run's period in days from ``HYBRIDSTORE_RESILIENCE_EVERY_DAYS`` (0: off, the default)."""
    raw = (os.environ if env is None else env).get(SCHEDULE_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        days = float(raw)
    except ValueError:
        raise ConfigError(f"{SCHEDULE_ENV} must be a number of days (30: monthly; 0: off), not {raw!r}") from None
    if days < 0:
        raise ConfigError(f"{SCHEDULE_ENV} must be >= 0")
    return days


def next_due(last_started: float | None, now: float, every_days: float) -> float:
    """Seconds until the next scheduled run: the first one a period after the schedule starts (``last_started``
    is then the schedule's start), each next one a period after the previous run started."""
    period = every_days * 86400
    start = now if last_started is None else last_started
    return max(0.0, start + period - now)


class Schedule:
    """Runs every scenario every ``every_days`` (the original maintenance plan: monthly), with ``make_options``'s
    options, in a named worker thread. Off unless started."""

    def __init__(
        self,
        book: RunBook,
        make_options: Callable[[], RunOptions],
        *,
        every_days: float = MONTH_DAYS,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self.make_options = make_options
        self.every_days = every_days
        self._wall = wall
        self._since = wall()
        self.worker = Worker("hybridstore-resilience-schedule", self.run_once, error_delay=3600.0)

    def last_scheduled(self) -> float | None:
        runs = [r.started_at for r in self.book.list() if r.trigger == "schedule"]
        return max(runs) if runs else None

    def run_once(self) -> float:
        now = self._wall()
        wait = next_due(self.last_scheduled() or self._since, now, self.every_days)
        if wait > 0:
            return min(wait, 3600.0)
        if self.book.running() is None:
            options = self.make_options()
            self.book.execute(self.book.begin(options, trigger="schedule"), options)
        return 60.0

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> bool:
        return self.worker.stop(timeout=5)
