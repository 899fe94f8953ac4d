"""Safety of a resilience run: it leaves the production schema and data directory byte-for-byte unchanged, refuses
to start when it cannot make its own sandbox, and removes what a crashed run left behind (never a live run's)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore.errors import ConfigError
from hybridstore.resilience.runner import RunOptions, run
from hybridstore.resilience.sandbox import DIR_PREFIX, SCHEMA_PREFIX, Sandbox

pytestmark = pytest.mark.resilience


def schema_dump(conn: psycopg.Connection[Any], schema: str) -> str:
    """Every row of every table of a schema, in a stable order, as text."""
    digest = hashlib.sha256()
    tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,))]
    assert tables
    for table in tables:
        rows = conn.execute(f'SELECT t::text FROM "{schema}"."{table}" t ORDER BY 1').fetchall()
        digest.update(f"{table}:{rows!r}\n".encode())
    return digest.hexdigest()


def dir_bytes(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_a_run_leaves_production_untouched(
    tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    prod = tmp_path / "prod"
    with hybridstore.open(pg_dsn, data_dir=prod, primary_schema=pg_schema, backups=False) as store:
        for i in range(50):
            store.set("resilience", f"a-{i:07d}", {"w": "a", "n": i})  # the very keys a run writes
    before_schema, before_dir = schema_dump(pg, pg_schema), dir_bytes(prod)
    # the configuration points at production: the run must use its own sandbox all the same
    monkeypatch.setenv("HYBRIDSTORE_DATA_DIR", str(prod))
    monkeypatch.setenv("HYBRIDSTORE_PRIMARY_SCHEMA", pg_schema)
    runs = tmp_path / "runs"
    runs.mkdir()
    report = run(
        RunOptions(pg_dsn, scenarios=["primary_outage", "local_corruption"], duration=2, seed=9, base_dir=runs)
    )
    assert report["passed"], report["scenarios"]
    assert schema_dump(pg, pg_schema) == before_schema, "the production schema is byte-for-byte unchanged"
    assert dir_bytes(prod) == before_dir, "the production data directory is byte-for-byte unchanged"
    sandbox_schema = report["sandbox"]["schema"]
    assert sandbox_schema.startswith(SCHEMA_PREFIX)
    left = pg.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (sandbox_schema,)).fetchall()
    assert left == [], "the run dropped its schema"
    assert list(runs.iterdir()) == [], "the run removed its directories"


def test_refuses_to_start_without_its_own_schema(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    role = "hs_noprivs_" + uuid.uuid4().hex[:8]
    pg.execute(f"CREATE ROLE {role} LOGIN")
    try:
        url = pg_dsn.replace("postgres@", f"{role}@", 1)
        with pytest.raises(ConfigError, match="refused: cannot create its own schema"):
            Sandbox(url, base_dir=tmp_path)
        assert list(tmp_path.iterdir()) == [], "nothing was made"
    finally:
        pg.execute(f"DROP ROLE {role}")


def test_leftovers_of_a_crashed_run_are_removed_not_a_live_runs(
    tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    crashed_dir = tmp_path / f"{DIR_PREFIX}dead0001-x"
    crashed_dir.mkdir()
    (crashed_dir / "owner.pid").write_text(str(dead_pid))
    live_dir = tmp_path / f"{DIR_PREFIX}live0001-x"
    live_dir.mkdir()
    (live_dir / "owner.pid").write_text("1")  # a process that lives
    crashed_schema = f"{SCHEMA_PREFIX}dead{uuid.uuid4().hex[:6]}"
    pg.execute(f'CREATE SCHEMA "{crashed_schema}"')
    with Sandbox(pg_dsn, base_dir=tmp_path) as live_run:  # the next run removes the crashed run's leftovers
        assert f"schema {crashed_schema}" in live_run.cleaned
        assert f"directory {crashed_dir}" in live_run.cleaned
        assert not crashed_dir.exists() and live_dir.exists()
        with Sandbox(pg_dsn, base_dir=tmp_path) as sandbox:  # ... and never those of a run in progress
            assert not any(live_run.schema in c or str(live_run.dir) in c for c in sandbox.cleaned), sandbox.cleaned
            assert live_run.dir.exists() and live_dir.exists()
            schemas = {n for (n,) in pg.execute("SELECT nspname FROM pg_namespace")}
            assert {live_run.schema, sandbox.schema} <= schemas and crashed_schema not in schemas
