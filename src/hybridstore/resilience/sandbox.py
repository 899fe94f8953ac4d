"""The sandbox of a resilience run: it never touches production data.

A run gets its own schema on the primary (``hs_resilience_<run>``, created at start and dropped at the end), its own
temporary directory (``hybridstore-resilience-<run>`` under the system's temporary directory, one data directory
per node inside) and its own node ids (``rs<run>-<name>``). It refuses to start when it cannot create them. While it
runs it holds a PostgreSQL advisory lock named after its schema and an ``owner.pid`` file in its directory, so the
next run can tell the leftovers of a crashed run (no lock holder, no live process) from a run in progress, and
removes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from ..compose import LOCAL_DB
from ..config import resolve
from ..errors import ConfigError
from ..store import HybridStore
from .checker import Key, Row

log = logging.getLogger("hybridstore.resilience")
SCHEMA_PREFIX = "hs_resilience_"
DIR_PREFIX = "hybridstore-resilience-"


def _lock_sql(schema: str) -> str:
    return f"hashtext('hybridstore-resilience:{schema}')"


class Sandbox:
    """See the module docstring. Use as a context manager (or call `close`)."""

    def __init__(self, primary_url: str, *, base_dir: Path | None = None, run_id: str | None = None) -> None:
        import psycopg

        self.primary_url = primary_url
        self.run_id = run_id or secrets.token_hex(4)
        self.schema = SCHEMA_PREFIX + self.run_id
        self.base_dir = Path(base_dir or tempfile.gettempdir())
        self.cleaned: list[str] = cleanup_leftovers(primary_url, self.base_dir)
        try:
            self._conn: Any = psycopg.connect(primary_url, autocommit=True, connect_timeout=10)
            self._conn.execute(f"SELECT pg_advisory_lock({_lock_sql(self.schema)})")
            self._conn.execute(f'CREATE SCHEMA "{self.schema}"')
        except psycopg.Error as exc:
            raise ConfigError(
                f"resilience run refused: cannot create its own schema {self.schema} on the primary ({exc}); the "
                "role needs CREATE on the database"
            ) from exc
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX + self.run_id + "-", dir=self.base_dir))
            (self.dir / "owner.pid").write_text(str(os.getpid()), encoding="utf-8")
        except OSError as exc:
            self._drop_schema()
            raise ConfigError(f"resilience run refused: cannot create a temporary directory ({exc})") from exc
        self.scenario = "run"

    def begin(self, scenario: str) -> None:
        """Start a scenario on a clean slate: the run's schema is dropped and created again (the nodes migrate
        it), and its nodes get directories and ids of their own."""
        self.scenario = scenario
        self._conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self._conn.execute(f'CREATE SCHEMA "{self.schema}"')

    def node_id(self, name: str) -> str:
        return f"rs{self.run_id}-{self.scenario}-{name}"[:64]

    def data_dir(self, name: str) -> Path:
        return self.dir / self.scenario / name

    def open_node(self, name: str, url: str | None = None, **options: Any) -> HybridStore:
        """A node of the run: its own data directory, node id and the run's schema; ``url`` defaults to the
        primary's (pass a proxy's URL to put faults between them)."""
        options.setdefault("backups", False)
        config = resolve(
            primary_url=url or self.primary_url,
            data_dir=self.data_dir(name),
            node_id=self.node_id(name),
            primary_schema=self.schema,
            **options,
        )
        return HybridStore(config)

    # -- final states -----------------------------------------------------------------------------------------

    def primary_state(self) -> dict[Key, Row]:
        """Live rows of the run's schema on the primary."""
        rows = self._conn.execute(
            f'SELECT collection, key, value, version FROM "{self.schema}".records WHERE value IS NOT NULL'
        ).fetchall()
        return {(c, k): Row(v, ver) for c, k, v, ver in rows}

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A statement on the run's own connection (``{schema}`` is replaced by the run's quoted schema)."""
        cur = self._conn.execute(sql.replace("{schema}", f'"{self.schema}"'), params)
        return list(cur.fetchall()) if cur.description else []

    def node_state(self, name: str) -> dict[Key, Any]:
        """Live rows of a node's SQLite file (open it with the node closed: this reads the file itself)."""
        return read_local_state(self.data_dir(name) / LOCAL_DB)

    # -- end --------------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._drop_schema()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _drop_schema(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        with contextlib.suppress(Exception):
            self._conn.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_local_state(path: Path) -> dict[Key, Any]:
    import json

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT collection, key, value FROM records WHERE value IS NOT NULL").fetchall()
    finally:
        conn.close()
    return {(c, k): json.loads(v) for c, k, v in rows}


def cleanup_leftovers(primary_url: str, base_dir: Path) -> list[str]:
    """Drop the schemas and directories that crashed runs left behind; returns what was removed. A schema whose
    advisory lock is held, or a directory whose owner process lives, belongs to a run in progress: kept."""
    import psycopg

    removed: list[str] = []
    try:
        with psycopg.connect(primary_url, autocommit=True, connect_timeout=10) as conn:
            names = [
                n
                for (n,) in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (SCHEMA_PREFIX,)
                )
            ]
            for name in names:
                (free,) = conn.execute(f"SELECT pg_try_advisory_lock({_lock_sql(name)})").fetchone()  # type: ignore[misc]
                if not free:
                    continue
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                conn.execute(f"SELECT pg_advisory_unlock({_lock_sql(name)})")
                removed.append(f"schema {name}")
    except psycopg.Error as exc:
        log.warning("could not look for leftover resilience schemas: %s", exc)
    for path in base_dir.glob(DIR_PREFIX + "*"):
        try:
            pid = int((path / "owner.pid").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pid = 0
        if pid and _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"directory {path}")
    if removed:
        log.info("removed leftovers of crashed resilience runs: %s", ", ".join(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
