"""`JobLog`: the jobs of `jobs.JobRunner` recorded in ``web.db`` (web migration 0004), so a job can be looked up
after the server restarted: a finished job keeps its result or problem; a job that was still running when the
server stopped is reported ``interrupted`` (its work may have been partly done: look at what it acts on).

Rows are written when a job starts and when it ends (progress lives in memory while it runs); the newest `KEEP`
are kept.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from .webdb import WebDatabase

if TYPE_CHECKING:
    from .jobs import Job

log = logging.getLogger("hybridstore.web.jobs")
KEEP = 1000
_COLUMNS = "id, kind, target, actor, state, created_at, finished_at, progress, result, problem"


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


class JobLog:
    def __init__(self, db: WebDatabase, *, keep: int = KEEP) -> None:
        self._db = db
        self._keep = keep

    def interrupt_running(self, at: float) -> int:
        """Mark the jobs a previous server left running as ``interrupted``; how many there were."""
        return self._db.execute("UPDATE jobs SET state = 'interrupted', finished_at = ? WHERE state = 'running'", (at,))

    def save(self, job: Job) -> None:
        """Record the job as it is now (a failure is logged: the job itself goes on)."""
        try:
            self._db.execute(
                f"INSERT OR REPLACE INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.kind,
                    job.target,
                    job.actor,
                    job.state,
                    job.created_at,
                    job.finished_at,
                    _json(job.progress) or "{}",
                    _json(job.result),
                    _json(job.problem),
                ),
            )
            if job.state != "running":
                self._db.execute(
                    "DELETE FROM jobs WHERE id NOT IN (SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?)",
                    (self._keep,),
                )
        except sqlite3.Error as exc:
            log.error("job %s not recorded in web.db: %s", job.id, exc)

    def get(self, job_id: str) -> Job | None:
        rows = self._db.query(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def newest(self, limit: int) -> list[Job]:
        rows = self._db.query(f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,))
        return [_job(r) for r in rows]


def _job(row: tuple[Any, ...]) -> Job:
    from .jobs import Job

    return Job(
        id=row[0],
        kind=row[1],
        target=row[2],
        actor=row[3],
        created_at=row[5],
        state=row[4],
        finished_at=row[6],
        progress=json.loads(row[7] or "{}"),
        result=None if row[8] is None else json.loads(row[8]),
        problem=None if row[9] is None else json.loads(row[9]),
    )
