"""Change puller: keeps the local copy up to date with the primary's change feed.

`ChangePuller` owns one background worker. It pages through the primary's change feed (`PrimaryTier.feed_page`)
from a cursor kept in SQLite — saved in the same transaction as the rows it covers, so a crash never skips or
half-applies a page — and adopts each row unless the key has pending local ops (those reach the primary first
and settle the key when they do). It wakes on the primary's change notifications (LISTEN, real time) and polls
every ``poll_interval`` seconds anyway (batch mode: covers a missed notification, a dropped LISTEN connection,
or a transaction-mode pooler where LISTEN does not work — unless a session address is configured for LISTEN:
`PrimaryTier.can_listen`). Every primary call goes through the gateway; while
its circuit is open the puller waits (the gateway probes and closes the circuit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .. import faults
from ..errors import LocalStoreError, PrimaryRejectedError, PrimaryUnavailableError
from ..worker import Worker

if TYPE_CHECKING:
    import psycopg

    from ..node.gateway import PrimaryGateway
    from ..node.slot import LocalSlot
    from ..tiers.local import LocalTier

log = logging.getLogger("hybridstore.sync")
CURSOR_META = "pull_cursor"
Progress = Callable[[int, int | None], None]  # (rows done, rows in total if known)
HELD_PATIENCE = 2.0  # seconds an explicit pull waits for changes held back behind a running transaction


class ChangePuller:
    def __init__(
        self,
        *,
        slot: LocalSlot,
        gateway: PrimaryGateway,
        observe: Callable[[str], None],
        poll_interval: float = 5.0,
        page_size: int = 5000,
        listen: bool = True,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._slot = slot
        self._gateway = gateway
        self._primary = gateway.tier  # for facts only (pooled, application name); calls go through the gateway
        self._observe = observe
        self._wall = wall
        self._sleep = sleep
        self.poll_interval = poll_interval
        self.page_size = page_size
        self._listen_enabled = listen  # and the primary tier can (`can_listen`, known once its mode is settled)
        self._listen: psycopg.Connection[Any] | None = None
        self._pull_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._retry = 0.0
        self._wait_on_listen = False
        self._reported: str | None = None  # the last error logged, so a lasting one is logged once
        self.worker = Worker(
            "hybridstore-puller", self.run_once, wait=self._worker_wait, wake=self._write_wake, error_delay=1.0
        )
        self._fetcher: ThreadPoolExecutor | None = None
        self.state = "idle"
        self.pulled = 0
        self.last_pull_at: float | None = None
        self.last_error: str | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=200)
        self.listening = False
        self.held_back = False  # committed changes wait behind a running transaction: look again soon

    # -- worker -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.worker.start()

    def wake(self) -> None:
        self.worker.wake()

    def _write_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def stop(self) -> bool:
        """Stop the worker; True when it ended. The LISTEN connection, fetch pool and wake-up pipe are closed
        only then: never under a thread that may still read them."""
        if not self.worker.stop(timeout=15):
            return False
        self._close_listen()
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=True)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        return True

    def _worker_wait(self, delay: float) -> None:
        self._wait(self._listen if self._wait_on_listen else None, delay)

    def run_once(self) -> float:
        """One round: pull what is new; returns how long to wait (a notification or `wake()` ends it sooner)."""
        self._wait_on_listen = False
        if not self._gateway.allow() or self._slot.writable() is None:
            self._close_listen()
            return 0.25
        if not (self._listen_enabled and self._primary.can_listen):
            self._close_listen()  # e.g. a transaction pooler found under a LISTEN connection
        elif self._listen is None:
            self._open_listen()
        try:
            self.pull()
        except PrimaryUnavailableError as exc:
            self._close_listen()
            self._failed(exc, "primary unavailable")
            return 0.05
        except PrimaryRejectedError as exc:  # the primary refuses the feed query itself: retrying at once won't help
            self._failed(exc, "the primary refused the change feed query")
            return self.poll_interval
        except LocalStoreError as exc:
            self._failed(exc, "could not apply pulled changes to SQLite")
            return 1.0
        if self._reported is not None:
            log.info("change feed works again")
            self._reported = None
        if self.held_back:  # visible in a moment: poll fast, backing off, until they are
            self._retry = min(0.25, self._retry * 2) if self._retry else 0.002
            return self._retry
        self._retry = 0.0
        self._wait_on_listen = self._listen is not None
        return self.poll_interval if self._listen is not None else min(self.poll_interval, 1.0)

    def _failed(self, exc: Exception, what: str) -> None:
        self.last_error = str(exc)
        if self._reported != self.last_error:  # a lasting failure is logged once, not every round
            log.warning("change puller: %s: %s", what, exc)
            self._reported = self.last_error

    def _wait(self, conn: psycopg.Connection[Any] | None, timeout: float) -> None:
        """Sleep until another node's change notification, a wake-up, or ``timeout``. Notifications of this
        node's own writes (their payload is our application name) do not wake it: those rows are local already."""
        deadline = time.monotonic() + timeout
        while True:
            fds = [self._wake_r] + ([conn.pgconn.socket] if conn is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
            except (OSError, ValueError):
                self._close_listen()
                return
            if not ready:
                return
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._wake_r, 4096)
                return
            assert conn is not None
            try:
                conn.pgconn.consume_input()
                foreign = False
                while (note := conn.pgconn.notifies()) is not None:
                    foreign = foreign or note.extra.decode(errors="replace") != self._primary.application_name
            except Exception as exc:  # the LISTEN connection dropped: poll until it is back
                log.warning("change notifications lost, polling until LISTEN is back: %s", exc)
                self._close_listen()
                return
            if foreign:
                return

    def _open_listen(self) -> None:
        try:
            self._listen = self._gateway.call(lambda p: p.listen_connection())
            self.listening = True
        except Exception as exc:
            if self._reported != f"listen: {exc}":
                log.warning("cannot listen for change notifications, polling every %gs: %s", self.poll_interval, exc)
                self._reported = f"listen: {exc}"
            self._listen = None

    def _close_listen(self) -> None:
        conn, self._listen = self._listen, None
        self.listening = False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- work -------------------------------------------------------------------------------------------------

    def pull(self, *, full: bool = False, progress: Progress | None = None) -> int:
        """Pull every change after the saved cursor (``full``: the whole primary, rebuilding the local copy and
        keeping pending local ops); returns how many rows were applied. Raises `PrimaryUnavailableError`."""
        local = self._slot.writable()
        if local is None:
            return 0
        with self._pull_lock:
            self.state = "pulling"
            started = time.perf_counter()
            total: int | None = None
            try:
                if full:
                    total = self._gateway.call(lambda p: p.count_records())
                    local.begin_resync()
                    cursor: Any = 0
                else:
                    saved = local.meta_get(CURSOR_META)
                    cursor = tuple(json.loads(saved)) if saved else 0
                applied = seen = 0
                page = self._fetch(cursor)
                while True:
                    changes, held = page.result()
                    if not changes:
                        self.held_back = held
                        break
                    cursor = (changes[-1][7], changes[-1][0], changes[-1][1])
                    # Read the next page while this one is written to SQLite.
                    page = self._fetch(cursor) if len(changes) >= self.page_size else _done([])
                    applied += self._apply(local, changes, full)
                    seen += len(changes)
                    if progress is not None:
                        progress(seen, total)
                if full:
                    removed = local.end_resync()
                    log.info("full resync: %d row(s) from the primary, %d local row(s) dropped", seen, removed)
            finally:
                self.state = "idle"
            self.pulled += applied
            self.last_pull_at = self._wall()
            if seen:
                self.history.append(
                    {
                        "at": self.last_pull_at,
                        "kind": "resync" if full else "pull",
                        "count": seen,
                        "applied": applied,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "outcome": "ok",
                        "error": None,
                    }
                )
            return applied

    def pull_now(self, *, full: bool = False, progress: Progress | None = None, patience: float = HELD_PATIENCE) -> int:
        """`pull`, for someone waiting on it (``sync_now``): changes committed before the call but held back behind
        a transaction still running on the server (the feed never reads past one) are waited for, pulling again
        with a backoff for up to ``patience`` seconds of sleep in all; after that they come with a later pull."""
        applied = self.pull(full=full, progress=progress)
        delay, slept = 0.005, 0.0
        while self.held_back and slept < patience:
            self._sleep(delay)
            slept += delay
            delay = min(0.2, delay * 2)
            applied += self.pull(progress=progress)
        if self.held_back:
            log.info("changes on the primary held back behind a transaction running there: a later pull brings them")
        return applied

    def _fetch(self, cursor: Any) -> Future[tuple[list[tuple[Any, ...]], bool]]:
        if self._fetcher is None:
            self._fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybridstore-pull")
        return self._fetcher.submit(self._feed_page, cursor)

    def _feed_page(self, cursor: Any) -> tuple[list[tuple[Any, ...]], bool]:
        return self._gateway.call(lambda p: p.feed_page(cursor, self.page_size))

    def _apply(self, local: LocalTier, rows: list[tuple[Any, ...]], full: bool) -> int:
        self._observe(max(r[4] for r in rows))
        last = rows[-1]
        if faults.active and faults.PULLER_SKIP_PAGE in faults.active and faults.due(faults.PULLER_SKIP_PAGE):
            rows = []  # test-only: a broken puller skips the page (see hybridstore.faults)
        return local.apply_pulled(rows, json.dumps([last[7], last[0], last[1]]), force=full)


def _done(value: list[tuple[Any, ...]]) -> Future[tuple[list[tuple[Any, ...]], bool]]:
    future: Future[tuple[list[tuple[Any, ...]], bool]] = Future()
    future.set_result((value, False))
    return future
