"""Probes the health monitor runs: the primary's round trip (bounded by a deadline of our own), SQLite's
integrity (``PRAGMA quick_check`` on a separate connection) and a write probe, the write-ahead log's presence,
and the data directory's free space. Each returns plain data and never raises.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..errors import HybridStoreError

if TYPE_CHECKING:
    from ..tiers.local import LocalTier
    from ..tiers.primary import PrimaryTier


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    started: float  # monotonic time the probe began (a still-running probe keeps its start)
    latency_ms: float | None = None
    error: str = ""


class PrimaryProber:
    """Round trips to the primary from worker threads, each cut off after ``timeout`` seconds whatever the driver
    does. While the primary is healthy a probe is a ``SELECT 1`` on a pooled connection (cheap); once a probe
    has failed, probes use a brand-new connection (the pool may hold stale connections or be backing off its
    reconnects). A probe that outlives its deadline keeps running in its thread; while ``max_stuck`` fresh ones
    are still waiting, no new one is started and each tick counts as another failure (a black-holed primary)."""

    def __init__(self, primary: PrimaryTier, *, timeout: float, max_stuck: int = 2) -> None:
        self._primary = primary
        self.timeout = timeout
        self._max_stuck = max_stuck
        self._inflight: list[tuple[float, Future[float]]] = []  # fresh-connection probes still waiting

    def probe(self, *, fresh: bool, now: float) -> ProbeResult:
        self._inflight = [(t, f) for t, f in self._inflight if not f.done()]
        if len(self._inflight) >= self._max_stuck:
            oldest = self._inflight[0][0]
            return ProbeResult(False, oldest, error=f"no answer for {now - oldest:.1f}s")
        future = _in_thread(self._primary.probe if fresh else self._primary.ping)
        if fresh:
            # Only fresh probes count as stuck: a pooled one may just wait behind the pool's reconnect backoff
            # after a blip, which says nothing about the primary now.
            self._inflight.append((now, future))
        try:
            latency = future.result(timeout=self.timeout)
        except FutureTimeout:
            return ProbeResult(False, now, error=f"no answer within {self.timeout:g}s")
        except HybridStoreError as exc:
            return ProbeResult(False, now, error=str(exc))
        except Exception as exc:  # a probe must never kill the monitor
            return ProbeResult(False, now, error=f"{type(exc).__name__}: {exc}")
        return ProbeResult(True, now, latency)

    def close(self) -> None:
        self._inflight = []


def _in_thread(fn: Callable[[], float]) -> Future[float]:
    """Run ``fn`` in a daemon thread of its own: a probe stuck on a black-holed socket must never keep the
    process from exiting (an executor's workers are joined at exit)."""
    future: Future[float] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="hybridstore-health-probe", daemon=True).start()
    return future


def wal_path(db: Path) -> Path:
    return db.with_name(db.name + "-wal")


def wal_deleted_after_crash(db: Path) -> bool:
    """Before SQLite opens ``db``: a shared-memory index (``-shm``) without its write-ahead log (``-wal``) means
    the process died with the log open and the log was deleted since — the writes it held are gone. (A clean
    close removes both files.)"""
    return db.exists() and db.with_name(db.name + "-shm").exists() and not wal_path(db).exists()


def wal_missing(local: LocalTier) -> bool:
    """While the local tier is open its write-ahead log must exist; if it was deleted, the writes since the last
    checkpoint live only in a file nobody can open again."""
    return local.path.exists() and not wal_path(local.path).exists()


def quick_check(db: Path, *, timeout: float = 5.0) -> list[str]:
    """``PRAGMA quick_check`` on a separate read-only connection (so the store's page cache cannot hide damage on
    disk). ``["ok"]`` when the file is sound; the problems found otherwise."""
    if not db.exists():
        return ["ok"]
    try:
        conn = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        return [f"cannot open: {exc}"]
    try:
        return [str(r[0]) for r in conn.execute("PRAGMA quick_check(20)").fetchall()] or ["no answer"]
    except sqlite3.Error as exc:
        return [str(exc)]
    finally:
        conn.close()


def write_probe(local: LocalTier) -> ProbeResult:
    """A real write (one tiny transaction in the meta table)."""
    start = time.perf_counter()
    try:
        local.meta_set("health_probe", repr(time.time()))
    except HybridStoreError as exc:
        return ProbeResult(False, time.monotonic(), error=str(exc))
    return ProbeResult(True, time.monotonic(), (time.perf_counter() - start) * 1000)


def is_disk_full(error: str) -> bool:
    return "full" in error.lower() or "no space" in error.lower()


@dataclass(frozen=True)
class DiskSpace:
    free_bytes: int
    total_bytes: int


def disk_space(path: Path) -> DiskSpace | None:
    try:
        usage = shutil.disk_usage(path if path.exists() else path.parent)
    except OSError:
        return None
    return DiskSpace(usage.free, usage.total)


def data_dir_bytes(path: Path) -> int:
    total = 0
    try:
        for entry in os.scandir(path):
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total
