"""`PrimaryProber`: round trips to the primary, each bounded by a deadline of our own.

While the primary is healthy a probe is a ``SELECT 1`` on a pooled connection (cheap); once a probe has failed,
probes use a brand-new connection (the pool may hold stale connections or be backing off its reconnects). A
probe that outlives its deadline keeps running in its own daemon thread (a black-holed socket must never keep
the process from exiting); while ``max_stuck`` fresh ones are still waiting, no new one is started and each tick
counts as another failure. `close()` waits a little for the probes still running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import HybridStoreError

if TYPE_CHECKING:
    from ..tiers.primary import PrimaryTier


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    started: float  # monotonic time the probe began (a still-running probe keeps its start)
    latency_ms: float | None = None
    error: str = ""
    exc: BaseException | None = None  # what the failed probe raised, for classification


class PrimaryProber:
    def __init__(self, primary: PrimaryTier, *, timeout: float, max_stuck: int = 2) -> None:
        self._primary = primary
        self.timeout = timeout
        self._max_stuck = max_stuck
        self._inflight: list[tuple[float, Future[float]]] = []  # fresh-connection probes still waiting
        self._threads: list[threading.Thread] = []

    def probe(self, *, fresh: bool, now: float) -> ProbeResult:
        self._inflight = [(t, f) for t, f in self._inflight if not f.done()]
        self._threads = [t for t in self._threads if t.is_alive()]
        if len(self._inflight) >= self._max_stuck:
            oldest = self._inflight[0][0]
            return ProbeResult(False, oldest, error=f"no answer for {now - oldest:.1f}s")
        future = self._in_thread(self._primary.probe if fresh else self._primary.ping)
        if fresh:
            # Only fresh probes count as stuck: a pooled one may just wait behind the pool's reconnect backoff
            # after a blip, which says nothing about the primary now.
            self._inflight.append((now, future))
        try:
            latency = future.result(timeout=self.timeout)
        except FutureTimeout:
            return ProbeResult(False, now, error=f"no answer within {self.timeout:g}s")
        except HybridStoreError as exc:
            return ProbeResult(False, now, error=str(exc), exc=exc)
        except Exception as exc:  # a probe must never kill the monitor
            return ProbeResult(False, now, error=f"{type(exc).__name__}: {exc}", exc=exc)
        return ProbeResult(True, now, latency)

    def close(self, timeout: float | None = None) -> None:
        """Wait (up to ``timeout`` in all, default the probe deadline) for probes still running; they are daemon
        threads bounded by the primary tier's own deadline, so any left over end by themselves."""
        timeout = self.timeout if timeout is None else timeout
        for thread in self._threads:
            thread.join(timeout / max(1, len(self._threads)))
        self._inflight = []

    def _in_thread(self, fn: Callable[[], float]) -> Future[float]:
        future: Future[float] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        thread = threading.Thread(target=run, name="hybridstore-probe", daemon=True)
        self._threads.append(thread)
        thread.start()
        return future
