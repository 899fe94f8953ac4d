"""Child process for the crash tests: writes records and prints each acknowledged key and the tier that
acknowledged it, until killed.

``mode`` is a write mode, or ``journal``: SQLite reports "disk full" from the start (a real SQLITE_FULL through
``max_page_count``), so every write is acknowledged by the journal.
"""

from __future__ import annotations

import sys

import hybridstore
from faults import fill_sqlite  # this folder is on sys.path: the script runs from it


def main() -> None:
    data_dir, url, schema, prefix, mode = sys.argv[1:6]
    full_sqlite = mode == "journal"
    store = hybridstore.open(
        url or None,
        data_dir=data_dir,
        primary_schema=schema,
        write_mode="local_first" if full_sqlite else mode,
        primary_timeout=1.0,
    )
    if full_sqlite:
        fill_sqlite(store)
    print("ready", flush=True)
    n = 0
    while True:
        key = f"{prefix}-{n:06d}"
        pad = "x" * (5000 if full_sqlite else n % 200)
        result = store.set("orders", key, {"prefix": prefix, "n": n, "pad": pad})
        print(key, result.tier, flush=True)
        n += 1


if __name__ == "__main__":
    main()
