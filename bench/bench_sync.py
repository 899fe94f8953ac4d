"""Sync engine: cross-node visibility through LISTEN/NOTIFY, and pull throughput of an initial sync.

    python bench/bench_sync.py [--only visibility,pull] [--light 400] [--heavy-seconds 4] [--pull 200000]

PostgreSQL: ``HYBRIDSTORE_BENCH_DSN`` (default postgresql://postgres@127.0.0.1:5432/test). Each part works in
its own throwaway schema, dropped at the end.

(a) cross-node visibility: node A writes, node B (its own data dir, same primary) has the write in its local
    SQLite copy. The time from A's ``set()`` call to the end of the SQLite transaction on B that stored the row
    (the value carries A's clock; both nodes run on this machine). Light load: A writes through, one write at a
    time, ~50 writes/s. Heavy load: A queues at ~5,000 writes/s (``write_mode="local_first"``, the push thread
    batches). Beside it, the raw LISTEN/NOTIFY delivery time between two psycopg connections in the same run.
    Targets: p50 <= 10 ms and p99 <= 50 ms (light); p99 <= 200 ms at 5k writes/s.
(b) pull throughput: 200k records already on the primary; a fresh node runs ``sync_now(full=True)`` (pages of
    the change feed written to SQLite, next page fetched while the last one is written) vs raw streaming of the
    same rows with a server-side cursor (``SELECT … FROM records``). Target: >= 0.5 x raw rows/s.
"""

from __future__ import annotations

import argparse
import json
import select
import time
from typing import Any

import psycopg

import hybridstore
from _common import DSN, fmt_ms, fmt_rate, header, percentile, pg_schema, print_table, temp_dir, verdict


def raw_notify_latency(n: int) -> list[float]:
    """Seconds from NOTIFY (autocommit) to its receipt on a listening connection."""
    out = []
    with psycopg.connect(DSN, autocommit=True) as listener, psycopg.connect(DSN, autocommit=True) as sender:
        listener.execute("LISTEN bench_raw")
        sock = listener.pgconn.socket
        for i in range(n):
            start = time.perf_counter()
            sender.execute("SELECT pg_notify('bench_raw', %s)", (str(i),))
            while True:
                select.select([sock], [], [], 1.0)
                listener.pgconn.consume_input()
                if listener.pgconn.notifies() is not None:
                    break
            out.append(time.perf_counter() - start)
            time.sleep(0.002)
    return out


class Visibility:
    """Wraps node B's ``apply_pulled`` to note when each of A's writes became visible in B's SQLite."""

    def __init__(self, store: Any) -> None:
        self.lags: list[float] = []
        self.seen = 0
        local = store.node.slot.tier
        inner = local.apply_pulled

        def apply_pulled(rows: Any, cursor: Any, *, force: bool = False) -> int:
            changed = inner(rows, cursor, force=force)
            now = time.time()
            for r in rows:
                if r[0] == "vis" and r[2]:
                    self.lags.append(now - json.loads(r[2])["t"])
            self.seen += len(rows)
            return changed

        local.apply_pulled = apply_pulled


def bench_visibility(light: int, heavy_seconds: float) -> None:
    raw = raw_notify_latency(300)
    rows: list[list[str]] = [
        ["raw LISTEN/NOTIFY delivery", "300", fmt_ms(percentile(raw, 50)), fmt_ms(percentile(raw, 99)), "", "", ""]
    ]
    with pg_schema() as schema, temp_dir() as tmp:
        a = hybridstore.open(DSN, data_dir=tmp / "a", primary_schema=schema)
        b = hybridstore.open(DSN, data_dir=tmp / "b", primary_schema=schema)
        try:
            a.set("warm", "k", 1)
            deadline = time.monotonic() + 10
            while not (b.node.puller and b.node.puller.listening) and time.monotonic() < deadline:
                time.sleep(0.01)
            vis = Visibility(b)
            for i in range(light):
                a.set("vis", f"l{i}", {"t": time.time(), "i": i})
                time.sleep(0.02)
            time.sleep(0.5)
            lags = list(vis.lags)
            assert len(lags) >= light * 0.99, f"node b saw {len(lags)} of {light} writes"
            p50, p99 = percentile(lags, 50), percentile(lags, 99)
            rows.append(
                [
                    "light: ~50 writes/s, write-through",
                    str(len(lags)),
                    fmt_ms(p50),
                    fmt_ms(p99),
                    f"{p50 / percentile(raw, 50):.0f} x raw",
                    "p50 <= 10, p99 <= 50",
                    "PASS" if p50 <= 0.010 and p99 <= 0.050 else "MISS",
                ]
            )
        finally:
            a.close()
            b.close()
    with pg_schema() as schema, temp_dir() as tmp:
        a = hybridstore.open(DSN, data_dir=tmp / "a", primary_schema=schema, write_mode="local_first")
        b = hybridstore.open(DSN, data_dir=tmp / "b", primary_schema=schema)
        try:
            a.set("warm", "k", 1)
            a.sync_now()
            deadline = time.monotonic() + 10
            while not (b.node.puller and b.node.puller.listening) and time.monotonic() < deadline:
                time.sleep(0.01)
            vis = Visibility(b)
            rate, n = 5000.0, int(5000 * heavy_seconds)
            start = time.perf_counter()
            for i in range(n):
                a.set("vis", f"h{i}", {"t": time.time(), "i": i})
                ahead = start + (i + 1) / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            achieved = n / (time.perf_counter() - start)
            deadline = time.monotonic() + 30
            while len(vis.lags) < n and time.monotonic() < deadline:
                time.sleep(0.05)
            lags = list(vis.lags)
            assert len(lags) >= n, f"node b saw {len(lags)} of {n} writes"
            p50, p99 = percentile(lags, 50), percentile(lags, 99)
            rows.append(
                [
                    f"heavy: {achieved:,.0f} writes/s, local-first",
                    str(len(lags)),
                    fmt_ms(p50),
                    fmt_ms(p99),
                    "",
                    "p99 <= 200",
                    verdict(p99, 0.200, higher_is_better=False),
                ]
            )
        finally:
            a.close()
            b.close()
    print_table(
        "(a) cross-node visibility: A.set() -> row in B's SQLite (ms)",
        ["case", "samples", "p50 ms", "p99 ms", "vs raw", "target", "verdict"],
        rows,
    )


