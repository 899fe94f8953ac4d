"""The clients of a run: threads that write through a node at a steady rate and record every write in the history.

Each write has a unique key (``<node>-<n>``: the "set" part, so a lost or doubled write is visible) or, one write in
``shared_every``, one of a few shared keys (overwritten by every node: versions must only grow, last-writer-wins
must keep the newest acknowledged value). A write the store refused with an error saying nothing was stored is
``fail``; any other error leaves the outcome ``unknown``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from random import Random
from typing import Any

from ..errors import ClosedError, StorageExhaustedError, ValidationError
from ..store import HybridStore
from ..worker import Worker
from .history import History

NOT_STORED = (StorageExhaustedError, ValidationError, ClosedError)  # the store says: nothing was stored
COLLECTION = "resilience"


class Writer:
    """One client thread writing through ``store`` at ``rate`` writes per second until `stop`."""

    def __init__(
        self,
        history: History,
        store: HybridStore,
        name: str,
        *,
        rate: float,
        rng: Random,
        collection: str = COLLECTION,
        shared_keys: int = 8,
        shared_every: int = 10,
        value_bytes: int = 64,
        read_every: int = 5,
    ) -> None:
        self.history = history
        self.store = store
        self.name = name
        self.rate = rate
        self.rng = rng
        self.collection = collection
        self.shared_keys = shared_keys
        self.shared_every = shared_every
        self.pad = "x" * value_bytes
        self.read_every = read_every
        self.written = 0
        self.errors: dict[str, int] = {}
        self._next_at: float | None = None
        self.worker = Worker(f"resilience-writer-{name}", self._round)

    def start(self) -> Writer:
        self.worker.start()
        return self

    def stop(self) -> None:
        self.worker.stop(60)

    def _round(self) -> float:
        """One write, then how long until the next one is due (a steady rate, no burst to catch up)."""
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic() if self._next_at is None else self._next_at
        self.write_one()
        self._next_at = max(next_at + interval, time.monotonic() - 5 * interval)
        return self._next_at - time.monotonic()

    def write_one(self) -> None:
        n = self.written
        self.written += 1
        shared = self.shared_keys and n % self.shared_every == self.shared_every - 1
        key = f"shared-{self.rng.randrange(self.shared_keys)}" if shared else f"{self.name}-{n:07d}"
        value = {"w": self.name, "n": n, "pad": self.pad}
        record(self.history, self.store, self.name, self.collection, key, value, self.errors)
        if shared and self.read_every and n % (self.shared_every * self.read_every) == self.shared_every - 1:
            observe(self.history, self.store, self.name, self.collection, key)


def record(
    history: History,
    store: HybridStore,
    node: str,
    collection: str,
    key: str,
    value: Any,
    errors: dict[str, int] | None = None,
    write: Callable[[], Any] | None = None,
) -> None:
    """One write, recorded: invoke, then ok / fail / unknown."""
    entry = history.invoke(node, collection, key, value)
    try:
        result = write() if write is not None else store.set(collection, key, value)
    except NOT_STORED as exc:
        history.fail(entry, f"{type(exc).__name__}: {exc}")
        _count(errors, type(exc).__name__)
    except Exception as exc:  # the store did not say whether it stored it
        history.unknown(entry, f"{type(exc).__name__}: {exc}")
        _count(errors, type(exc).__name__)
    else:
        history.ok(entry, tier=result.tier, hlc=result.hlc, version=result.version or None)
        if result.version:
            history.observe(node, collection, key, result.version)


def observe(history: History, store: HybridStore, node: str, collection: str, key: str) -> None:
    """Read a key and record the version seen (records the node has agreed with the primary only)."""
    try:
        rec = store.get(collection, key)
    except Exception:
        return
    if rec is not None and rec.version and not rec.pending:
        history.observe(node, collection, key, rec.version)


def _count(errors: dict[str, int] | None, name: str) -> None:
    if errors is not None:
        errors[name] = errors.get(name, 0) + 1
