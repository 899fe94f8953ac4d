"""A least-privilege runtime role: the owner migrates, ``hybridstore grants`` says what the role gets, and every
store operation works as that role; a missing grant or migration is reported as misconfigured, with what is
missing, and writes still fall back locally."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

import hybridstore
from hybridstore.cli import app
from hybridstore.config import resolve
from hybridstore.migrations.grants import FUNCTIONS, NOT_GRANTED, SEQUENCES, TABLES, grants_sql
from hybridstore.tiers.primary import PrimaryTier

from .fix_db import primary_rows

runner = CliRunner()


def _migrate_as_owner(dsn: str, schema: str) -> None:
    tier = PrimaryTier(dsn, schema=schema)
    try:
        tier.migrate()
    finally:
        tier.close()


@pytest.fixture
def role(pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str) -> Iterator[str]:
    """A login role with no privilege of its own (PUBLIC's defaults only); dropped afterwards."""
    name = "hs_rt_" + uuid.uuid4().hex[:10]
    pg.execute(f'CREATE ROLE "{name}" LOGIN')
    yield name
    pg.execute(f'DROP OWNED BY "{name}"')  # its grants, in this database and on the database itself
    pg.execute(f'DROP ROLE "{name}"')


def _url(pg_dsn: str, role: str) -> str:
    return make_conninfo(pg_dsn, user=role)


@pytest.fixture
def granted(pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str, role: str) -> str:
    """The owner migrated the schema and ran what `hybridstore grants` prints; returns the role's URL."""
    _migrate_as_owner(pg_dsn, pg_schema)
    dbname = conninfo_to_dict(pg_dsn)["dbname"]
    pg.execute(grants_sql(role, schema=pg_schema, database=str(dbname)).encode())
    return _url(pg_dsn, role)


def test_declared_grants_cover_every_object_of_a_migrated_schema(
    pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str
) -> None:
    """A migration that adds a table, sequence or function without deciding its runtime grant fails here."""
    _migrate_as_owner(pg_dsn, pg_schema)
    rel = dict(
        pg.execute(
            "SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')",
            (pg_schema,),
        ).fetchall()
    )
    assert {n for n, k in rel.items() if k != "S"} == set(TABLES), "every table (and view) has declared privileges"
    assert {n for n, k in rel.items() if k == "S"} == set(SEQUENCES), "every sequence is granted"
    functions = {
        r[0].split(".", 1)[1].replace(" ", "")
        for r in pg.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s",
            (pg_schema,),
        )
    }
    declared = {f"{name}({args})" for name, args in FUNCTIONS.items()}
    assert functions - declared == {f"{name}()" for name in NOT_GRANTED}, "every function granted or excused"
    assert declared <= functions, "no grant on a function the schema lacks (a changed signature)"
    # Sequences behind serial columns belong to tables the role inserts into.
    owners = pg.execute(
        "SELECT s.relname, t.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
        "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n ON n.oid = s.relnamespace "
        "WHERE n.nspname = %s AND s.relkind = 'S' AND d.deptype = 'a'",
        (pg_schema,),
    ).fetchall()
    assert owners and all("INSERT" in TABLES[table] for _seq, table in owners)


