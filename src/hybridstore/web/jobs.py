"""Long work started over HTTP (sync, backup, restore) runs as a job: the request answers 202 with the job's id at
once, and ``GET /api/v1/jobs/{id}`` shows its progress, then its result or its problem.

Each job runs in a thread of its own (``hybridstore-web-job-<id>``, not a daemon: a restore is never cut off by
the interpreter exiting), at most ``max_running`` at a time (more: 429). Jobs are kept in memory (the last
``keep``) and, given a `joblog.JobLog`, recorded in ``web.db`` when they start and end: after a restart a job is
still found, and one that was running when the server stopped is ``interrupted``. `wait` lets the server finish
running jobs before it closes the store.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .problems import WebError, problem_for

if TYPE_CHECKING:
    from .joblog import JobLog

logger = logging.getLogger("hybridstore.web.jobs")
JobState = Literal["running", "succeeded", "failed", "interrupted"]
Progress = Callable[[str, int, int | None], None]  # (phase, done, total if known)


@dataclass
class Job:
    id: str
    kind: str
    target: str
    actor: str
    created_at: float
    state: JobState = "running"
    finished_at: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    problem: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "actor": self.actor,
            "state": self.state,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "progress": dict(self.progress),
            "result": self.result,
            "problem": self.problem,
        }


class JobRunner:
    """See the module docstring."""

    def __init__(
        self,
        *,
        max_running: int = 4,
        keep: int = 200,
        wall: Callable[[], float] = time.time,
        log: JobLog | None = None,
    ) -> None:
        """``log``: where jobs are recorded so they outlive the server (`joblog.JobLog`); jobs it holds as still
        running are from a server that stopped: they are marked ``interrupted`` now."""
        self.max_running = max_running
        self._keep = keep
        self._wall = wall
        self._log = log
        if log is not None:
            interrupted = log.interrupt_running(wall())
            if interrupted:
                logger.warning("%d job(s) were running when the server stopped: marked interrupted", interrupted)
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._threads: dict[str, threading.Thread] = {}
        self._seq = itertools.count(1)

    def submit(
        self,
        kind: str,
        work: Callable[[Progress], Any],
        *,
        target: str = "",
        actor: str = "",
        on_done: Callable[[Job], None] | None = None,
    ) -> Job:
        """Start ``work(progress)`` in a thread; its return value (plain data) becomes the job's result."""
        with self._lock:
            running = sum(1 for t in self._threads.values() if t.is_alive())
            if running >= self.max_running:
                detail = f"{running} jobs are running; try again when one ends"
                raise WebError(429, "too-many-jobs", "Too many jobs", detail, {"Retry-After": "5"})
            job = Job(f"{next(self._seq)}-{secrets.token_hex(4)}", kind, target, actor, self._wall())
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].state == "running":
                    break
                self._jobs.popitem(last=False)
            thread = threading.Thread(target=self._run, args=(job, work, on_done), name=f"hybridstore-web-job-{job.id}")
            self._threads[job.id] = thread
        if self._log is not None:
            self._log.save(job)
        thread.start()
        return job

    def _run(self, job: Job, work: Callable[[Progress], Any], on_done: Callable[[Job], None] | None) -> None:
        def progress(phase: str, done: int, total: int | None = None) -> None:
            job.progress = {"phase": phase, "done": done, "total": total}

        state: JobState = "succeeded"
        try:
            job.result = work(progress)
        except BaseException as exc:
            problem = problem_for(exc)
            if problem.slug == "internal":
                logger.exception("job %s (%s %s) failed", job.id, job.kind, job.target)
            job.problem = problem.to_dict()
            state = "failed"
        job.finished_at = self._wall()
        if self._log is not None:  # recorded first: whoever sees the end here finds it recorded too
            self._log.save(dataclasses.replace(job, state=state))
        job.state = state  # last: a client that sees the end sees everything else too
        try:
            if on_done is not None:
                on_done(job)  # before the job stops counting as running: `wait` covers its audit entry too
        except Exception:
            logger.exception("job %s: its completion hook failed", job.id)
        finally:
            with self._lock:
                self._threads.pop(job.id, None)

    def get(self, job_id: str) -> Job | None:
        """A job of this server, else one recorded by an earlier one (with a log)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None and self._log is not None:
            job = self._log.get(job_id)
        return job

    def list(self) -> list[Job]:
        """Newest first: this server's jobs, and (with a log) the recorded ones of earlier servers."""
        with self._lock:
            mine = list(reversed(self._jobs.values()))
        if self._log is None:
            return mine
        ids = {j.id for j in mine}
        older = [j for j in self._log.newest(self._keep) if j.id not in ids]
        return sorted([*mine, *older], key=lambda j: j.created_at, reverse=True)[: max(self._keep, len(mine))]

    def running(self) -> int:
        with self._lock:
            return sum(1 for t in self._threads.values() if t.is_alive())

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every running job (at most ``timeout`` seconds in all); True if none is left running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [t for t in self._threads.values() if t.is_alive()]
            if not threads:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            threads[0].join(remaining)
