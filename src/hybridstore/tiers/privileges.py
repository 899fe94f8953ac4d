"""Privileges of the role a node connects as: which statement was refused, and what is missing.

A least-privilege runtime role (see `hybridstore.migrations.grants`) that lacks a grant must be reported as
misconfigured — naming the statement that needed it — not as a healthy primary that fails every call. Two ways
in: `StatementCursor` remembers the statement a refused call ran, so the error can name it; and
`missing_privileges` asks the catalog, once the schema is current, for every declared privilege the role lacks,
so a node finds out at start rather than at the first conflict.
"""

from __future__ import annotations

from typing import Any

from ..migrations.grants import runtime_privileges

try:
    import psycopg
except ImportError:  # pragma: no cover - exercised only without the [postgres] extra
    psycopg = None  # type: ignore[assignment]

INSUFFICIENT_PRIVILEGE = "42501"
_STATEMENT_ATTR = "hybridstore_statement"

if psycopg is not None:

    class StatementCursor(psycopg.Cursor[Any]):
        """A cursor that tags a failed statement's error with the statement (first 200 characters)."""

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> StatementCursor:
            try:
                super().execute(query, params, **kwargs)
            except psycopg.Error as exc:
                text = query.decode(errors="replace") if isinstance(query, bytes) else str(query)
                setattr(exc, _STATEMENT_ATTR, " ".join(text.split())[:200])
                raise
            return self


def statement_of(exc: BaseException) -> str | None:
    """The statement a failed call ran, if a `StatementCursor` tagged it."""
    value = getattr(exc, _STATEMENT_ATTR, None)
    return value if isinstance(value, str) else None


def is_privilege_error(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == INSUFFICIENT_PRIVILEGE


def missing_privileges(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """Every declared runtime privilege the connected role lacks on ``schema`` (unquoted), as readable
    ``"INSERT on table s.conflicts"`` lines; objects the schema does not have (a newer or older schema) are
    skipped."""
    wanted = runtime_privileges()
    rows = conn.execute(
        """
        SELECT w.kind, w.name, w.privilege FROM unnest(%s::text[], %s::text[], %s::text[]) AS w(kind, name, privilege)
        WHERE NOT coalesce(CASE w.kind
            WHEN 'table' THEN has_table_privilege(to_regclass(format('%%I.%%I', %s::text, w.name)), w.privilege)
            WHEN 'sequence' THEN has_sequence_privilege(to_regclass(format('%%I.%%I', %s::text, w.name)), w.privilege)
            WHEN 'function' THEN has_function_privilege(
                to_regprocedure(format('%%I.%%s', %s::text, w.name)), w.privilege)
            END, true)
        """,
        (
            [p.kind for p in wanted],
            [p.name for p in wanted],
            [p.privilege for p in wanted],
            schema,
            schema,
            schema,
        ),
    ).fetchall()
    return [f"{privilege} on {kind} {schema}.{name}" for kind, name, privilege in rows]