def test_every_store_operation_works_as_a_least_privilege_role(
    tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str, role: str, granted: str
) -> None:
    dbname = str(conninfo_to_dict(pg_dsn)["dbname"])
    assert not pg.execute("SELECT has_database_privilege(%s, %s, 'CREATE')", (role, dbname)).fetchone()[0]  # type: ignore[index]
    opts: dict[str, Any] = {
        "primary_schema": pg_schema,
        "background": False,
        "conflict_strategies": {"orders": "manual"},
    }
    # One node keeps the default (auto-migration on: skipped, the schema is current), one turns it off.
    a = hybridstore.open(granted, data_dir=tmp_path / "a", **opts)
    b = hybridstore.open(granted, data_dir=tmp_path / "b", migrate=False, write_mode="local_first", **opts)
    try:
        for store in (a, b):
            store.node.gateway.tick()
            assert store.node.gateway.snapshot()["state"] == "healthy", store.node.gateway.snapshot()
        assert a.set("products", "p1", {"price": 1}).tier == "primary"
        assert all(r.queued for r in a.set_many("products", [("p2", 2), ("p3", 3)]))
        assert a.sync_now().pushed == 2  # a batch: hs_push
        assert a.delete("products", "p3").tier == "primary"
        got = a.get("products", "p1")
        assert got is not None and got.value == {"price": 1} and got.source == "primary"
        assert [r.key for r in a.list("products").records] == ["p1", "p2"]

        # sync between two nodes, and a manual conflict (conflicts + its sequence, the audit log and its sequence)
        a.set("orders", "o1", {"status": "new"})
        b.sync_now()
        assert b.get("orders", "o1").value == {"status": "new"}  # type: ignore[union-attr]
        assert b.set("orders", "o1", {"status": "b"}).queued
        a.set("orders", "o1", {"status": "a"})
        report = b.sync_now()
        assert report.remaining == 0
        (conflict,) = a.conflicts(status="open")
        assert conflict.local == {"status": "b"} and conflict.remote == {"status": "a"}
        assert a.resolve_conflict(conflict.id, choice="local", actor="ops") is not None
        assert a.conflicts(status="open") == []
        assert primary_rows(pg, pg_schema, "orders")["o1"][0] == {"status": "b"}
        assert b.sync_now(full=True).remaining == 0  # a full resync: count, then the whole feed
        assert b.get("orders", "o1").value == {"status": "b"}  # type: ignore[union-attr]

        # backups kept on the primary (system_backups, backup_chunks by COPY), listed from the other node, pruned
        info = a.backups.create_manual_backup("least privilege")
        assert "primary" in info.locations
        assert info.id in {x.id for x in b.backups.list_backups()}
        assert a.backups.verify_backup(info.id).records == 3  # p1, p2, o1
        a.set("products", "p1", {"price": 99})
        b.backups.restore_backup(info.id, collections=["products"])  # downloaded from the primary, written back
        assert b.sync_now().remaining == 0
        assert primary_rows(pg, pg_schema, "products")["p1"][0] == {"price": 1}
        a.backups.update_config(max_backups=5)  # system_config upsert
        assert a.backups.delete_backup(info.id).id == info.id
        gone = pg.execute(f'SELECT count(*) FROM "{pg_schema}".system_backups WHERE id = %s', (info.id,)).fetchone()
        assert gone == (0,), "deleted from the primary too (its chunks with it)"
        a.sync_status(refresh=True)  # conflict counts
        assert a.node.heartbeat.beat() and b.node.heartbeat.beat()  # heartbeat rows (upsert)
        assert {n["node_id"] for n in a.nodes()} == {a.node_id, b.node_id}
        assert a.health()["primary"]["state"] == "healthy"
        assert a.node.gateway.misconfigured is None and b.node.gateway.misconfigured is None
    finally:
        a.close()
        b.close()


def test_a_missing_grant_is_misconfigured_names_it_and_writes_fall_back(
    tmp_path: Path, pg: psycopg.Connection[Any], pg_schema: str, role: str, granted: str
) -> None:
    pg.execute(f'REVOKE USAGE ON SEQUENCE "{pg_schema}".conflicts_id_seq FROM "{role}"')
    store = hybridstore.open(granted, data_dir=tmp_path / "n", primary_schema=pg_schema, background=False)
    try:
        store.node.gateway.tick()
        snap = store.node.gateway.snapshot()
        assert snap["state"] == "misconfigured"
        assert f"USAGE on sequence {pg_schema}.conflicts_id_seq" in snap["detail"]
        assert "grants ROLE" in snap["detail"]
        result = store.set("c", "k", 1)
        assert result.tier == "local" and result.queued, "the write is queued, not lost"
        assert store.node.gateway.tick() == 2.0, "probed every 2 s, not 4 times a second, while refused"
        assert store.node.gateway.snapshot()["state"] == "misconfigured", "it stays misconfigured while it is"
        assert store.recovery.check()["components"]["primary"]["misconfigured"] is True

        pg.execute(f'GRANT USAGE ON SEQUENCE "{pg_schema}".conflicts_id_seq TO "{role}"')
        store.node.gateway.tick()
        assert store.node.gateway.snapshot()["state"] == "healthy"
        assert store.sync_now().remaining == 0
        assert primary_rows(pg, pg_schema)["k"][0] == 1
    finally:
        store.close()


def test_a_refused_statement_is_named_and_the_write_is_queued(
    tmp_path: Path, pg: psycopg.Connection[Any], pg_schema: str, role: str, granted: str
) -> None:
    store = hybridstore.open(granted, data_dir=tmp_path / "n", primary_schema=pg_schema, background=False)
    try:
        store.node.gateway.tick()
        assert store.set("c", "k1", 1).tier == "primary"
        pg.execute(f'REVOKE INSERT ON "{pg_schema}".records FROM "{role}"')  # revoked while it runs
        result = store.set("c", "k2", 2)
        assert result.tier == "local" and result.queued
        detail = store.node.gateway.snapshot()["detail"]
        assert "permission denied for table records" in detail and "statement: SELECT" in detail
        assert "hs_push_one" in detail, detail
        store.node.gateway.tick()  # the prober checks the privileges again: still missing
        assert store.node.gateway.snapshot()["state"] == "misconfigured"
        assert f"INSERT on table {pg_schema}.records" in store.node.gateway.snapshot()["detail"]
    finally:
        store.close()


