"""``data_dir/web.db``: the web service's own SQLite file (API keys, the local audit log, the admin UI's users,
its one-time setup link and the key that signs its session cookies).

Kept apart from ``local.db`` on purpose: the store's schema home (``migrations/``) is the store's; this file is the
web package's, versioned with ``PRAGMA user_version`` like the store's SQLite files. WAL mode, so the CLI
(``hybridstore apikey …``) can add or revoke keys while ``hybridstore serve`` runs on the same directory.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

FILE_NAME = "web.db"
BUSY_TIMEOUT_MS = 5000

# One entry per schema version; a change is a new entry, never an edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,
        scopes       TEXT NOT NULL,           -- space-separated
        token_hash   TEXT NOT NULL UNIQUE,    -- sha256 hex of the whole token
        hint         TEXT NOT NULL,           -- the token's first characters, to recognise it
        created_at   REAL NOT NULL,
        last_used_at REAL,
        revoked_at   REAL
    );
    CREATE TABLE audit_log (
        id       INTEGER PRIMARY KEY,
        at       REAL NOT NULL,
        actor    TEXT NOT NULL,
        action   TEXT NOT NULL,
        target   TEXT NOT NULL,
        outcome  TEXT NOT NULL,
        client   TEXT,
        details  TEXT NOT NULL DEFAULT '{}'   -- JSON
    );
    """,
    # admin users of the web UI (argon2id hashes), the one-time setup link, the key that signs session cookies
    """
    CREATE TABLE admin_users (
        name          TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,          -- argon2id, in the PHC string format
        created_at    REAL NOT NULL,
        last_login_at REAL
    );
    CREATE TABLE setup_tokens (
        token_hash TEXT PRIMARY KEY,          -- sha256 hex of the link's token
        created_at REAL NOT NULL,
        used_at    REAL
    );
    CREATE TABLE secrets (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    """,
)


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
        with self.transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.path} was written by a newer hybridstore (schema {version})")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

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
