"""`WebContext`: what every route of one app shares — the store, the key store, the audit log, the jobs — and the one
way routes call the store: `WebContext.run`, in worker threads, never on the event loop.

The threads come from AnyIO's worker pool (Starlette's own), bounded by a `CapacityLimiter` of this app's:
calls stuck on a slow primary (up to ``primary_timeout`` each) fill this app's share, not the one the rest of an
application that mounts it relies on (Starlette's default limiter).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from .audit import AuditLog
from .auth import Authenticator, principal_of
from .joblog import JobLog
from .jobs import Job, JobRunner, Progress
from .keys import ApiKeyStore, KeyStore
from .problems import problem_for
from .responses import DataResponse
from .shared_keys import SharedKeyStore
from .webdb import WebDatabase

if TYPE_CHECKING:
    from ..store import HybridStore

T = TypeVar("T")
KEY_LOCKS = 64  # stripes for conditional writes (If-Match) of this node


class WebContext:
    def __init__(
        self,
        store: HybridStore,
        *,
        db: WebDatabase,
        admin_token: str | None,
        max_threads: int,
        max_jobs: int,
        max_body_bytes: int,
    ) -> None:
        self.store = store
        self.db = db
        self.local_keys = ApiKeyStore(db)
        gateway = store.node.gateway
        self.keys: KeyStore = (
            SharedKeyStore(gateway.call, self.local_keys, available=gateway.allow, origin=store.node_id)
            if gateway.configured
            else self.local_keys
        )
        self.audit = AuditLog(db, store.node.gateway)
        self.jobs = JobRunner(max_running=max_jobs, log=JobLog(db))
        self.max_threads = max_threads
        self.max_body_bytes = max_body_bytes
        self._limiter: anyio.CapacityLimiter | None = None
        self.auth = Authenticator(self.keys, admin_token=admin_token, run=self.run)
        self._admin_token_set = admin_token is not None
        self._key_locks = [threading.Lock() for _ in range(KEY_LOCKS)]
        self.draining = False  # set when the server stops taking requests: /readyz answers 503

    def web_settings(self) -> dict[str, Any]:
        """The HTTP service's own settings, for ``GET /api/v1/config`` (the admin token only as set or not)."""
        return {
            "max_threads": self.max_threads,
            "max_jobs": self.jobs.max_running,
            "max_body_bytes": self.max_body_bytes,
            "admin_token": "set" if self._admin_token_set else None,
        }

    def close(self) -> None:
        """Close ``web.db`` (after the server stopped; the store is closed by whoever opened it)."""
        self.db.close()

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker thread (see the module docstring)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_threads)
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter)

    @contextmanager
    def key_lock(self, collection: str, key: str) -> Iterator[None]:
        """Serialises conditional writes of one key on this node (check, then write)."""
        lock = self._key_locks[zlib.crc32(f"{collection}\0{key}".encode("utf-8", "surrogatepass")) % KEY_LOCKS]
        with lock:
            yield

    # -- auditing ---------------------------------------------------------------------------------------------

    async def audited(
        self, request: Request, action: str, target: str, fn: Callable[[], T], *, details: dict[str, Any] | None = None
    ) -> T:
        """Run an administrative call in a worker thread and audit it, whatever its outcome."""
        actor, client = principal_of(request).actor, _client(request)

        def call() -> T:
            try:
                result = fn()
            except BaseException as exc:
                self.audit.record(
                    actor, action, target, f"failed: {problem_for(exc).slug}", client=client, details=details
                )
                raise
            self.audit.record(actor, action, target, "ok", client=client, details=details)
            return result

        return await self.run(call)

    async def refused(
        self, request: Request, action: str, target: str, exc: BaseException, *, details: dict[str, Any] | None = None
    ) -> None:
        """Audit an administrative call refused before it started (a missing confirmation, no such target)."""
        actor, client = principal_of(request).actor, _client(request)
        outcome = f"refused: {problem_for(exc).slug}"
        await self.run(lambda: self.audit.record(actor, action, target, outcome, client=client, details=details))

    async def start_job(
        self, request: Request, kind: str, target: str, work: Callable[[Progress], Any], *, details: dict[str, Any]
    ) -> Job:
        """Start an administrative job: audited when accepted (or refused) and when it ends."""
        actor, client = principal_of(request).actor, _client(request)
        accepted = threading.Event()

        def finished(job: Job) -> None:
            accepted.wait(10)  # the entry for its start comes first, however fast the job was
            outcome = "ok" if job.state == "succeeded" else f"failed: {(job.problem or {}).get('type', '')}"
            self.audit.record(actor, kind, target, outcome, client=client, details={**details, "job": job.id})

        try:
            job = self.jobs.submit(kind, work, target=target, actor=actor, on_done=finished)
        except Exception as exc:
            await self.refused(request, kind, target, exc, details=details)
            raise

        def record_start() -> None:
            try:
                self.audit.record(actor, kind, target, "accepted", client=client, details={**details, "job": job.id})
            finally:
                accepted.set()

        await self.run(record_start)
        return job


def _client(request: Request) -> str | None:
    return None if request.client is None else request.client.host


def accepted(request: Request, job: Job) -> DataResponse:
    """202 for a job just started, with its URL in ``Location``."""
    location = str(request.url_for("job", job_id=job.id))
    return DataResponse(job.to_dict(), status_code=202, headers={"Location": location})
