"""Hybrid logical clock (HLC): timestamps that follow wall time yet are totally ordered.

A timestamp is ``(wall_ms, counter, node)``. Its text form ``"{wall_ms:012x}.{counter:06x}.{node}"`` sorts
byte-wise in the same order as the tuple, so SQLite and PostgreSQL (``COLLATE "C"``) compare them correctly.
Ties between nodes are broken by node id, which makes "last writer wins" deterministic everywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from .errors import ValidationError

_MAX_COUNTER = 16**6 - 1
# A remote stamp further ahead of our wall clock than this is refused rather than adopted, so one node with a
# broken clock cannot drag every other clock into the future.
MAX_DRIFT_MS = 24 * 3600 * 1000


def stamp_after(stamp: str, node: str) -> str:
    """The smallest stamp of ``node`` that orders after ``stamp`` (used to put a local write after a value the
    clock refused to adopt: see `HybridClock.observe`)."""
    ts = Timestamp.decode(stamp)
    wall, counter = (ts.wall, ts.counter + 1) if ts.counter < _MAX_COUNTER else (ts.wall + 1, 0)
    return f"{wall:012x}.{counter:06x}.{node}"


def beyond_drift(stamp: str, now_ms: int | None = None) -> bool:
    """Is ``stamp`` further in the future than the drift guard allows (a node with a broken clock wrote it)?"""
    return Timestamp.decode(stamp).wall > (wall_ms() if now_ms is None else now_ms) + MAX_DRIFT_MS


def wall_ms() -> int:
    """Current wall-clock time in milliseconds."""
    return time.time_ns() // 1_000_000


class Timestamp(NamedTuple):
    wall: int
    counter: int
    node: str

    def encode(self) -> str:
        return f"{self.wall:012x}.{self.counter:06x}.{self.node}"

    @classmethod
    def decode(cls, text: str) -> Timestamp:
        try:
            wall, counter, node = text.split(".", 2)
            if len(wall) != 12 or len(counter) != 6 or not node:
                raise ValueError(text)
            return cls(int(wall, 16), int(counter, 16), node)
        except ValueError as exc:
            raise ValidationError(f"not an HLC timestamp: {text!r}") from exc


class HybridClock:
    """Thread-safe HLC for one node. ``now()`` is strictly increasing; ``observe()`` merges a remote stamp."""

    def __init__(self, node: str, *, clock: Callable[[], int] = wall_ms, last: str | None = None) -> None:
        self.node = node
        self._clock = clock
        self._lock = threading.Lock()
        self._wall = 0
        self._counter = 0
        if last:
            ts = Timestamp.decode(last)
            self._wall, self._counter = ts.wall, ts.counter
        # The text around the counter, kept for the wall time it was made for: a stamp formats one number, not two.
        self._prefix_wall = -1
        self._prefix = ""
        self._suffix = f".{node}"

    def now(self) -> str:
        """A new stamp, greater than every stamp this clock produced or observed."""
        with self._lock:
            physical = self._clock()
            if physical > self._wall:
                self._wall, self._counter = physical, 0
            else:
                self._counter += 1
                if self._counter > _MAX_COUNTER:
                    self._wall, self._counter = self._wall + 1, 0
            if self._wall != self._prefix_wall:
                self._prefix_wall, self._prefix = self._wall, f"{self._wall:012x}."
            return f"{self._prefix}{self._counter:06x}{self._suffix}"

    def now_many(self, n: int) -> list[str]:
        """``n`` new stamps at once, strictly increasing, each greater than every stamp this clock produced or
        observed: what ``n`` calls of `now` return when the wall clock does not move meanwhile (one reading of it,
        one lock; the counter carries into the next millisecond as `now`'s does)."""
        stamps: list[str] = []
        with self._lock:
            physical = self._clock()
            if physical > self._wall:
                wall, first = physical, 0
            else:
                wall, first = self._wall, self._counter + 1
            while True:
                if first > _MAX_COUNTER:
                    wall, first = wall + 1, 0
                take = min(n - len(stamps), _MAX_COUNTER + 1 - first)
                pattern = f"{wall:012x}.%06x{self._suffix.replace('%', '%%')}"
                stamps += map(pattern.__mod__, range(first, first + take))
                first += take
                if len(stamps) >= n:
                    break
            if n > 0:
                self._wall, self._counter = wall, first - 1
        return stamps

    def observe(self, stamp: str) -> None:
        """Merge a stamp seen from another node so our next stamp orders after it (causality)."""
        remote = Timestamp.decode(stamp)
        with self._lock:
            physical = self._clock()
            if remote.wall > physical + MAX_DRIFT_MS:
                return
            if remote.wall > self._wall:
                self._wall, self._counter = remote.wall, remote.counter
            elif remote.wall == self._wall and remote.counter > self._counter:
                self._counter = remote.counter


class StampsAfter:
    """New stamps of ``clock``'s node, each after the previous one and after ``floor`` (even when the clock refused to
    adopt ``floor``: see `HybridClock.observe`)."""

    def __init__(self, clock: HybridClock, floor: str) -> None:
        clock.observe(floor)
        self._clock, self._last = clock, floor

    def __call__(self) -> str:
        stamp = self._clock.now()
        if stamp <= self._last:
            stamp = stamp_after(self._last, self._clock.node)
        self._last = stamp
        return stamp
