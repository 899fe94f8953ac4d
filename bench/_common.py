"""Shared helpers for the benchmarks: timing, percentiles, tables, throwaway PostgreSQL schemas, temp dirs.

Not a test module: each ``bench_*.py`` is a plain script (``python bench/bench_local.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

DSN = os.environ.get("HYBRIDSTORE_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/test")
# Environment variables hybridstore.open() reads when primary_url is None; removed so "embedded" stays embedded.
PRIMARY_ENV_VARS = ("HYBRIDSTORE_PRIMARY_URL", "SUPABASE_DB_URL", "DATABASE_URL", "HYBRIDSTORE_PRIMARY_SCHEMA")


def small_value(i: int) -> dict[str, Any]:
    """The payload every benchmark writes (about 80 bytes of JSON)."""
    return {"name": f"item {i}", "price": i % 1000, "qty": 3, "tags": ["a", "b"], "active": True}


def interleaved_rates(cases: dict[str, Callable[[int], Any]], n: int, rounds: int, offset: int = 0) -> dict[str, float]:
    """Run ``fn(i)`` for ``n`` values of ``i`` per case, split into ``rounds`` rounds that alternate between the
    cases (so drift, checkpoints and noisy neighbours hit every case alike). Returns the median ops/s per case."""
    per_round = n // rounds
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        names = list(cases) if r % 2 == 0 else list(reversed(cases))
        for name in names:
            fn = cases[name]
            lo = offset + r * per_round
            start = time.perf_counter()
            for i in range(lo, lo + per_round):
                fn(i)
            rates[name].append(per_round / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in rates.items()}


def latencies(fn: Callable[[int], Any], n: int, offset: int = 0) -> list[float]:
    """Per-call latency of ``fn(i)`` in seconds, for ``n`` calls."""
    out = [0.0] * n
    clock = time.perf_counter
    for j in range(n):
        start = clock()
        fn(offset + j)
        out[j] = clock() - start
    return out


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of ``samples``."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in row] + [""] * (len(headers) - len(row)) for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
        print(f"\n{title}")
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for r in cells:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    console = Console(width=140, highlight=False)
    console.print(f"\n[bold]{title}[/bold]")
    table = Table()
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in cells:
        table.add_row(*r)
    console.print(table)


def header(name: str) -> None:
    """One line saying what was measured: hybridstore version and git commit, Python, CPUs."""
    import hybridstore

    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    print(
        f"{name}: hybridstore {hybridstore.__version__} ({commit or 'no git'}), python {platform.python_version()}, "
        f"{os.cpu_count()} cpu, {platform.platform()}",
        flush=True,
    )


@contextlib.contextmanager
def quiet_logs(**levels: int) -> Iterator[None]:
    """Set logger levels (``quiet_logs(**{"psycopg.pool": logging.CRITICAL})``) for the block, then restore."""
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    """A fresh temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="hybridstore-bench-") as d:
        yield Path(d)


@contextlib.contextmanager
def pg_schema(dsn: str = DSN) -> Iterator[str]:
    """A fresh schema name (not created); ``DROP SCHEMA … CASCADE`` afterwards, whatever happened."""
    import psycopg

    name = "bench_" + uuid.uuid4().hex[:12]
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def open_embedded(data_dir: Path, **options: Any) -> Any:
    """``hybridstore.open()`` with no primary, even if the environment names one."""
    import hybridstore

    for var in PRIMARY_ENV_VARS:
        os.environ.pop(var, None)
    store = hybridstore.open(None, data_dir=data_dir, **options)
    if store.node.gateway.configured:
        store.close()
        raise RuntimeError("expected an embedded store")
    return store


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"