def bench_pull(n: int) -> None:
    with pg_schema() as schema, temp_dir() as tmp, psycopg.connect(DSN, autocommit=True) as conn:
        seeder = hybridstore.open(DSN, data_dir=tmp / "seed", primary_schema=schema, background=False, pull=False)
        assert seeder.node.gateway.configured
        seeder.node.gateway.tier.migrate()
        seeder.close()
        with conn.cursor().copy(
            f'COPY "{schema}".records (collection, key, value, version, hlc, origin) FROM STDIN'
        ) as copy:
            for i in range(n):
                value = json.dumps({"name": f"item {i}", "price": i % 1000, "qty": 3, "tags": ["a", "b"]})
                copy.write_row(("items", f"k{i:08d}", value, 1, f"{1_700_000_000_000 + i:012x}.000000.seed", "seed"))
        conn.execute(f'ANALYZE "{schema}".records')

        def raw_stream() -> float:
            start = time.perf_counter()
            count = 0
            with psycopg.connect(DSN) as c, c.cursor(name="raw") as cur:
                cur.itersize = 5000
                cur.execute(
                    f"SELECT stamp::text::bigint, collection, key, value::text, version, hlc, origin, "
                    f'extract(epoch FROM updated_at)::float8 FROM "{schema}".records ORDER BY stamp, collection, key'
                )
                for _ in cur:
                    count += 1
            assert count == n
            return time.perf_counter() - start

        raw_times = [raw_stream() for _ in range(2)]
        ours = []
        for attempt in range(2):
            node = hybridstore.open(DSN, data_dir=tmp / f"n{attempt}", primary_schema=schema, background=False)
            try:
                start = time.perf_counter()
                report = node.sync_now(full=True)
                ours.append(time.perf_counter() - start)
                assert report.pulled == n, report
                assert node.node.slot.tier is not None and node.node.slot.tier.get("items", f"k{n - 1:08d}") is not None
            finally:
                node.close()
    base, mine = n / min(raw_times), n / min(ours)
    print_table(
        f"(b) initial sync of {n:,} records from the primary (best of 2 each)",
        ["case", "seconds", "rows/s", "x raw", "target", "verdict"],
        [
            [
                "hybridstore sync_now(full=True)",
                f"{min(ours):.2f}",
                fmt_rate(mine),
                f"{mine / base:.2f}",
                ">= 0.5",
                verdict(mine / base, 0.5),
            ],
            ["raw SELECT, server-side cursor", f"{min(raw_times):.2f}", fmt_rate(base), "1.00", "", ""],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="visibility,pull", help="comma-separated parts to run")
    parser.add_argument("--light", type=int, default=400, help="writes at light load")
    parser.add_argument("--heavy-seconds", type=float, default=4.0, help="seconds of writing at 5k writes/s")
    parser.add_argument("--pull", type=int, default=200_000, help="records on the primary for the initial sync")
    args = parser.parse_args()
    header("bench_sync")
    parts = set(args.only.split(","))
    if unknown := parts - {"visibility", "pull"}:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    if "visibility" in parts:
        bench_visibility(args.light, args.heavy_seconds)
    if "pull" in parts:
        bench_pull(args.pull)


if __name__ == "__main__":
    main()
