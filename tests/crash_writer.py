"""Child process for the crash tests: writes records and prints each acknowledged key, until killed."""

from __future__ import annotations

import sys

import hybridstore


def main() -> None:
    data_dir, url, schema, prefix, mode = sys.argv[1:6]
    store = hybridstore.open(
        url or None, data_dir=data_dir, primary_schema=schema, write_mode=mode, primary_timeout=1.0
    )
    print("ready", flush=True)
    n = 0
    while True:
        key = f"{prefix}-{n:06d}"
        store.set("orders", key, {"prefix": prefix, "n": n, "pad": "x" * (n % 200)})
        print(key, flush=True)
        n += 1


if __name__ == "__main__":
    main()
