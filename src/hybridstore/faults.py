"""Test-only fault hooks: deliberately broken behaviour, so that the resilience tester can prove it catches a
broken store (its "teeth"). **Never turn these on in production**: each one loses data on purpose.

Off by default, and then free: the three places that read them test one module-level frozenset
(``if faults.active and ...``). Turned on by `enable` (in-process) or, for child processes, by the environment
variable ``HYBRIDSTORE_TEST_FAULTS`` (comma-separated names) read at import.

- ``outbox_drop``: the outbox replayer drops one op in ``EVERY`` (the first, the 101st...) from the batches it
  pushes, and settles it as if the primary had applied it (an acknowledged write silently lost) —
  `hybridstore.sync.outbox`;
- ``journal_no_fsync``: the journal keeps appended lines in the process's memory (as the OS page cache holds
  unsynced data) and writes them out only when it is closed cleanly: a SIGKILL then plays the power cut that
  loses unsynced data — `hybridstore.tiers.journal`;
- ``puller_skip_page``: the change puller skips one page in ``SKIP_EVERY`` of the change feed (the cursor moves
  on, the rows are never applied: the node diverges) — `hybridstore.sync.puller`.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

ENV = "HYBRIDSTORE_TEST_FAULTS"
OUTBOX_DROP = "outbox_drop"
JOURNAL_NO_FSYNC = "journal_no_fsync"
PULLER_SKIP_PAGE = "puller_skip_page"
NAMES = (OUTBOX_DROP, JOURNAL_NO_FSYNC, PULLER_SKIP_PAGE)
EVERY = 100
SKIP_EVERY = 3

active: frozenset[str] = frozenset()
fired: Counter[str] = Counter()  # how often each fault did its damage
_seen: Counter[str] = Counter()
_lock = threading.Lock()


def enable(*names: str) -> None:
    """Turn these faults on (and every other off)."""
    global active
    unknown = set(names) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown test fault(s) {sorted(unknown)}: use {', '.join(NAMES)}")
    with _lock:
        active = frozenset(names)
        fired.clear()
        _seen.clear()


def disable() -> None:
    enable()


def due(name: str) -> bool:
    """Count one occasion for fault ``name``; True on the first and then every ``EVERY``-th (``SKIP_EVERY``-th page
    for the puller), then counted as fired. From the first: a short-lived process does its damage too."""
    every = SKIP_EVERY if name == PULLER_SKIP_PAGE else EVERY
    with _lock:
        hit = _seen[name] % every == 0
        _seen[name] += 1
        if hit:
            fired[name] += 1
        return hit


enable(*(n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()))
