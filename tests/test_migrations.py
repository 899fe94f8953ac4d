"""The schema homes: one migration registry for the primary, the local SQLite and the recovery history, and
SQLite files written by earlier releases opening and upgrading without losing rows."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

import pytest

from hybridstore.migrations import (
    DATABASES,
    latest_version,
    migrate_sqlite,
    migrations_for,
    primary_migrations,
    sqlite_statements,
)
from hybridstore.model import Op
from hybridstore.recovery.alerts import Alert
from hybridstore.recovery.history import RecoveryHistory, StrategyEvent
from hybridstore.tiers.local import LocalTier

# The local schema as the code before the registry kept it (``_SCHEMA`` in ``tiers/local.py`` at aba8f57,
# applied with ``PRAGMA user_version``), copied verbatim: files it wrote must keep opening.
RELEASED_LOCAL_SCHEMA = [
    # version 1
    """
    CREATE TABLE records (
        collection  TEXT NOT NULL,
        key         TEXT NOT NULL,
        value       TEXT,               -- canonical JSON; NULL = tombstone
        version     INTEGER NOT NULL,   -- last primary version seen (0 = never on the primary)
        hlc         TEXT NOT NULL,
        origin      TEXT NOT NULL,
        updated_at  REAL NOT NULL,
        synced_at   REAL,               -- NULL while local changes are pending
        pending_seq INTEGER,            -- outbox seq of the newest pending op for this key
        base_value  TEXT,               -- while pending: the last value agreed with the primary (merge base)
        PRIMARY KEY (collection, key)
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY,
        op_id      TEXT NOT NULL,
        collection TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT,
        hlc        TEXT NOT NULL,
        origin     TEXT NOT NULL,
        created_at REAL NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
    """,
    # version 2: sync engine — rejections of an op by the primary, and dead letters
    """
    ALTER TABLE outbox ADD COLUMN rejections INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE dead_letters (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids are never reused
        op_id      TEXT NOT NULL,
        collection TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT,
        hlc        TEXT NOT NULL,
        origin     TEXT NOT NULL,
        created_at REAL NOT NULL,
        attempts   INTEGER NOT NULL,
        last_error TEXT,
        dead_at    REAL NOT NULL
    );
    """,
]
# The recovery history's schema before the registry (``recovery/history.py`` at aba8f57): no version recorded.
RELEASED_HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL, node_id TEXT,
    details TEXT NOT NULL, raised_at REAL NOT NULL, resolved_at REAL, resolution TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, strategy TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL,
    outcome TEXT NOT NULL, summary TEXT NOT NULL, details TEXT NOT NULL
);
"""


def released_local_db(path: Path, version: int) -> None:
    """A local.db as the released code wrote it, at ``version``, holding a record, a pending op and meta."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    for v, ddl in enumerate(RELEASED_LOCAL_SCHEMA[:version], start=1):  # the released _migrate()
        conn.executescript(f"BEGIN IMMEDIATE; {ddl}; PRAGMA user_version={v}; COMMIT;")
    conn.execute(
        "INSERT INTO records VALUES ('c', 'synced', '{\"a\":1}', 3, 'h1', 'n0', 1.0, 2.0, NULL, NULL), "
        "('c', 'pending', '\"new\"', 1, 'h9', 'n1', 5.0, NULL, 7, '\"old\"')"
    )
    conn.execute(
        "INSERT INTO outbox (seq, op_id, collection, key, value, hlc, origin, created_at) "
        "VALUES (7, 'op-7', 'c', 'pending', '\"new\"', 'h9', 'n1', 5.0)"
    )
    conn.execute("INSERT INTO meta VALUES ('pull_cursor', '[1, \"c\", \"synced\"]')")
    if version >= 2:
        conn.execute(
            "INSERT INTO dead_letters (op_id, collection, key, value, hlc, origin, created_at, attempts, last_error, "
            "dead_at) VALUES ('op-1', 'c', 'bad', '1', 'h0', 'n1', 0.5, 3, 'refused', 0.9)"
        )
    conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def schema_of(path: Path) -> list[tuple[str, str, str]]:
    """Every table and index, with its SQL stripped of comments and spacing (so text layout does not count)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    finally:
        conn.close()
    return [(t, n, " ".join(re.sub(r"--[^\n]*", "", sql or "").split())) for t, n, sql in rows]


# -- the registry ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", DATABASES)
def test_each_database_has_ordered_migrations(database: str) -> None:
    steps = migrations_for(database)  # type: ignore[arg-type]
    versions = [m.version for m in steps]
    if database == "primary":  # every version applied is recorded: numbers set aside for later work may be missing
        assert versions == sorted(set(versions)) and versions[0] == 1
    else:  # PRAGMA user_version keeps only the last step applied: no gaps
        assert versions == list(range(1, len(steps) + 1))
    assert latest_version(database) == steps[-1].version  # type: ignore[arg-type]
    assert all(m.sql.strip() and re.fullmatch(r"[a-z0-9_]+", m.name) for m in steps)


def test_primary_migrations_are_the_primary_set() -> None:
    assert primary_migrations() == migrations_for("primary")
    with pytest.raises(ValueError, match="unknown database"):
        migrations_for("elsewhere")  # type: ignore[arg-type]


def test_sqlite_statements_split_only_between_statements() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (a TEXT DEFAULT 'x;y');  CREATE TABLE u (b TEXT);
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES ('z'); END;
    -- trailing comment
    """
    statements = sqlite_statements(script)
    assert len(statements) == 3
    assert statements[0].endswith("DEFAULT 'x;y');") and statements[2].endswith("END;")
    with pytest.raises(ValueError, match="ends inside a statement"):
        sqlite_statements("CREATE TABLE t (a TEXT);\nCREATE TABLE u (b")


# -- local.db ---------------------------------------------------------------------------------------------------


def test_fresh_local_db_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    LocalTier(path).close()
    assert user_version(path) == latest_version("local") == len(RELEASED_LOCAL_SCHEMA)
    # the .sql files hold the same schema as the released code created
    released = tmp_path / "released.db"
    released_local_db(released, len(RELEASED_LOCAL_SCHEMA))
    assert schema_of(path) == schema_of(released)


@pytest.mark.parametrize("version", [1, 2])
def test_released_local_db_opens_and_upgrades_without_losing_rows(tmp_path: Path, version: int) -> None:
    path = tmp_path / "local.db"
    released_local_db(path, version)
    tier = LocalTier(path)
    try:
        assert user_version(path) == latest_version("local")
        synced, pending = tier.get("c", "synced"), tier.get("c", "pending")
        assert synced is not None and (synced.value_json, synced.version, synced.synced_at) == ('{"a":1}', 3, 2.0)
        assert pending is not None and pending.value_json == '"new"' and pending.synced_at is None
        [(seq, op, base)] = tier.pending_ops(10)
        assert (seq, op.op_id, op.base_version, base) == (7, "op-7", 1, '"old"')
        assert tier.meta_get("pull_cursor") == '[1, "c", "synced"]'
        assert tier.dead_letter_count() == (1 if version >= 2 else 0)
        assert tier.last_seq == 7
        # and it keeps working: the next op is queued after the old ones
        assert tier.queue(Op("op-8", "c", "k", "1", "h10", "n1", 0, 6.0))
        assert tier.last_seq == 8 and tier.outbox_stats()[0] == 2
        assert not tier.reject(7, "refused", max_rejections=5)  # the rejections column exists
    finally:
        tier.close()
    LocalTier(tmp_path / "fresh.db").close()
    assert schema_of(path) == schema_of(tmp_path / "fresh.db")


def test_a_file_newer_than_the_code_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    LocalTier(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {latest_version('local') + 5}")
    assert migrate_sqlite(conn, "local") == []
    conn.close()
    LocalTier(path).close()
    assert user_version(path) == latest_version("local") + 5


def test_many_openers_apply_each_step_once(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_it() -> None:
        start.wait()
        try:
            LocalTier(path).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert user_version(path) == latest_version("local")


# -- recovery.db ------------------------------------------------------------------------------------------------


def test_fresh_history_db_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "recovery.db"
    RecoveryHistory(path).close()
    assert user_version(path) == latest_version("history")
    assert {n for t, n, _ in schema_of(path) if t == "table"} == {"alerts", "events"}


def test_released_history_db_opens_without_losing_rows(tmp_path: Path) -> None:
    path = tmp_path / "recovery.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(RELEASED_HISTORY_SCHEMA)
    conn.execute(
        "INSERT INTO alerts VALUES ('a1', 'primary_outage', 'critical', 'primary down', 'n1', '{}', 1.0, NULL, NULL)"
    )
    conn.execute("INSERT INTO events VALUES ('e1', 'cache_fallback', 1.0, 2.0, 'succeeded', 'ok', '{}')")
    conn.close()
    assert user_version(path) == 0
    history = RecoveryHistory(path)
    try:
        assert user_version(path) == latest_version("history")
        assert [a.id for a in history.load_alerts()] == ["a1"]
        assert [(e.id, e.outcome) for e in history.load_events()] == [("e1", "succeeded")]
        history.save_alert(Alert("local_corruption", "critical", "bad page", 3.0, "n1", {}, id="a2"))
        history.save_event(StrategyEvent("rebuild", 3.0, id="e2"))
        assert len(history.load_alerts()) == 2 and len(history.load_events()) == 2
    finally:
        history.close()
