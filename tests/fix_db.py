"""PostgreSQL fixtures: the real server, one throwaway schema per test, a store factory."""

from __future__ import annotations

import atexit
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore import HybridStore

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DSN_ENV = "HYBRIDSTORE_TEST_DSN"
_resolved: str | None = None


def _reachable(dsn: str) -> str | None:
    """``None`` when a connection works, else why not."""
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip()
    return None


def resolve_dsn() -> str:
    """The test server: ``$HYBRIDSTORE_TEST_DSN`` (it must answer), else the local default, else — when no
    PostgreSQL answers there — a throwaway cluster this test session starts itself (Debian's ``initdb`` /
    ``pg_ctl``, found through ``pg_config``) and stops at exit, so the suite runs on a machine with no server."""
    global _resolved
    if _resolved is not None:
        return _resolved
    explicit = os.environ.get(DSN_ENV)
    why = _reachable(explicit or DEFAULT_DSN)
    if why is None:
        _resolved = explicit or DEFAULT_DSN
        return _resolved
    if explicit:
        pytest.fail(f"{DSN_ENV}={explicit} does not answer: {why}")
    if shutil.which("pg_config") is None:
        pytest.fail(f"no PostgreSQL at {DEFAULT_DSN} ({why}) and no pg_config to start one: install postgresql")
    from .fix_cluster import Cluster

    cluster = Cluster()
    atexit.register(cluster.close)
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE test")
    _resolved = cluster.dsn.rsplit("/", 1)[0] + "/test"
    return _resolved


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    return resolve_dsn()


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A schema name of this test's own; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


StoreFactory = Callable[..., HybridStore]


@pytest.fixture
def make_store(tmp_path: Path, pg_dsn: str, pg_schema: str) -> Iterator[StoreFactory]:
    """``make_store(name="a", primary=True, **options)``: a store with its own data dir; closed at teardown.
    ``primary`` may be True (the test server), a URL (e.g. through a proxy) or False (embedded)."""
    opened: list[HybridStore] = []

    def factory(name: str = "node", primary: bool | str = True, **options: Any) -> HybridStore:
        url = pg_dsn if primary is True else (primary or None)
        options.setdefault("primary_schema", pg_schema)
        store = hybridstore.open(url, data_dir=tmp_path / name, **options)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def primary_rows(conn: psycopg.Connection[Any], schema: str, collection: str | None = None) -> dict[str, Any]:
    """key -> (value, version) of live rows on the primary."""
    sql = f'SELECT key, value, version FROM "{schema}".records WHERE value IS NOT NULL AND version > 0'
    params: tuple[Any, ...] = ()
    if collection:
        sql += " AND collection = %s"
        params = (collection,)
    return {k: (v, ver) for k, v, ver in conn.execute(sql, params)}
