"""A watchdog that enforces a client-side deadline on blocking socket I/O.

libpq has no client-side query timeout, and a black-holed peer (connection accepted, nothing ever answered)
keeps a query waiting forever: TCP keepalives and ``tcp_user_timeout`` do not fire while the peer's kernel
acknowledges our packets. The watchdog shuts the socket down when the deadline passes, which wakes the blocked
call with an error. One thread serves every guarded call, so guarding costs a heap push, not a thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time

log = logging.getLogger("hybridstore.primary")


class Watchdog:
    def __init__(self, name: str = "hybridstore-watchdog") -> None:
        # A plain lock under the condition: `arm` and `disarm` take it directly (C-level, no Python frames).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, int]] = []
        self._active: set[int] = set()
        self._ids = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.fired = 0

    def guard(self, fd: int, timeout: float) -> _Guard:
        """Shut ``fd`` down if the block (``with watchdog.guard(fd, timeout):``) runs past ``timeout`` seconds."""
        return _Guard(self, fd, timeout)

    def arm(self, fd: int, timeout: float) -> int:
        """Shut ``fd`` down in ``timeout`` seconds unless `disarm` is called first with the token returned. The
        same as `guard`, for a hot path that pairs the two in its own ``try``/``finally`` (no context manager)."""
        token = next(self._ids)
        deadline = time.monotonic() + timeout
        with self._lock:
            self._active.add(token)
            heapq.heappush(self._heap, (deadline, token, fd))
            if self._heap[0][1] == token:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        """The guarded call ended: its deadline no longer applies (its heap entry is dropped when it comes up)."""
        with self._lock:
            self._active.discard(token)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                while self._heap and self._heap[0][1] not in self._active:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token, fd = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                self._active.discard(token)
                self.fired += 1
                _shutdown(fd)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=2)


class _Guard:
    """`Watchdog.guard`'s context manager (a class: cheaper to enter and leave than a generator's)."""

    __slots__ = ("_fd", "_timeout", "_token", "_watchdog")

    def __init__(self, watchdog: Watchdog, fd: int, timeout: float) -> None:
        self._watchdog = watchdog
        self._fd = fd
        self._timeout = timeout
        self._token = -1

    def __enter__(self) -> None:
        self._token = self._watchdog.arm(self._fd, self._timeout)

    def __exit__(self, *exc: object) -> None:
        self._watchdog.disarm(self._token)


def _shutdown(fd: int) -> None:
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
        log.warning("primary did not answer in time: connection shut down")
    except OSError:
        pass
    finally:
        sock.close()
