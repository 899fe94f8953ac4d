"""Node events: a small synchronous publish/subscribe bus, and the event kinds a node publishes.

Publishers are the primary gateway (circuit and liveness), the local slot (SQLite usable or not) and the
services; subscribers are the services (the replayer wakes when the primary is back, backups take an emergency
backup when it goes away, the recovery monitor raises alerts) and, later, the web UI's live updates. Listeners
run in the publisher's thread, outside any lock of the publisher: they must be quick (set a flag, wake a
worker) and must not raise (an exception is logged and swallowed, so one bad listener cannot break a write).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("hybridstore.events")

EventKind = Literal[
    "circuit_open",  # foreground calls stop using the primary (routing)
    "circuit_closed",  # the primary answers again: calls use it, queued writes can be pushed
    "primary_down",  # an outage is confirmed (hysteresis: not a single blip)
    "primary_up",  # the outage is over (answers confirmed)
    "primary_misconfigured",  # the primary answers but refuses us: authentication, database, role, privilege
    "local_failed",  # SQLite failed: writes go to the journal
    "local_recovered",  # SQLite works again
    "local_held",  # SQLite awaits a rebuild: not trusted even if a probe works
    "local_swapped",  # a rebuilt SQLite file took the old one's place
    "backup_failed",  # a scheduled or emergency backup could not be taken
    "backup_taken",  # a scheduled or emergency backup was taken
]
EVENT_KINDS: tuple[str, ...] = EventKind.__args__  # type: ignore[attr-defined]
Listener = Callable[["Event"], None]


@dataclass(frozen=True, slots=True)
class Event:
    """One state change. ``seq`` orders events of one node; ``at`` is epoch seconds."""

    seq: int
    kind: EventKind
    at: float
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "at": self.at, "detail": self.detail, **self.data}


class EventBus:
    """Synchronous fan-out with a short memory (the last ``keep`` events, for status views)."""

    def __init__(self, *, wall: Callable[[], float] = time.time, keep: int = 200) -> None:
        self._wall = wall
        self._listeners: list[tuple[frozenset[str] | None, Listener]] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.recent: deque[Event] = deque(maxlen=keep)

    def subscribe(self, listener: Listener, *kinds: EventKind) -> Callable[[], None]:
        """Call ``listener(event)`` for every event (or only those of ``kinds``); returns the unsubscriber."""
        entry = (frozenset(kinds) if kinds else None, listener)
        with self._lock:
            self._listeners.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return unsubscribe

    def publish(self, kind: EventKind, detail: str = "", **data: Any) -> Event:
        with self._lock:
            event = Event(next(self._seq), kind, self._wall(), detail, data)
            self.recent.append(event)
            listeners = list(self._listeners)
        for kinds, listener in listeners:
            if kinds is None or kind in kinds:
                try:
                    listener(event)
                except Exception:
                    log.exception("event listener failed on %s", kind)
        return event

    def since(self, seq: int = 0) -> list[Event]:
        """Remembered events newer than ``seq`` (oldest first)."""
        with self._lock:
            return [e for e in self.recent if e.seq > seq]
