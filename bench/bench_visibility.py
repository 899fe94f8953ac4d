"""Cross-node visibility through each way of reaching the primary: direct, a transaction pooler (polling), and a
transaction pooler with a session URL used only for LISTEN.

    python bench/bench_visibility.py [--writes 200] [--only direct,pooler,session]

PostgreSQL: ``HYBRIDSTORE_BENCH_DSN`` (default postgresql://postgres@127.0.0.1:5432/test). The pooler is a PgBouncer
this script starts in transaction mode on a free port (Debian's ``pgbouncer`` package; run as the ``postgres``
user when the script runs as root), in front of that server. Each path works in its own throwaway schema.

Node A writes (write-through, ~50 writes/s, its clock in the value); node B (its own data dir) has the write in
its local SQLite copy: the time from A's ``set()`` to the end of B's SQLite transaction that stored the row.
- direct: both nodes on the server's address; B LISTENs there.
- pooler, polling: both nodes through PgBouncer; LISTEN cannot work there, so B polls the change feed (every
  ``pull_interval`` seconds, at most every second while it cannot LISTEN).
- pooler + session URL: both nodes' queries through PgBouncer; B LISTENs on the server's address
  (``primary_session_url``), as with Supabase's transaction pooler plus its direct or session-pooler address.
Targets (light load): direct and pooler + session URL: p50 <= 2 ms, p99 <= 50 ms; polling: informational.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hybridstore
from _common import DSN, fmt_ms, header, percentile, pg_schema, print_table, quiet_logs, temp_dir
from bench_sync import Visibility

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' PgBouncer fixture
from tests.fix_pgbouncer import PgBouncer


def measure(a_url: str, b_url: str, writes: int, **b_options: Any) -> tuple[list[float], bool, bool]:
    """Visibility lags (seconds) of ``writes`` writes from A to B; whether B listened; whether B's tier is pooled."""
    with pg_schema() as schema, temp_dir() as tmp:
        a = hybridstore.open(a_url, data_dir=tmp / "a", primary_schema=schema)
        b = hybridstore.open(b_url, data_dir=tmp / "b", primary_schema=schema, **b_options)
        try:
            a.set("warm", "k", 1)
            deadline = time.monotonic() + 10
            while b.node.gateway.tier.schema_ready is False and time.monotonic() < deadline:
                time.sleep(0.01)
            if b.node.gateway.tier.can_listen:  # wait for LISTEN to be up when it can be
                while not (b.node.puller and b.node.puller.listening) and time.monotonic() < deadline:
                    time.sleep(0.01)
            vis = Visibility(b)
            for i in range(writes):
                a.set("vis", f"l{i}", {"t": time.time(), "i": i})
                time.sleep(0.02)
            deadline = time.monotonic() + 5
            while len(vis.lags) < writes and time.monotonic() < deadline:
                time.sleep(0.01)
            lags = list(vis.lags)
            assert len(lags) >= writes * 0.99, f"node b saw {len(lags)} of {writes} writes"
            listening = bool(b.node.puller and b.node.puller.listening)
            return lags, listening, b.node.gateway.tier.pooled
        finally:
            a.close()
            b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=200, help="writes per path (at ~50 writes/s)")
    parser.add_argument("--only", default="direct,pooler,session", help="comma-separated paths to run")
    args = parser.parse_args()
    header("bench_visibility")
    parts = args.only.split(",")
    if unknown := set(parts) - {"direct", "pooler", "session"}:
        parser.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    bouncer = PgBouncer(DSN)
    pooled_url = bouncer.url(DSN)
    rows: list[list[str]] = []
    try:
        with quiet_logs(**{"hybridstore.primary": logging.ERROR}):
            for part in parts:
                if part == "direct":
                    name, lags, listening, pooled = "direct", *measure(DSN, DSN, args.writes)
                elif part == "pooler":
                    name, lags, listening, pooled = (
                        "transaction pooler, polling",
                        *measure(pooled_url, pooled_url, args.writes),
                    )
                else:
                    name, lags, listening, pooled = (
                        "transaction pooler + session URL",
                        *measure(pooled_url, pooled_url, args.writes, primary_session_url=DSN),
                    )
                p50, p99 = percentile(lags, 50), percentile(lags, 99)
                informational = part == "pooler"
                rows.append(
                    [
                        name,
                        "yes" if pooled else "no",
                        "yes" if listening else "no",
                        str(len(lags)),
                        fmt_ms(p50),
                        fmt_ms(p99),
                        "-" if informational else "p50 <= 2, p99 <= 50",
                        "-" if informational else ("PASS" if p50 <= 0.002 and p99 <= 0.050 else "MISS"),
                    ]
                )
    finally:
        bouncer.close()
    print_table(
        f"cross-node visibility, ~50 writes/s, {args.writes} writes per path (ms)",
        ["path", "pooled", "LISTEN", "seen", "p50", "p99", "target", "verdict"],
        rows,
    )


if __name__ == "__main__":
    main()
