"""Recovery service: outage detection times, rebuild of a corrupt local store, cost of the metrics.

    python bench/bench_recovery.py [--only detect,rebuild,metrics] [--repeats 3] [--records 100000]

PostgreSQL: ``HYBRIDSTORE_BENCH_DSN`` (default postgresql://postgres@127.0.0.1:5432/test); throwaway schemas.

(a) detection: a store reaches PostgreSQL through a local TCP proxy (the one the fault tests use); the proxy
    refuses connections (listener closed, open connections reset) or black-holes them (accepts, answers
    nothing). Measured: seconds from the fault to the ``primary_outage`` alert, default options
    (``health_interval`` 0.5 s, ``primary_timeout`` 2 s), ``--repeats`` times each. Targets: refused < 2 s,
    black-holed < 5 s. The raw figure beside it is the healthy round trip of the same probe.
(b) rebuild: a store holding ``--records`` records (all on the primary) has a third of its ``records`` pages
    overwritten on disk; measured: the rebuild (salvage, full scan of the primary into a fresh file, swap).
    Raw limit, same run: one ``COPY (SELECT …) TO STDOUT`` of the same rows from PostgreSQL plus one
    ``executemany`` of them into an empty SQLite table of the same shape, in one transaction.
(c) metrics: cost of the per-operation timing on the local paths (``store.set`` and ``store.get``, embedded
    store): the instrumented methods vs the same methods without their timing decorator
    (``HybridStore.set.__wrapped__``), on one store, alternating runs, best run of each (the least disturbed by
    other processes); and one ``metrics.record`` call alone.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import sqlite3
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

import psycopg

import hybridstore
from _common import (
    DSN,
    fmt_rate,
    header,
    open_embedded,
    pg_schema,
    print_table,
    quiet_logs,
    small_value,
    temp_dir,
    verdict,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.faults import garble_pages, table_pages
from tests.fix_proxy import Proxy

QUIET = {"psycopg": logging.CRITICAL, "psycopg.pool": logging.CRITICAL, "hybridstore": logging.CRITICAL}


def _wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.005)


def bench_detect(repeats: int) -> None:
    host_port = DSN.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":") if ":" in host_port else (host_port, "5432")
    results: dict[str, list[float]] = {"refused": [], "black-holed": []}
    rtts: list[float] = []
    with quiet_logs(**QUIET), pg_schema() as schema, temp_dir() as tmp:
        for fault in ("refused", "black-holed"):
            for r in range(repeats):
                proxy = Proxy(host, int(port))
                store = hybridstore.open(proxy.url(DSN), data_dir=tmp / f"{fault}{r}", primary_schema=schema)
                try:
                    store.set("c", "k", 1)
                    _wait(lambda s=store: s.recovery.last_status() is not None, 10)
                    time.sleep(random.Random(r).uniform(0, 0.5))  # any phase of the probe interval
                    rtts.append(store.recovery.get_health_status(refresh=True)["components"]["primary"]["latency_ms"])
                    t0 = time.time()
                    proxy.cut() if fault == "refused" else proxy.blackhole()
                    _wait(lambda s=store: s.recovery.alerts(active=True), 15)
                    results[fault].append(store.recovery.alerts(active=True)[0].raised_at - t0)
                finally:
                    proxy.restore()
                    store.close()
                    proxy.close()
    rtt = statistics.median(rtts)
    rows = []
    for fault, target in (("refused", 2.0), ("black-holed", 5.0)):
        times = results[fault]
        rows.append(
            [
                fault,
                f"{min(times):.2f}",
                f"{statistics.median(times):.2f}",
                f"{max(times):.2f}",
                f"{rtt:.2f} ms",
                f"< {target:g} s",
                verdict(max(times), target, higher_is_better=False),
            ]
        )
    print_table(
        f"(a) outage detection, seconds from fault to alert ({repeats} runs each, default options)",
        ["fault", "min", "median", "max", "healthy probe rtt (raw)", "target", "verdict"],
        rows,
    )


def _raw_rebuild(schema: str, tmp: Path, n: int) -> float:
    start = time.perf_counter()
    rows: list[tuple[Any, ...]] = []
    with (
        psycopg.connect(DSN, autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy(
            f"COPY (SELECT collection, key, value::text, version, hlc, origin, extract(epoch FROM updated_at) "
            f'FROM "{schema}".records ORDER BY collection, key) TO STDOUT'
        ) as copy,
    ):
        rows = [(c, k, v, int(ver), h, o, float(u)) for c, k, v, ver, h, o, u in copy.rows()]
    db = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE records (collection TEXT, key TEXT, value TEXT, version INTEGER, hlc TEXT, origin TEXT, "
        "updated_at REAL, synced_at REAL, PRIMARY KEY (collection, key)) WITHOUT ROWID"
    )
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, 0)", rows)
    db.execute("COMMIT")
    db.close()
    assert len(rows) == n, len(rows)
    return time.perf_counter() - start


def bench_rebuild(n: int) -> None:
    with quiet_logs(**QUIET), pg_schema() as schema, temp_dir() as tmp:
        data = tmp / "node"
        with hybridstore.open(
            DSN, data_dir=data, primary_schema=schema, write_mode="local_first", background=False
        ) as store:
            for i in range(n):
                store.set("orders", f"o{i:08d}", small_value(i))
            report = store.sync_now()
            assert report.remaining == 0 and report.pushed == n, report
        db = data / "local.db"
        pages = table_pages(db, "records")
        garble_pages(db, random.Random(7).sample(pages, len(pages) // 3), seed=7)
        raw = _raw_rebuild(schema, tmp, n)
        store = hybridstore.open(DSN, data_dir=data, primary_schema=schema, background=False)
        try:
            start = time.perf_counter()
            store.recovery.check()
            took = time.perf_counter() - start
            rebuild = store.recovery.last_rebuild
            assert rebuild is not None and rebuild.records_from_source == n and not rebuild.unrecovered, rebuild
            assert store.node.slot.tier is not None and store.node.slot.tier.collection_counts() == {"orders": n}
        finally:
            store.close()
    print_table(
        f"(b) rebuild of a corrupt local store holding {n:,} records (a third of its record pages overwritten)",
        ["case", "seconds", "records/s", "x raw time"],
        [
            [
                "hybridstore: detect (quick_check) + salvage + rebuild from primary",
                f"{took:.2f}",
                fmt_rate(n / took),
                f"{took / raw:.2f}",
            ],
            [
                "  of which the rebuild itself",
                f"{rebuild.seconds:.2f}",
                fmt_rate(n / rebuild.seconds),
                f"{rebuild.seconds / raw:.2f}",
            ],
            ["raw: COPY out of PostgreSQL + one executemany into SQLite", f"{raw:.2f}", fmt_rate(n / raw), "1.00"],
        ],
    )


def _best(fn: Any, number: int, repeat: int) -> float:
    """Seconds per call: the best of ``repeat`` runs of ``number`` calls (the run least disturbed by the other
    processes of a shared machine)."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def bench_metrics(n: int, rounds: int) -> None:
    values = [small_value(i) for i in range(1000)]
    raw_set = hybridstore.HybridStore.set.__wrapped__  # type: ignore[attr-defined]
    raw_get = hybridstore.HybridStore.get.__wrapped__  # type: ignore[attr-defined]
    seq = itertools.count()
    with temp_dir() as tmp:
        store = open_embedded(tmp / "a", background=False)
        try:
            for i in range(1000):
                store.set("c", f"r{i:08d}", values[i])
            cases = {
                # each write a new key (an insert), the same work in both cases
                "set, instrumented": lambda: store.set("c", f"k{next(seq):09d}", values[7]),
                "set, without the timing decorator": lambda: raw_set(store, "c", f"k{next(seq):09d}", values[7]),
                "get, instrumented": lambda: store.get("c", "r00000500"),
                "get, without the timing decorator": lambda: raw_get(store, "c", "r00000500"),
            }
            best = {name: [] for name in cases}  # type: dict[str, list[float]]
            for _ in range(rounds):  # alternate the cases, keep each one's best
                for name, fn in cases.items():
                    best[name].append(_best(fn, n // rounds if name.startswith("set") else 5 * n // rounds, 1))
            per_call = _best(lambda: store.metrics.record("set", "local", 0.0001), 100_000, 5)
        finally:
            store.close()
    secs = {name: min(v) for name, v in best.items()}
    rows = []
    for op in ("set", "get"):
        a, b = secs[f"{op}, instrumented"], secs[f"{op}, without the timing decorator"]
        rows.append(
            [
                f"{op}, instrumented",
                fmt_rate(1 / a),
                f"{a * 1e6:.2f}",
                f"+{(a - b) * 1e6:.2f} us ({(a / b - 1) * 100:+.1f} %)",
            ]
        )
        rows.append([f"{op}, without the timing decorator", fmt_rate(1 / b), f"{b * 1e6:.2f}", ""])
    rows.append(["metrics.record() alone", "", f"{per_call * 1e6:.2f}", ""])
    print_table(
        f"(c) cost of per-operation metrics, embedded store (best of {rounds} alternating runs per case)",
        ["case", "ops/s", "us/op", "overhead"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="detect,rebuild,metrics")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    header("bench_recovery")
    parts = set(args.only.split(","))
    if "detect" in parts:
        bench_detect(args.repeats)
    if "rebuild" in parts:
        bench_rebuild(args.records)
    if "metrics" in parts:
        bench_metrics(args.writes, args.rounds)


if __name__ == "__main__":
    main()
