"""Real damage to a node's files: garbled SQLite pages, a full file system. Nothing is simulated: the bytes on disk
change, the file system really runs out of space."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from random import Random

PAGE = 4096


def checkpoint(path: Path, attempts: int = 40) -> bool:
    """Move everything the WAL holds into the database file and empty the WAL (from a connection of our own), so
    that damage to the file's pages is what SQLite reads, not hidden behind newer copies in the WAL. Returns
    whether it completed (a busy writer can keep it from finishing: it is tried again)."""
    conn = sqlite3.connect(path, timeout=5)
    try:
        for _ in range(attempts):
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
            time.sleep(0.05)
        return False
    finally:
        conn.close()


def table_pages(path: Path, table: str) -> list[int]:
    """Page numbers (1-based) of a table and its indexes (SQLite's ``dbstat``)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ?1 OR name IN "
            "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1)",
            (table,),
        ).fetchall()
    finally:
        conn.close()
    return sorted(r[0] for r in rows)


def garble_pages(path: Path, table: str, fraction: float, rng: Random) -> int:
    """Overwrite ``fraction`` of a table's pages with random bytes; returns how many pages."""
    pages = table_pages(path, table)
    chosen = rng.sample(pages, max(1, int(len(pages) * fraction))) if pages else []
    with open(path, "r+b") as f:
        for page in chosen:
            f.seek((page - 1) * PAGE)
            f.write(rng.randbytes(PAGE))
        f.flush()
        os.fsync(f.fileno())
    return len(chosen)


class SmallDisk:
    """A size-limited tmpfs mounted on ``path`` (needs root: ``mount -t tmpfs -o size=…``), with a ballast file to
    fill it and free it at will. `available` says why not when it cannot be made."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size = size_bytes
        self.mounted = False
        self.why_not: str | None = None
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            self.why_not = "needs root to mount a size-limited tmpfs"
            return
        if shutil.which("mount") is None:
            self.why_not = "no mount command"
            return
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            self.why_not = f"mount failed: {res.stderr.strip() or res.returncode}"
            return
        self.mounted = True
        self.ballast = path / ".ballast"

    @property
    def available(self) -> bool:
        return self.mounted

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        """Write a ballast file until only ``leave`` bytes are free."""
        with open(self.ballast, "ab") as f:
            while (free := self.free_bytes()) > leave:
                try:
                    f.write(b"\0" * min(1 << 20, free - leave))
                    f.flush()
                except OSError:
                    break

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ballast.unlink()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
            self.mounted = False
