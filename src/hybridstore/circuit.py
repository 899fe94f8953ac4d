"""Circuit breaker for the primary. Pure state machine: no I/O, injected clock.

closed ──(threshold consecutive failures, or one timeout)──► open ──(reset timeout elapsed)──► half-open
half-open ──(probe succeeds)──► closed;  half-open ──(probe fails)──► open, with a doubled reset timeout.

Foreground calls only ever ask `allow()`: while the circuit is not closed they go straight to the local tier and
never wait on the primary. Probing is the background replayer's job (`probe_due()` hands out one probe at a
time).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

CircuitState = Literal["closed", "open", "half_open"]
log = logging.getLogger("hybridstore.circuit")


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 2,
        reset_timeout: float = 0.5,
        max_reset_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.base_reset_timeout = reset_timeout
        self.max_reset_timeout = max_reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._state: CircuitState = "closed"
        self._failures = 0
        self._reset_timeout = reset_timeout
        self._opened_at = 0.0
        self.opened_count = 0
        self.last_change = clock()
        self._changes: list[tuple[CircuitState, CircuitState]] = []
        self._listeners: list[Callable[[CircuitState, CircuitState], None]] = []

    def subscribe(self, listener: Callable[[CircuitState, CircuitState], None]) -> None:
        """Call ``listener(old, new)`` on every state change, after the change and outside the breaker's lock.
        Listeners must be quick and must not raise (an exception is logged and swallowed)."""
        self._listeners.append(listener)

    @property
    def state(self) -> CircuitState:
        return self._state

    def allow(self) -> bool:
        """May a foreground call use the primary now?"""
        return self._state == "closed"

    def probe_due(self) -> bool:
        """True (once) when the open circuit may be probed; the caller must report the probe's outcome."""
        with self._lock:
            due = self._state == "open" and self._clock() - self._opened_at >= self._reset_timeout
            if due:
                self._set("half_open")
        self._notify()
        return due

    def begin_probe(self) -> None:
        """Move to half-open now, whatever the reset timeout (an explicit sync request probes at once)."""
        with self._lock:
            if self._state != "closed":
                self._set("half_open")
        self._notify()

    def seconds_until_probe(self) -> float:
        with self._lock:
            if self._state != "open":
                return 0.0
            return max(0.0, self._opened_at + self._reset_timeout - self._clock())

    def record_success(self) -> None:
        if self._state == "closed" and not self._failures:
            # Nothing to change (closed implies the base reset timeout: only a success closes the circuit, and it
            # resets it). Read without the lock: a failure recorded meanwhile simply counts as after this success.
            return
        with self._lock:
            self._failures = 0
            self._reset_timeout = self.base_reset_timeout
            if self._state != "closed":
                self._set("closed")
        self._notify()

    def record_failure(self, *, timeout: bool = False) -> None:
        with self._lock:
            if self._state == "half_open":
                self._reset_timeout = min(self._reset_timeout * 2, self.max_reset_timeout)
                self._open()
            elif self._state == "closed":
                self._failures += 1
                if timeout or self._failures >= self.failure_threshold:
                    self._open()
        self._notify()

    def trip(self) -> None:
        """Open the circuit now (e.g. the store was opened while the primary is known to be down)."""
        with self._lock:
            if self._state == "closed":
                self._open()
        self._notify()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self.opened_count += 1
        self._set("open")

    def _set(self, state: CircuitState) -> None:
        old, self._state = self._state, state
        self.last_change = self._clock()
        if self._listeners:
            self._changes.append((old, state))

    def _notify(self) -> None:
        if not self._changes:
            return
        with self._lock:
            changes, self._changes = self._changes, []
        for old, new in changes:
            for listener in list(self._listeners):
                try:
                    listener(old, new)
                except Exception:
                    log.exception("circuit listener failed")

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "consecutive_failures": self._failures,
            "reset_timeout_s": self._reset_timeout,
            "times_opened": self.opened_count,
        }
