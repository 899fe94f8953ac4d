"""Primary tier (PostgreSQL): write-through, outbox drain, writes during a total outage.

    python bench/bench_primary.py [--only write_through,drain,outage] [--writes 6000] [--drain 100000]

PostgreSQL: ``HYBRIDSTORE_BENCH_DSN`` (default postgresql://postgres@127.0.0.1:5432/test). Each part works in
its own throwaway schema, dropped at the end.

(a) write-through, 1 op: ``store.set`` (default ``write_mode="write_through"``) vs one raw psycopg autocommit
    round trip ``INSERT … ON CONFLICT (k) DO UPDATE`` into a plain (k text, v jsonb) table, same payload.
    Target: hybridstore ops/s >= 0.77 x raw (overhead <= 1.3 x).
(b) outbox drain: 100k ops queued with ``write_mode="local_first", background=False``, then the push that
    ``sync_now()`` starts with (``replayer.drain()``; ``sync_now()``'s pull of the same rows back through the change
    feed is timed apart and shown below it) vs raw COPY of the same 100k rows into a temp table + one
    ``INSERT … SELECT … ON CONFLICT DO UPDATE`` into a table shaped like the store's ``records``. Target: >= 0.6 x
    raw rows/s; the primary must hold exactly 100k rows afterwards.
(c) total outage: primary URL on a closed local port (connection refused). Per-write latency of 20k writes vs
    an embedded (local-only) store in the same run. Target: p99 <= 2 x local-only p99, 0 failed writes.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

import hybridstore
from _common import (
    DSN,
    fmt_ms,
    fmt_rate,
    header,
    interleaved_rates,
    latencies,
    open_embedded,
    percentile,
    pg_schema,
    print_table,
    quiet_logs,
    small_value,
    temp_dir,
    verdict,
)

COLLECTION = "orders"
DEAD_DSN = "postgresql://postgres@127.0.0.1:1/test"  # nothing listens on port 1: connection refused


def bench_write_through(n: int, rounds: int) -> None:
    values = [small_value(i) for i in range(n)]
    keys = [f"k{i:08d}" for i in range(n)]
    with pg_schema() as schema, temp_dir() as tmp, psycopg.connect(DSN, autocommit=True) as raw:
        raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        raw.execute(f'CREATE TABLE "{schema}".raw_kv (k text PRIMARY KEY, v jsonb NOT NULL)')
        upsert = (
            f'INSERT INTO "{schema}".raw_kv (k, v) VALUES (%s, %s::jsonb) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v'
        )

        def raw_set(i: int) -> None:
            raw.execute(upsert, (keys[i], json.dumps(values[i], ensure_ascii=False, separators=(",", ":"))))

        tiers: collections.Counter[str] = collections.Counter()
        with hybridstore.open(DSN, data_dir=tmp / "wt", primary_schema=schema) as store:

            def store_set(i: int) -> None:
                tiers[store.set(COLLECTION, keys[i], values[i]).tier] += 1

            for i in range(300):  # warm up: migration, pool, prepared statements
                store.set(COLLECTION, f"warm{i}", values[i % n])
                raw.execute(upsert, (f"warm{i}", json.dumps(values[i % n])))
            cases = {"hybridstore set (write-through)": store_set, "raw psycopg upsert": raw_set}
            rates = interleaved_rates(cases, n, rounds)
            depth = store.health()["outbox"]["depth"]
        on_primary = raw.execute(f'SELECT count(*) FROM "{schema}".records').fetchone()
        assert on_primary is not None
        assert tiers == {"primary": n - n % rounds}, f"not every write went to the primary: {dict(tiers)}"
        assert depth == 0, f"{depth} writes were queued"

    ours, base = rates["hybridstore set (write-through)"], rates["raw psycopg upsert"]
    print_table(
        f"(a) write-through, 1 op per call, {n:,} writes each (median of {rounds} interleaved rounds); "
        f"tiers used: {dict(tiers)}, rows on primary: {on_primary[0]:,}",
        ["case", "ops/s", "ms/op", "x raw", "target", "verdict"],
        [
            [
                "hybridstore set (write-through)",
                fmt_rate(ours),
                fmt_ms(1 / ours),
                f"{ours / base:.2f}",
                ">= 0.77",
                verdict(ours / base, 0.77),
            ],
            ["raw psycopg upsert", fmt_rate(base), fmt_ms(1 / base), "1.00", "", ""],
            [
                "overhead (time per op / raw)",
                "",
                "",
                f"{base / ours:.2f}",
                "<= 1.3",
                verdict(base / ours, 1.3, higher_is_better=False),
            ],
        ],
    )


def raw_merge(conn: psycopg.Connection[Any], table: str, rows: list[tuple[str, str, str, str, str]]) -> float:
    """COPY ``rows`` into a temp table and merge them into ``table`` in one statement; returns seconds."""
    start = time.perf_counter()
    with conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE stage (collection text, key text, value text, hlc text, origin text) ON COMMIT DROP"
        )
        with conn.cursor().copy("COPY stage (collection, key, value, hlc, origin) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute(
            f"INSERT INTO {table} AS r (collection, key, value, version, base_version, hlc, origin) "
            "SELECT collection, key, value::jsonb, 1, 0, hlc, origin FROM stage "
            "ON CONFLICT (collection, key) DO UPDATE SET value = EXCLUDED.value, version = r.version + 1, "
            "hlc = EXCLUDED.hlc, origin = EXCLUDED.origin, updated_at = now(), stamp = pg_current_xact_id()"
        )
    return time.perf_counter() - start


def bench_drain(n: int) -> None:
    values = [small_value(i) for i in range(n)]
    keys = [f"k{i:08d}" for i in range(n)]
    with pg_schema() as schema, temp_dir() as tmp, psycopg.connect(DSN, autocommit=True) as conn:
        store = hybridstore.open(
            DSN, data_dir=tmp / "drain", primary_schema=schema, write_mode="local_first", background=False
        )
        try:
            assert store.node.gateway.configured
            store.node.gateway.tier.migrate()  # schema creation is not part of the drain
            store.health()  # opens a pool connection
            start = time.perf_counter()
            for i in range(n):
                store.set(COLLECTION, keys[i], values[i])
            fill = time.perf_counter() - start
            depth = store.health()["outbox"]["depth"]
            assert depth == n, f"expected {n} queued ops, found {depth}"
            start = time.perf_counter()
            report = store.node.replayer.drain()  # the push alone: what sync_now() does first
            drain = time.perf_counter() - start
            pull_started = time.perf_counter()
            report.pulled = store.sync_now().pulled  # then its pull: the node's own rows come back by the feed
            pull = time.perf_counter() - pull_started
            after = store.health()["outbox"]["depth"]
        finally:
            store.close()
        on_primary = conn.execute(f'SELECT count(*) FROM "{schema}".records').fetchone()
        assert on_primary is not None
        print(
            f"after drain: primary holds {on_primary[0]:,} rows; sync report pushed={report.pushed:,} "
            f"failed={report.failed} remaining={report.remaining}; local outbox depth {after}"
        )
        assert on_primary[0] == n, f"primary holds {on_primary[0]} rows, expected {n}"
        assert report.pushed == n and report.remaining == 0 and after == 0, report

        # raw limit, same rows (same JSON text, HLC-shaped stamps, origin), into tables shaped like records
        rows = [
            (
                COLLECTION,
                keys[i],
                json.dumps(values[i], ensure_ascii=False, separators=(",", ":")),
                f"{1_700_000_000_000 + i:012x}.000000.nraw",
                "nraw",
            )
            for i in range(n)
        ]
        raw_times = []
        for attempt in range(2):
            table = f'"{schema}".raw_records_{attempt}'
            conn.execute(f'CREATE TABLE {table} (LIKE "{schema}".records INCLUDING ALL)')
            raw_times.append(raw_merge(conn, table, rows))
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert count is not None and count[0] == n, count

    ours, base = n / drain, n / min(raw_times)
    print_table(
        f"(b) outbox drain of {n:,} queued ops (batch_size {store.config.batch_size}); "
        f"queueing them took {fill:.1f} s ({fmt_rate(n / fill)} ops/s, not part of the drain)",
        ["case", "seconds", "rows/s", "x raw", "target", "verdict"],
        [
            [
                "hybridstore push (replayer.drain())",
                f"{drain:.2f}",
                fmt_rate(ours),
                f"{ours / base:.2f}",
                ">= 0.6",
                verdict(ours / base, 0.6),
            ],
            [
                "(sync_now(): the push, then its pull of the same rows back)",
                f"{drain + pull:.2f}",
                fmt_rate(n / (drain + pull)),
                f"{n / (drain + pull) / base:.2f}",
                "",
                "",
            ],
            ["raw COPY + merge (best of 2)", f"{min(raw_times):.2f}", fmt_rate(base), "1.00", "", ""],
            [
                "raw COPY + merge (other run)",
                f"{max(raw_times):.2f}",
                fmt_rate(n / max(raw_times)),
                f"{min(raw_times) / max(raw_times):.2f}",
                "",
                "",
            ],
        ],
    )


def bench_outage(n: int, rounds: int) -> None:
    values = [small_value(i) for i in range(n)]
    keys = [f"k{i:08d}" for i in range(n)]
    failures: collections.Counter[str] = collections.Counter()
    tiers: collections.Counter[str] = collections.Counter()
    dead_name, local_name = "outage store (primary refused)", "local-only store (embedded)"
    samples: dict[str, list[float]] = {dead_name: [], local_name: []}
    # the pool logs every refused connection, the store every write it queues instead: not what is measured
    with temp_dir() as tmp, quiet_logs(**{"psycopg.pool": logging.CRITICAL, "hybridstore": logging.ERROR}):
        # the schema is never created: the primary is never reached
        dead = hybridstore.open(DEAD_DSN, data_dir=tmp / "dead", primary_schema="bench_outage_unused")
        local = open_embedded(tmp / "local")
        try:

            def writer(store: Any, label: str) -> Callable[[int], None]:
                def write(i: int) -> None:
                    try:
                        tiers[f"{label}:{store.set(COLLECTION, keys[i], values[i]).tier}"] += 1
                    except Exception as exc:
                        failures[f"{label}:{type(exc).__name__}"] += 1

                return write

            cases = {dead_name: writer(dead, "outage"), local_name: writer(local, "local")}
            for i in range(300):  # warm up the local-only store only: the outage store's first writes are measured
                local.set(COLLECTION, f"warm{i}", values[i % n])
            per_round = n // rounds
            for r in range(rounds):
                for name in list(cases) if r % 2 == 0 else reversed(list(cases)):
                    samples[name] += latencies(cases[name], per_round, offset=r * per_round)
            circuit = dead.node.gateway.circuit.snapshot()
            depth = dead.health()["outbox"]["depth"]
        finally:
            dead.close()
            local.close()

    local_p99 = percentile(samples[local_name], 99)
    rows = []
    for name, s in samples.items():
        slow = [f"#{i}: {t * 1000:,.0f}" for i, t in enumerate(s) if t > 0.1]
        row = [name, fmt_ms(percentile(s, 50)), fmt_ms(percentile(s, 99)), fmt_ms(percentile(s, 99.9)), fmt_ms(max(s))]
        rows.append([*row, f"{percentile(s, 99) / local_p99:.2f}", ", ".join(slow[:4]) or "none"])
    ratio = percentile(samples[dead_name], 99) / local_p99
    n_fail = sum(failures.values())
    rows.append(
        [
            "target: outage p99 / local p99",
            "",
            "",
            "",
            "",
            f"{ratio:.2f} (<= 2)",
            verdict(ratio, 2.0, higher_is_better=False),
        ]
    )
    rows.append(["target: failed writes", "", "", "", "", f"{n_fail} (want 0)", verdict(-n_fail, 0)])
    print_table(
        f"(c) writes during a total outage (primary {DEAD_DSN}: connection refused), {len(samples[dead_name]):,} "
        f"writes per store, {rounds} interleaved rounds, latencies in ms.\n    tiers: {dict(tiers)}; failures: "
        f"{dict(failures)}; outage store circuit {circuit['state']}, opened {circuit['times_opened']}x, outbox depth "
        f"{depth:,}",
        ["case", "p50", "p99", "p99.9", "max", "p99 x local", "writes > 100 ms (#index: ms) / verdict"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="write_through,drain,outage", help="comma-separated parts to run")
    parser.add_argument("--writes", type=int, default=6000, help="write-through writes per case")
    parser.add_argument("--drain", type=int, default=100_000, help="ops queued, then drained")
    parser.add_argument("--outage-writes", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per comparison")
    args = parser.parse_args()
    header("bench_primary")
    parts = set(args.only.split(","))
    if unknown := parts - {"write_through", "drain", "outage"}:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    try:
        with psycopg.connect(DSN, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            sync = conn.execute("SHOW synchronous_commit").fetchone()
    except psycopg.Error as exc:
        raise SystemExit(f"PostgreSQL is needed (set HYBRIDSTORE_BENCH_DSN): {exc}") from None
    print(f"PostgreSQL {version[0] if version else '?'} (synchronous_commit={sync[0] if sync else '?'})")
    if "write_through" in parts:
        bench_write_through(args.writes, args.rounds)
    if "drain" in parts:
        bench_drain(args.drain)
    if "outage" in parts:
        bench_outage(args.outage_writes, args.rounds)


if __name__ == "__main__":
    main()
