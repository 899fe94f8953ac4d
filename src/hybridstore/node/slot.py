"""`LocalSlot`: the one owner of "can the local SQLite tier be used?".

It holds the current `LocalTier` (or none: it could not be opened, or it is being rebuilt), whether it is
usable, why not, a hold (the file awaits a rebuild: do not trust it again even if a write happens to work on an
undamaged page) and a generation number that a rebuild's swap increments. Every change happens under one lock
and is published as an event. A failure reported by a call that used an older generation's tier is ignored: a
foreground call that still held the old, closed tier cannot mark the new one failed. After `close()` nothing can
be swapped in.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ..errors import ClosedError, CorruptionError
from ..events import EventBus

if TYPE_CHECKING:
    from ..tiers.local import LocalTier

log = logging.getLogger("hybridstore")


class LocalSlot:
    def __init__(self, tier: LocalTier | None, events: EventBus, *, error: str | None = None) -> None:
        self._lock = threading.Lock()
        self._events = events
        self._tier = tier
        self._usable = tier is not None
        self._error = error
        self._hold: str | None = None
        self._closed = False
        self.generation = 1

    # -- reads (no side effects) ----------------------------------------------------------------------------------

    @property
    def tier(self) -> LocalTier | None:
        """The installed tier, usable or not (``None`` while there is none)."""
        return self._tier

    @property
    def usable(self) -> bool:
        return self._usable and self._tier is not None

    def writable(self) -> LocalTier | None:
        """The tier when writes may go to it, else ``None`` (they go to the journal)."""
        tier = self._tier
        return tier if self._usable and tier is not None else None

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def held(self) -> str | None:
        """Why the tier awaits a rebuild, or ``None``."""
        return self._hold

    def snapshot(self) -> dict[str, Any]:
        state = "usable" if self.usable else ("held" if self._hold else ("failed" if self._tier else "absent"))
        return {"state": state, "error": self._error, "hold": self._hold, "generation": self.generation}

    # -- changes ----------------------------------------------------------------------------------------------

    def mark_failed(self, exc: BaseException, *, tier: LocalTier | None = None) -> None:
        """A call failed on SQLite: writes go to the journal until it works again. ``tier`` is the tier that
        call used; a failure of a tier that has since been replaced is ignored. A corrupt file is held at once
        (`hold`): a later write that happens to land on undamaged pages must not make it look usable again, or
        acknowledged writes would go into a file that is about to be moved aside."""
        with self._lock:
            if tier is not None and tier is not self._tier:
                return
            was = self._usable
            self._usable = False
            self._error = str(exc)
        if was:
            log.error("local SQLite failed, writes go to the journal until it recovers: %s", exc)
            self._events.publish("local_failed", str(exc))
        if isinstance(exc, CorruptionError):
            self.hold(f"SQLite reported corruption: {exc}")

    def mark_recovered(self, *, tier: LocalTier | None = None) -> bool:
        """SQLite works again (a real write succeeded). Ignored while held or for a replaced tier. True if the
        tier is usable afterwards."""
        with self._lock:
            if self._hold is not None or self._tier is None or (tier is not None and tier is not self._tier):
                return False
            was = self._usable
            self._usable = True
            self._error = None
        if not was:
            log.info("local SQLite works again")
            self._events.publish("local_recovered")
        return True

    def hold(self, reason: str) -> None:
        """The file awaits a rebuild: stop using it for writes, whatever probes say, until `swap`."""
        with self._lock:
            if self._hold is not None:
                return
            self._hold = reason
            self._usable = False
            self._error = f"local store awaits a rebuild: {reason}"
        self._events.publish("local_held", reason)

    def take(self) -> LocalTier | None:
        """Remove the tier for a rebuild (callers see none until `swap`); the caller closes it."""
        with self._lock:
            old, self._tier = self._tier, None
            self._usable = False
            self.generation += 1
        return old

    def swap(self, new: LocalTier) -> None:
        """Install a rebuilt tier and clear the hold. Raises `ClosedError` (and closes ``new``) after `close()`."""
        with self._lock:
            if self._closed:
                new.close()
                raise ClosedError("the store closed during the rebuild; the rebuilt file is kept for the next open")
            old, self._tier = self._tier, new
            self._hold = None
            self._usable = True
            self._error = None
            self.generation += 1
        if old is not None and old is not new:
            old.close()
        self._events.publish("local_swapped", "", generation=self.generation)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            tier, self._tier = self._tier, None
            self._usable = False
        if tier is not None:
            tier.close()
