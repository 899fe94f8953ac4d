"""The history of a resilience run (the Jepsen idea): every operation a client invoked, how it ended, and when.

Each write gets a unique id and a unique value; it is recorded when invoked and again when it completes:
``ok`` (acknowledged: the store said it is durable), ``fail`` (the store said it is *not* stored) or ``unknown``
(the client died before it learned the outcome: it may or may not have been applied). Reads record the version
they saw (versions of a key must only grow, as each observer sees them). Fault windows are recorded too, so
latencies can be split by phase (before, during, after the fault). Times are monotonic seconds from the
history's start. Thread-safe: many client threads record into one history.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["ok", "fail", "unknown"]
Phase = Literal["before", "during", "after"]
PHASES: tuple[Phase, ...] = ("before", "during", "after")


@dataclass
class OpEntry:
    """One invoked write. ``outcome`` is ``None`` while it is in flight (the checker treats that as unknown)."""

    id: int
    node: str
    collection: str
    key: str
    value: Any
    invoked: float
    completed: float | None = None
    outcome: Outcome | None = None
    tier: str | None = None
    hlc: str | None = None
    version: int | None = None
    error: str | None = None

    @property
    def latency_ms(self) -> float | None:
        return None if self.completed is None else (self.completed - self.invoked) * 1000

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class Observation:
    """A version of a key as one observer (a node, a client) saw it, in the order it saw them."""

    observer: str
    collection: str
    key: str
    version: int
    at: float


@dataclass
class FaultWindow:
    name: str
    start: float
    end: float | None = None


@dataclass
class History:
    """See the module docstring."""

    clock: Callable[[], float] = time.monotonic
    ops: list[OpEntry] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    faults: list[FaultWindow] = field(default_factory=list)
    marks: list[tuple[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._origin = self.clock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def now(self) -> float:
        return self.clock() - self._origin

    # -- writes -----------------------------------------------------------------------------------------------

    def invoke(self, node: str, collection: str, key: str, value: Any) -> OpEntry:
        entry = OpEntry(next(self._ids), node, collection, key, value, self.now())
        with self._lock:
            self.ops.append(entry)
        return entry

    def ok(
        self, entry: OpEntry, *, tier: str | None = None, hlc: str | None = None, version: int | None = None
    ) -> None:
        entry.tier, entry.hlc, entry.version = tier, hlc, version
        self._complete(entry, "ok")

    def fail(self, entry: OpEntry, error: str) -> None:
        entry.error = error
        self._complete(entry, "fail")

    def unknown(self, entry: OpEntry, error: str = "") -> None:
        entry.error = error or None
        self._complete(entry, "unknown")

    def _complete(self, entry: OpEntry, outcome: Outcome) -> None:
        entry.completed = self.now()
        entry.outcome = outcome

    # -- reads, faults, marks ---------------------------------------------------------------------------------

    def observe(self, observer: str, collection: str, key: str, version: int) -> None:
        with self._lock:
            self.observations.append(Observation(observer, collection, key, version, self.now()))

    def fault_start(self, name: str) -> FaultWindow:
        window = FaultWindow(name, self.now())
        with self._lock:
            self.faults.append(window)
        return window

    def fault_end(self, window: FaultWindow) -> None:
        if window.end is None:
            window.end = self.now()

    @contextmanager
    def fault(self, name: str) -> Iterator[FaultWindow]:
        window = self.fault_start(name)
        try:
            yield window
        finally:
            self.fault_end(window)

    def mark(self, name: str) -> float:
        """Note a moment (``healed``, ``alert_raised``...); returns its time."""
        at = self.now()
        with self._lock:
            self.marks.append((name, at))
        return at

    def mark_at(self, name: str) -> float | None:
        """The time of the first mark called ``name``."""
        return next((at for n, at in self.marks if n == name), None)

    # -- phases -----------------------------------------------------------------------------------------------

    def phase_of(self, at: float) -> Phase:
        """``before`` the first fault started, ``after`` the last one ended, ``during`` otherwise."""
        if not self.faults:
            return "before"
        if at < self.faults[0].start:
            return "before"
        ends = [w.end for w in self.faults]
        if all(e is not None for e in ends) and at > max(e for e in ends if e is not None):
            return "after"
        return "during"

    def snapshot(self) -> list[OpEntry]:
        with self._lock:
            return list(self.ops)
