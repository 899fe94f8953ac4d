"""Probes of the node's own files that the health monitor runs (the primary's liveness is the gateway's job:
`hybridstore.node.prober`): SQLite's integrity (``PRAGMA quick_check`` on a separate connection) and a write
probe, the write-ahead log's presence, and the data directory's free space. Each returns plain data and never
raises.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..errors import HybridStoreError
from ..node.prober import ProbeResult

if TYPE_CHECKING:
    from ..tiers.local import LocalTier


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
