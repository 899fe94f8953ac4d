"""What a runtime role needs on the primary's schema, and the SQL that grants exactly that.

hybridstore can run as a least-privilege role: the schema's owner applies the migrations
(``hybridstore migrate --admin-url …``), and the role the nodes connect as gets CONNECT on the database, USAGE
on the schema, and per object only what the code does with it (``hybridstore grants ROLE`` prints the SQL).

The lists below are kept next to the migrations on purpose: a migration that adds a table, a sequence or a
function must say here what the runtime role may do with it (or why it gets nothing), and a test compares these
lists with the catalog of a freshly migrated schema, so an object without a decision fails the build.
"""

from __future__ import annotations

from dataclasses import dataclass

# Table → the privileges the runtime role needs on it (the store's own statements and those of the SQL
# functions it calls, which run with the caller's rights). An upsert (INSERT … ON CONFLICT DO UPDATE) needs
# SELECT, INSERT and UPDATE.
TABLES: dict[str, tuple[str, ...]] = {
    "hs_migrations": ("SELECT",),  # is the schema current? (read without any DDL privilege)
    "records": ("SELECT", "INSERT", "UPDATE"),  # tombstones, never deleted by the runtime role
    "applied_ops": ("SELECT", "INSERT", "UPDATE"),  # the op-id ledger
    "conflicts": ("SELECT", "INSERT", "UPDATE"),
    "audit_log": ("INSERT",),  # written, never read back by a node
    "system_backups": ("SELECT", "INSERT", "UPDATE", "DELETE"),  # the backup catalogue and retention
    "backup_chunks": ("SELECT", "INSERT", "DELETE"),  # backup files (COPY … FROM STDIN is an INSERT)
    "system_config": ("SELECT", "INSERT", "UPDATE"),  # runtime settings (upsert)
    "nodes": ("SELECT", "INSERT", "UPDATE"),  # heartbeats: each node upserts its row, reads everyone's
    "api_keys": ("SELECT", "INSERT", "UPDATE"),  # shared API keys: checked, created, revoked, last use noted
}

# Sequences behind ``bigserial`` columns of tables the role inserts into: nextval() needs USAGE.
SEQUENCES: tuple[str, ...] = ("conflicts_id_seq", "audit_log_id_seq")

# Functions the role calls (directly, or nested: SECURITY INVOKER functions check EXECUTE for every call),
# with their argument types as the catalog prints them.
FUNCTIONS: dict[str, str] = {
    "hs_push_one": "uuid,text,text,text,text,text,bigint,text,text",
    "hs_push": "uuid[],text[],text[],text[],text[],text[],bigint[],text[],text[]",
    "hs_write": "text,text,text,text,text,bigint,bigint,text,text",
}

# Functions of the schema the role needs no EXECUTE on, and why.
NOT_GRANTED: dict[str, str] = {
    "hs_notify": "a trigger function: firing a trigger checks no EXECUTE privilege",
}


@dataclass(frozen=True)
class Privilege:
    """One privilege the runtime role needs: ``kind`` is table, sequence or function; ``name`` is unqualified
    (a function's with its argument types)."""

    kind: str
    name: str
    privilege: str


def runtime_privileges() -> list[Privilege]:
    """Every privilege a runtime role needs on the schema's objects (not CONNECT / USAGE on the schema)."""
    out = [Privilege("table", table, p) for table, privs in TABLES.items() for p in privs]
    out += [Privilege("sequence", seq, "USAGE") for seq in SEQUENCES]
    out += [Privilege("function", f"{name}({args})", "EXECUTE") for name, args in FUNCTIONS.items()]
    return out


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL identifier, quoted (the role and schema come from the command line)."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def grants_sql(role: str, *, schema: str = "hybridstore", database: str = "postgres") -> str:
    """The SQL (one statement a line) an owner runs to give ``role`` what a hybridstore node needs on
    ``schema`` in ``database`` — and nothing more: no DDL, no TRUNCATE, no access to other schemas."""
    r, s = quote_ident(role), quote_ident(schema)
    lines = [
        f"-- hybridstore runtime role {role}: schema {schema}, database {database}",
        f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {r};",
        f"GRANT USAGE ON SCHEMA {s} TO {r};",
    ]
    for table, privs in TABLES.items():
        lines.append(f"GRANT {', '.join(privs)} ON TABLE {s}.{quote_ident(table)} TO {r};")
    for seq in SEQUENCES:
        lines.append(f"GRANT USAGE ON SEQUENCE {s}.{quote_ident(seq)} TO {r};")
    for name, args in FUNCTIONS.items():
        lines.append(f"GRANT EXECUTE ON FUNCTION {s}.{quote_ident(name)}({args.replace(',', ', ')}) TO {r};")
    return "\n".join(lines) + "\n"
