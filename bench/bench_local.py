"""Local tier: durable writes (1 op per transaction) and point reads, embedded store vs raw sqlite3 vs diskcache.

    python bench/bench_local.py [--writes 20000] [--reads 100000]

(a) write: ``store.set`` (embedded, no primary: record + outbox row in one SQLite transaction) vs raw sqlite3
    doing the same work by hand (WAL, synchronous=NORMAL, ``BEGIN IMMEDIATE``; upsert into a WITHOUT ROWID
    ``records`` table keyed (collection, key) + outbox insert; ``COMMIT``; json.dumps included) vs
    ``diskcache.Cache.set``. Targets: >= 0.75 x raw, >= 2 x diskcache.
(b) point read of random existing keys: ``store.get`` (``read_policy="local_first"``) vs raw
    ``SELECT value … WHERE collection=? AND key=?`` + json.loads vs ``diskcache.Cache.get``.
    Targets: >= 0.4 x raw, >= 2 x diskcache.
The write table also shows, as a diagnostic without a target, the same store opened with ``background=False``
(no replayer thread to wake after each queued write).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import diskcache

from _common import fmt_rate, header, interleaved_rates, open_embedded, print_table, small_value, temp_dir, verdict

COLLECTION = "products"
DIAG = "(diagnostic) set, background=False"
RAW_SCHEMA = """
CREATE TABLE records (
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT,
    updated_at REAL NOT NULL,
    synced_at  REAL,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY,
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT,
    created_at REAL NOT NULL
);
"""
RAW_UPSERT = (
    "INSERT INTO records (collection, key, value, updated_at, synced_at) VALUES (?, ?, ?, ?, NULL) "
    "ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
    "synced_at = NULL"
)
RAW_OUTBOX = "INSERT INTO outbox (collection, key, value, created_at) VALUES (?, ?, ?, ?)"
RAW_SELECT = "SELECT value FROM records WHERE collection = ? AND key = ?"


class RawSqlite:
    """The floor: the same durable work as a local write, with nothing around it."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL").fetchall()
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(RAW_SCHEMA)

    def set(self, collection: str, key: str, value: Any) -> None:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        now = time.time()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(RAW_UPSERT, (collection, key, text, now))
        conn.execute(RAW_OUTBOX, (collection, key, text, now))
        conn.execute("COMMIT")

    def get(self, collection: str, key: str) -> Any:
        row = self.conn.execute(RAW_SELECT, (collection, key)).fetchone()
        return None if row is None or row[0] is None else json.loads(row[0])

    def close(self) -> None:
        self.conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--reads", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    header("bench_local")
    values = [small_value(i) for i in range(args.writes)]
    keys = [f"k{i:08d}" for i in range(args.writes)]
    rng = random.Random(42)
    read_keys = [keys[rng.randrange(args.writes)] for _ in range(args.reads)]

    with temp_dir() as tmp:
        store = open_embedded(tmp / "store", read_policy="local_first")
        # diagnostic only: same store without the background replayer thread (shows what waking it costs)
        quiet = open_embedded(tmp / "quiet", read_policy="local_first", background=False)
        raw = RawSqlite(tmp / "raw.db")
        cache = diskcache.Cache(str(tmp / "diskcache"))
        try:
            # warm up: page cache, prepared statements, WAL file creation
            for i in range(1000):
                store.set(COLLECTION, f"warm{i}", values[i % len(values)])
                quiet.set(COLLECTION, f"warm{i}", values[i % len(values)])
                raw.set(COLLECTION, f"warm{i}", values[i % len(values)])
                cache.set(f"{COLLECTION}/warm{i}", values[i % len(values)])

            writes = interleaved_rates(
                {
                    "hybridstore set": lambda i: store.set(COLLECTION, keys[i], values[i]),
                    "raw sqlite3": lambda i: raw.set(COLLECTION, keys[i], values[i]),
                    "diskcache set": lambda i: cache.set(f"{COLLECTION}/{keys[i]}", values[i]),
                    DIAG: lambda i: quiet.set(COLLECTION, keys[i], values[i]),
                },
                args.writes,
                args.rounds,
            )
            assert store.get(COLLECTION, keys[-1]).value == values[-1]
            assert raw.get(COLLECTION, keys[-1]) == values[-1]
            assert cache.get(f"{COLLECTION}/{keys[-1]}") == values[-1]
            depth = store.health()["outbox"]["depth"]

            for k in read_keys[:2000]:  # warm up reads
                store.get(COLLECTION, k)
                raw.get(COLLECTION, k)
                cache.get(f"{COLLECTION}/{k}")
            reads = interleaved_rates(
                {
                    "hybridstore get": lambda i: store.get(COLLECTION, read_keys[i]),
                    "raw sqlite3": lambda i: raw.get(COLLECTION, read_keys[i]),
                    "diskcache get": lambda i: cache.get(f"{COLLECTION}/{read_keys[i]}"),
                },
                args.reads,
                args.rounds,
            )
            misses = sum(store.get(COLLECTION, k) is None for k in read_keys[:1000])
            assert misses == 0, f"{misses} reads missed"
        finally:
            store.close()
            quiet.close()
            raw.close()
            cache.close()

    def rows(rates: dict[str, float], ours: str, min_raw: float) -> list[list[str]]:
        raw_rate, dc_name = rates["raw sqlite3"], next(n for n in rates if n.startswith("diskcache"))
        out = [
            [name, fmt_rate(rate), f"{1e6 / rate:.1f}", f"{rate / raw_rate:.2f}", f"{rate / rates[dc_name]:.2f}"]
            for name, rate in rates.items()
        ]
        r_raw, r_dc = rates[ours] / raw_rate, rates[ours] / rates[dc_name]
        out.append(["target: ours vs raw", "", "", f">= {min_raw}", "", verdict(r_raw, min_raw)])
        out.append(["target: ours vs diskcache", "", "", "", ">= 2", verdict(r_dc, 2.0)])
        return out

    cols = ["case", "ops/s", "us/op", "x raw", "x diskcache", "verdict"]
    print_table(
        f"(a) local durable write, 1 op/txn, {args.writes:,} writes (median of {args.rounds} interleaved rounds; "
        f"outbox depth after: {depth:,})",
        cols,
        rows(writes, "hybridstore set", 0.75),
    )
    print_table(
        f"(b) local point read, {args.reads:,} random reads of {args.writes:,} keys "
        f"(median of {args.rounds} interleaved rounds)",
        cols,
        rows(reads, "hybridstore get", 0.4),
    )


if __name__ == "__main__":
    main()
