"""Crash safety: a writer killed with SIGKILL at random moments loses no acknowledged write."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore

from .fix_db import primary_rows

pytestmark = [pytest.mark.resilience, pytest.mark.slow]
WRITER = Path(__file__).with_name("crash_writer.py")
ROOT = Path(__file__).resolve().parent.parent


def run_and_kill(data_dir: Path, url: str, schema: str, prefix: str, mode: str, delay: float) -> list[tuple[str, str]]:
    """Start a writer, SIGKILL it ``delay`` seconds after its first acknowledged write (real time on purpose: the
    kill must land at an arbitrary point of a write); return the keys it acknowledged, each with the tier that
    acknowledged it. Counting from the first acknowledgement, not from start-up, means a slow start cannot leave
    a round with nothing written."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir), url, schema, prefix, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    lines: list[str] = []
    writing = threading.Event()

    def read() -> None:
        for line in proc.stdout or []:
            lines.append(line.strip())
            writing.set()
        writing.set()  # the writer ended by itself: the assertion below says so

    reader = threading.Thread(target=read)
    reader.start()
    assert writing.wait(30) and proc.poll() is None, "the writer acknowledged a write and is still writing"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    acked = [line.split() for line in lines if line.startswith(prefix + "-")]
    return [(parts[0], parts[1]) for parts in acked if len(parts) == 2]  # a line cut by the kill was not seen


def test_sigkill_loses_no_acknowledged_write(
    tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]
) -> None:
    rng = random.Random(20261125)
    data_dir = tmp_path / "node"
    acked: list[str] = []
    journal_tiers: set[str] = set()
    rounds = 15
    for r in range(rounds):
        mode = ("write_through", "local_first", "journal")[r % 3]
        acks = run_and_kill(data_dir, pg_dsn, pg_schema, f"r{r:02d}", mode, rng.uniform(0.05, 0.8))
        keys = [k for k, _ in acks]
        acked += keys
        if mode == "journal":
            # SQLite is full: writes that fit no free page are acknowledged by the journal (pushes free pages, so
            # some still fit: which ones depends on timing; over the journal rounds some must be journaled).
            journal_tiers |= {tier for _, tier in acks}
        # after every crash the store opens cleanly and has everything acknowledged so far
        with hybridstore.open(
            pg_dsn, data_dir=data_dir, primary_schema=pg_schema, read_policy="local_first", background=False
        ) as store:
            assert store.node.slot.tier is not None
            assert store.node.slot.tier.integrity_check() == ["ok"]
            missing = [k for k in keys if store.get("orders", k) is None]
            assert missing == [], f"round {r}: acknowledged writes lost locally: {missing[:5]}"
    assert len(acked) > rounds * 5, "the writer had time to write"
    assert "journal" in journal_tiers, "with SQLite full, the journal took writes"

    with hybridstore.open(pg_dsn, data_dir=data_dir, primary_schema=pg_schema, background=False) as store:
        report = store.sync_now()
        assert report.remaining == 0 and report.failed == 0
    rows = primary_rows(pg, pg_schema, "orders")
    lost = sorted(set(acked) - set(rows))
    assert lost == [], f"acknowledged but not on the primary: {lost[:5]}"
    for key in acked:
        value, version = rows[key]
        assert version == 1, f"{key} applied {version} times"
        assert value["n"] == int(key.split("-")[1])
    (marks,) = pg.execute(f'SELECT count(*) FROM "{pg_schema}".settled_marks').fetchone()
    assert marks == 0, "one node, one write per key: nothing lost, nothing overwritten"


def test_sigkill_embedded(tmp_path: Path) -> None:
    rng = random.Random(7)
    data_dir = tmp_path / "node"
    acked: list[str] = []
    for r in range(8):
        acked += [
            k for k, _ in run_and_kill(data_dir, "", "hybridstore", f"e{r}", "write_through", rng.uniform(0.05, 0.5))
        ]
    with hybridstore.open(data_dir=data_dir) as store:
        assert store.node.slot.tier is not None and store.node.slot.tier.integrity_check() == ["ok"]
        assert all(store.get("orders", k) is not None for k in acked)
        assert store.health()["outbox"]["depth"] >= len(acked)
