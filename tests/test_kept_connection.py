"""The primary tier keeps one pool connection between calls (`PrimaryConnection._checkout`): the next call that
finds it free reuses it; a call made while it is in use takes one from the pool; a connection left in a
transaction, a broken one, or one of a replaced pool is given back to its pool instead of being kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hybridstore.errors import PrimaryRejectedError
from hybridstore.tiers.primary import PrimaryTier


@pytest.fixture
def tier(pg_dsn: str, pg_schema: str) -> Iterator[PrimaryTier]:
    t = PrimaryTier(pg_dsn, schema=pg_schema)
    yield t
    t.close()


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_calls_reuse_the_kept_connection(tier: PrimaryTier) -> None:
    first = tier._run(backend_pid)
    assert tier._kept is not None and tier._kept[1].info.backend_pid == first
    assert [tier._run(backend_pid) for _ in range(3)] == [first] * 3


def test_a_call_made_while_it_is_in_use_takes_another(tier: PrimaryTier) -> None:
    def outer(conn: psycopg.Connection[Any]) -> tuple[int, int]:
        return backend_pid(conn), tier._run(backend_pid)  # a second call before the first one ends

    mine, other = tier._run(outer)
    assert mine != other
    assert tier._run(backend_pid) == mine, "the kept connection is still kept"


def test_a_connection_left_in_a_transaction_is_not_kept(tier: PrimaryTier) -> None:
    def leave_open(conn: psycopg.Connection[Any]) -> None:
        conn.execute("BEGIN")
        conn.execute("CREATE TEMP TABLE left_behind (x int)")

    tier._run(leave_open)
    assert tier._kept is None, "given back to the pool, which rolls the transaction back"
    for _ in range(3):  # whichever connection serves next: idle, and the abandoned transaction undone
        status, found = tier._run(
            lambda conn: (conn.pgconn.transaction_status, conn.execute("SELECT to_regclass('left_behind')").fetchone())
        )
        assert status == psycopg.pq.TransactionStatus.IDLE and found == (None,)


def test_a_failed_statement_keeps_a_usable_connection(tier: PrimaryTier) -> None:
    with pytest.raises(PrimaryRejectedError):
        tier._run(lambda conn: conn.execute("SELECT 1/0"))
    assert tier._run(lambda conn: conn.execute("SELECT 41 + 1").fetchone()) == (42,)


def test_a_replaced_pool_takes_its_connection_back(tier: PrimaryTier) -> None:
    tier._run(backend_pid)
    assert tier._kept is not None
    old_pool, old_conn = tier._kept
    tier.reset_pool()
    tier._run(backend_pid)
    assert tier._kept is not None
    assert tier._kept[0] is tier._pool and tier._pool is not old_pool and tier._kept[1] is not old_conn


def test_close_gives_the_kept_connection_back(tier: PrimaryTier) -> None:
    tier._run(backend_pid)
    assert tier._kept is not None
    tier.close()
    assert tier._kept is None


def test_the_kept_connection_goes_back_to_the_pool_in_time(tier: PrimaryTier) -> None:
    """Kept for `KEEP_CONNECTION_FOR` seconds at most, so the pool's lifetime and idle rules still apply to it."""
    tier._run(backend_pid)
    assert tier._kept is not None
    tier._kept_until = 0.0  # its time is up (a monotonic clock is past 0)
    tier._run(backend_pid)
    assert tier._kept is None, "given back after the call that found its time up"
    tier._run(backend_pid)
    assert tier._kept is not None, "and a connection is kept again"


def test_the_kept_connection_reuses_one_statement_cursor(tier: PrimaryTier) -> None:
    def cursors(conn: psycopg.Connection[Any]) -> tuple[psycopg.Cursor[Any], psycopg.Cursor[Any]]:
        return tier.statement_cursor(conn), tier.statement_cursor(conn)

    a, b = tier._run(cursors)
    assert a is b and tier._run(cursors)[0] is a, "one cursor for every call on the kept connection"

    def nested(conn: psycopg.Connection[Any]) -> tuple[psycopg.Cursor[Any], psycopg.Cursor[Any]]:
        return tier.statement_cursor(conn), tier._run(lambda other: tier.statement_cursor(other))

    kept, other = tier._run(nested)
    assert kept is a and other is not a, "a connection from the pool gets a cursor of its own"
    tier._kept_until = 0.0  # its time is up: the connection goes back to the pool, its cursor with it
    tier._run(backend_pid)
    assert tier._kept is None and tier._kept_cursor is None
    fresh = tier._run(cursors)[0]
    assert fresh is not a and fresh.connection is tier._kept[1]  # type: ignore[index]
