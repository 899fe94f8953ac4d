"""Telling a transaction-mode pooler (PgBouncer, Supavisor, pgcat …) from how the server behaves.

A URL on PgBouncer's usual port 6432, or behind any name, says nothing. What defines transaction pooling is that
a client's server backend can change between transactions: two client connections may share one backend, and
one client may see its backend change. `detect_transaction_pooler` checks exactly that with two connections:

1. client A asks for its backend's pid (A's transaction ends, its backend goes back to the pool);
2. client B opens a transaction and asks for its pid: the same pid as A's → a pooler handed A's backend to B;
3. otherwise, while B holds its transaction, A asks again: a different pid → A's backend changed.

Directly connected, or through a session-mode pooler, every client keeps one backend: the pids never match and
never change. The check costs two connections and a dozen short round trips, once per tier.

A server that refuses the ``options`` startup parameter (PgBouncer's default; a session pooler may too) is
connected to without it, its limits set per transaction; whether it pools by transaction is still told by the
check above. Any prepared-statement error (``prepared statement "_pg3_0" does not exist / already exists``)
means a transaction pooler too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

# 26000 invalid_sql_statement_name ("prepared statement … does not exist"), 42P05 duplicate_prepared_statement.
PREPARED_STATEMENT_STATES = ("26000", "42P05")


def refuses_startup_options(exc: BaseException) -> bool:
    """Did the connection fail because the server (a pooler) refuses a startup parameter such as ``options``?"""
    return "unsupported startup parameter" in str(exc)


def is_prepared_statement_error(exc: BaseException) -> bool:
    """A server-side prepared statement went missing or collided: the backend changed under the connection."""
    if getattr(exc, "sqlstate", None) in PREPARED_STATEMENT_STATES:
        return True
    text = str(exc)
    return "prepared statement" in text and ("does not exist" in text or "already exists" in text)


def _pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def detect_transaction_pooler(a: psycopg.Connection[Any], b: psycopg.Connection[Any], *, rounds: int = 3) -> bool:
    """True when the two autocommit connections ``a`` and ``b`` (to the same address, idle) go through a
    transaction-mode pooler (see the module docstring). A pooler that picks server connections at random may
    hand ``a`` its old one back by chance, so the check runs up to ``rounds`` times. Raises what a query raises."""
    for _ in range(rounds):
        first = _pid(a)
        b.execute("BEGIN")
        try:
            if _pid(b) == first or _pid(a) != first:
                return True
        finally:
            b.execute("ROLLBACK")
    return False
