"""Pause Python's cyclic garbage collector around bulk work that allocates many short-lived objects.

A push of thousands of outbox ops allocates tuples by the hundred thousand; each 700 allocations trigger a
young collection, and the survivors (the batch in flight) are traversed again and again by the older ones —
a quarter of the node's CPU during an outbox drain. Reference counting still frees everything at once; only
the search for reference cycles waits until the block ends (the bulk code makes none).

Process-wide, as `gc.disable` is: pauses from several threads nest (a counter), the collector is enabled again
when the last one ends, and only if it was enabled when the first began (an application that turned it off
keeps it off). Keep the paused blocks bounded (one batch), so cycles made meanwhile by other threads wait
little.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_resume = False  # whether the last pause to end enables the collector again


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside the block (unless another thread forces one with `gc.collect`)."""
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()
