"""The schema of every database hybridstore keeps, as versioned SQL migrations — one set per database:

- ``primary/``: the shared PostgreSQL. ``{schema}`` in a file is replaced by the quoted schema name; applied
  versions are recorded in ``{schema}.hs_migrations``.
- ``local/``: the node's SQLite (``local.db``: records, outbox, dead letters, metadata).
- ``history/``: the recovery service's SQLite (``recovery.db``: alerts and strategy events).
- ``web/``: the HTTP service's SQLite (``web.db``: API keys, audit log, jobs, admin users).

A migration is a file ``NNNN_name.sql``; versions start at 1 and have no gaps (the primary's may: it records each
version applied). Steps are applied in order, each
once, and recorded: in ``hs_migrations`` on the primary, in ``PRAGMA user_version`` for SQLite (the version of the
last step applied). An applied migration is never edited: a change is a new file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("hybridstore.migrations")
Database = Literal["primary", "local", "history", "web"]
DATABASES: tuple[Database, ...] = ("primary", "local", "history", "web")
_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    """One step of a database's schema."""

    version: int
    name: str
    sql: str


def migrations_for(database: Database) -> list[Migration]:
    """Every migration of ``database``, oldest first."""
    return list(_load(database))


def primary_migrations() -> list[Migration]:
    """The primary's migrations (`migrations_for` ``("primary")``)."""
    return migrations_for("primary")


def latest_version(database: Database) -> int:
    """The version a fully migrated ``database`` is at."""
    return _load(database)[-1].version


@functools.cache
def _load(database: Database) -> tuple[Migration, ...]:
    if database not in DATABASES:
        raise ValueError(f"unknown database {database!r}: one of {', '.join(DATABASES)}")
    found = []
    for entry in resources.files(__package__).joinpath(database).iterdir():
        m = _NAME.fullmatch(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    # SQLite's user_version records only the last step applied, so a gap or a duplicate would skip or repeat a
    # step. The primary records every version applied (hs_migrations): there only duplicates are wrong, and
    # numbers may be set aside for work merged later.
    if database == "primary":
        if len(set(versions)) != len(versions) or (versions and versions[0] != 1):
            raise RuntimeError(f"{database} migrations must be numbered from 1 without duplicates; found {versions}")
    elif versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{database} migrations must be numbered 1, 2, 3… without gaps; found {versions}")
    return tuple(found)


def sqlite_statements(script: str) -> list[str]:
    """Split a SQL script into statements (``sqlite3.Connection.execute`` runs one at a time). A ``;`` inside a
    string, a comment or a trigger body does not end a statement."""
    statements: list[str] = []
    pending = ""
    parts = script.split(";")
    for part in parts[:-1]:
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    rest = pending + parts[-1]
    if any(line.strip() and not line.strip().startswith("--") for line in rest.splitlines()):
        raise ValueError(f"SQL script ends inside a statement: {rest.strip()[:80]!r}")
    return statements


def migrate_sqlite(conn: sqlite3.Connection, database: Literal["local", "history", "web"]) -> list[int]:
    """Bring a SQLite database (an autocommit connection: ``isolation_level=None``) up to date; returns the
    versions applied now. Each step runs in its own ``BEGIN IMMEDIATE`` transaction that first re-reads the
    version, so processes opening the same file at once apply every step exactly once. A file newer than this
    code (a later hybridstore wrote it) is left as it is."""
    steps = _load(database)
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    if current >= steps[-1].version:
        if current > steps[-1].version:
            log.warning(
                "%s database is at schema version %s, newer than this hybridstore knows (%s)",
                database,
                current,
                steps[-1].version,
            )
        return []
    applied: list[int] = []
    for mig in steps[current:]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            (current,) = conn.execute("PRAGMA user_version").fetchone()
            if current < mig.version:
                for statement in sqlite_statements(mig.sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {mig.version}")
                applied.append(mig.version)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a broken connection cannot roll back: nothing to undo
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise
    return applied


def migrate_postgres(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Apply the primary's pending migrations to ``schema`` (already quoted) on ``conn``, inside the caller's
    transaction (which serialises concurrent callers: see `PrimaryTier.migrate`); returns the versions applied."""
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.hs_migrations (version int PRIMARY KEY, "
        "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    done = {r[0] for r in conn.execute(f"SELECT version FROM {schema}.hs_migrations")}
    applied: list[int] = []
    for mig in _load("primary"):
        if mig.version in done:
            continue
        conn.execute(mig.sql.replace("{schema}", schema).encode())
        conn.execute(f"INSERT INTO {schema}.hs_migrations (version, name) VALUES (%s, %s)", (mig.version, mig.name))
        applied.append(mig.version)
    return applied
