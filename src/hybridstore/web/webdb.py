"""``data_dir/web.db``: the web service's own SQLite file (API keys, the local audit log, jobs, the admin UI's
users, its one-time setup link and the key that signs its session cookies).

Kept apart from ``local.db`` on purpose (the web service's state is not the store's data), but its schema lives
with every other database's: versioned SQL under ``migrations/web/`` (a change is a new ``NNNN_name.sql`` file,
never an edit; recorded in ``PRAGMA user_version``), applied by `hybridstore.migrations.migrate_sqlite` when the
file is opened. WAL mode, so the CLI (``hybridstore apikey …``) can add or revoke keys while ``hybridstore serve``
runs on the same directory.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..migrations import migrate_sqlite

FILE_NAME = "web.db"
BUSY_TIMEOUT_MS = 5000


class WebDatabase:
    """One connection to ``web.db``, shared by threads under a lock (every statement is short)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def in_dir(cls, data_dir: str | os.PathLike[str]) -> WebDatabase:
        return cls(Path(data_dir) / FILE_NAME)

    def _migrate(self) -> None:
        with self._lock:
            migrate_sqlite(self._conn, "web")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own transaction; returns the number of rows it changed."""
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()
