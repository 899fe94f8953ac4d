"""A node in a process of its own, for the scenarios that kill nodes (SIGKILL): it writes unique keys at a steady
rate and says so on standard output, one line per event, flushed at once, so the parent knows what was invoked
and what was acknowledged when the kill lands::

    ready
    inv <n> <key>
    ok <n> <tier> <hlc> <version>
    fail <n> <error type>

Run as ``python -m hybridstore.resilience.child DATA_DIR URL SCHEMA NODE_ID WRITE_MODE RATE PREFIX [OPTIONS]``
(``OPTIONS``: store options as a JSON object). Test-only faults (`hybridstore.faults`) reach it through the
environment.
"""

from __future__ import annotations

import json
import sys
import time

from ..config import resolve
from ..store import HybridStore
from .scenario import NODE_DEFAULTS
from .workload import COLLECTION, NOT_STORED


def main(argv: list[str]) -> None:
    data_dir, url, schema, node_id, mode, rate, prefix = argv[:7]
    options = {**NODE_DEFAULTS, **(json.loads(argv[7]) if len(argv) > 7 else {})}
    store = HybridStore(
        resolve(
            primary_url=url,
            data_dir=data_dir,
            node_id=node_id,
            primary_schema=schema,
            write_mode=mode,
            backups=False,
            **options,
        )
    )
    print("ready", flush=True)
    interval = 1.0 / float(rate)
    next_at = time.monotonic()
    n = 0
    while True:
        key = f"{prefix}-{n:06d}"
        print(f"inv {n} {key}", flush=True)
        try:
            result = store.set(COLLECTION, key, {"w": prefix, "n": n})
        except NOT_STORED as exc:
            print(f"fail {n} {type(exc).__name__}", flush=True)
        else:
            print(f"ok {n} {result.tier} {result.hlc} {result.version}", flush=True)
        n += 1
        next_at = max(next_at + interval, time.monotonic() - 5 * interval)
        time.sleep(max(0.0, next_at - time.monotonic()))


def value_of(prefix: str, n: int) -> dict[str, object]:
    """The value the child writes as op ``n`` (the parent records the same)."""
    return {"w": prefix, "n": n}


if __name__ == "__main__":
    main(sys.argv[1:])