def test_a_schema_behind_with_migration_off_or_without_ddl_rights_is_misconfigured(
    tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str, role: str
) -> None:
    url = _url(pg_dsn, role)
    off = hybridstore.open(url, data_dir=tmp_path / "off", primary_schema=pg_schema, background=False, migrate=False)
    on = hybridstore.open(url, data_dir=tmp_path / "on", primary_schema=pg_schema, background=False)
    try:
        off.node.gateway.tick()
        detail = off.node.gateway.snapshot()["detail"]
        assert "lacks migration(s) 1, 2" in detail and "migrate --admin-url" in detail
        on.node.gateway.tick()
        snap = on.node.gateway.snapshot()
        assert snap["state"] == "misconfigured" and "permission denied for database" in snap["detail"]
        for store in (off, on):
            assert store.set("c", "k", 1).queued
            assert store.health()["primary"]["state"] == "misconfigured"
        attempts = on.node.gateway.probes
        for i in range(20):  # not retried on every call: the circuit keeps calls away
            assert on.set("c", f"k{i}", i).queued
        assert on.node.gateway.probes == attempts
        # The owner migrates with `hybridstore migrate --admin-url`, then grants what `hybridstore grants` prints.
        res = runner.invoke(
            app,
            [
                "--primary-url",
                url,
                "--schema",
                pg_schema,
                "-d",
                str(tmp_path / "cli"),
                "migrate",
                "--admin-url",
                pg_dsn,
            ],
        )
        assert res.exit_code == 0, res.output
        assert "applied migrations 1, 2" in res.output
        res = runner.invoke(app, ["--primary-url", url, "--schema", pg_schema, "grants", role])
        assert res.exit_code == 0 and res.output.startswith("-- hybridstore runtime role")
        assert f'GRANT USAGE ON SCHEMA "{pg_schema}" TO "{role}";' in res.output
        pg.execute(res.output.encode())
        res = runner.invoke(app, ["--schema", pg_schema, "grants", role, "--database", "test", "--json"])
        doc = json.loads(res.stdout)
        assert doc["role"] == role and doc["database"] == "test" and "GRANT CONNECT ON DATABASE" in doc["sql"]
        for store in (off, on):
            store.node.gateway.tick()
            assert store.node.gateway.snapshot()["state"] == "healthy"
            assert store.sync_now().remaining == 0
        assert set(primary_rows(pg, pg_schema)) == {"k"} | {f"k{i}" for i in range(20)}
    finally:
        off.close()
        on.close()


def test_auto_migration_and_session_url_come_from_the_environment() -> None:
    config = resolve(
        env={
            "HYBRIDSTORE_AUTO_MIGRATE": "0",
            "HYBRIDSTORE_PRIMARY_SESSION_URL": "postgresql://u@db.x.supabase.co:5432/postgres",
            "HYBRIDSTORE_PRIMARY_POOLED": "true",
        }
    )
    assert config.migrate is False and config.primary_pooled is True
    assert config.primary_session_url == "postgresql://u@db.x.supabase.co:5432/postgres"
    assert resolve(env={}).migrate is True and resolve(env={"HYBRIDSTORE_AUTO_MIGRATE": "1"}).migrate is True
    assert resolve(env={"HYBRIDSTORE_AUTO_MIGRATE": "0"}, migrate=True).migrate is True, "an option wins"
    with pytest.raises(hybridstore.ConfigError, match="HYBRIDSTORE_AUTO_MIGRATE"):
        resolve(env={"HYBRIDSTORE_AUTO_MIGRATE": "maybe"})


def test_grants_sql_quotes_names_and_grants_no_ddl() -> None:
    text = grants_sql('we"ird', schema="s", database="db")
    assert 'TO "we""ird";' in text
    statements = [line for line in text.splitlines() if line and not line.startswith("--")]
    assert all(line.startswith("GRANT ") for line in statements)
    assert not any(word in text for word in ("CREATE", "TRUNCATE", "ALL PRIVILEGES", "REFERENCES", "TRIGGER"))
