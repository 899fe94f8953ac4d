"""``grants``: the SQL that gives a least-privilege runtime role what a node needs on the primary."""

from __future__ import annotations

from typing import Annotated

import typer

from ..migrations.grants import grants_sql
from .app import app, configuration
from .output import fail, out, print_json


@app.command()
def grants(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="The role the nodes connect as (it must exist).")],
    database: Annotated[
        str | None,
        typer.Option("--database", help="Database to grant CONNECT on (default: the primary URL's, else postgres)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Print the GRANT statements that give ROLE what a node needs — CONNECT, USAGE on the schema, per-table
    DML, the sequences and SQL functions it uses — and nothing more. Run them as the schema's owner, after
    `hybridstore migrate --admin-url …`; start the nodes with HYBRIDSTORE_AUTO_MIGRATE=0."""
    config = configuration(ctx)
    dbname = database or _dbname(config.primary_url) or "postgres"
    try:
        text = grants_sql(role, schema=config.primary_schema, database=dbname)
    except ValueError as exc:
        fail(str(exc), code=2)
    if as_json:
        print_json({"role": role, "schema": config.primary_schema, "database": dbname, "sql": text})
    else:
        out.print(text, end="", markup=False, highlight=False, soft_wrap=True)


def _dbname(url: str | None) -> str | None:
    if not url:
        return None
    from ..tiers.connection import check_url

    return check_url(url).get("dbname") or None
