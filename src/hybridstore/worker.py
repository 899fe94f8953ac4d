"""`Worker`: the one background-loop primitive of a node.

A worker is a named daemon thread that calls ``run_once()`` — one unit of work that returns how long to wait
before the next — until stopped. ``wake()`` cuts the wait short. ``stop()`` is idempotent and says whether the
thread really ended: an owner must not close what the thread uses (a database, a pipe) when it did not, and a
thread that did not stop is logged as an error, never silently ignored. An exception from ``run_once`` is
logged, counted and followed by ``error_delay``: a worker never dies silently.

Tests do not start workers: they call ``run_once()`` themselves, with the fake clocks the composition root
passed to the services, so nothing in a test waits on real time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("hybridstore.worker")
Wait = Callable[[float], None]  # block for at most this many seconds, or until woken


class Worker:
    def __init__(
        self,
        name: str,
        run_once: Callable[[], float],
        *,
        error_delay: float = 1.0,
        wait: Wait | None = None,
        wake: Callable[[], None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        """``wait``/``wake`` replace the default event-based wait (e.g. a ``select`` on a socket that a
        notification or a wake-up pipe makes readable); ``on_start`` runs once in the thread before the loop."""
        self.name = name
        self._run_once = run_once
        self.error_delay = error_delay
        self._event = threading.Event()
        self._wait = wait or self._event_wait
        self._wake = wake
        self._on_start = on_start
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.rounds = 0
        self.errors = 0
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        """Start the thread (idempotent; a stopped worker does not start again)."""
        with self._lock:
            if self._thread is not None or self._stopping.is_set():
                return
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Run the next round now instead of after the current wait."""
        self._event.set()
        if self._wake is not None:
            self._wake()

    def stop(self, timeout: float = 30.0) -> bool:
        """Ask the thread to end and wait up to ``timeout`` seconds. True when it has ended (or never ran)."""
        self._stopping.set()
        self.wake()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.error("worker %s did not stop within %gs; what it uses is left open", self.name, timeout)
            return False
        return True

    def _event_wait(self, delay: float) -> None:
        self._event.wait(delay)

    def _loop(self) -> None:
        if self._on_start is not None:
            try:
                self._on_start()
            except Exception:
                log.exception("worker %s failed to start up", self.name)
        while not self._stopping.is_set():
            self._event.clear()  # before the round, so a wake() during it is not lost
            try:
                delay = self._run_once()
            except Exception as exc:  # never die silently: log, count, go on
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("worker %s round failed", self.name)
                delay = self.error_delay
            self.rounds += 1
            if delay > 0 and not self._stopping.is_set():
                self._wait(delay)
