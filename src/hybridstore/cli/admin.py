"""``migrate``: bring the primary's schema up to date. (The ``admin …`` group — the web UI's users — is in
`hybridstore.cli.users`, registered by importing it here.)"""

from __future__ import annotations

from typing import Annotated

import typer

from ..migrations import primary_migrations
from . import users  # noqa: F401  (registers the ``admin`` group)
from .app import app, configuration, open_store
from .output import fail, out, print_json


@app.command()
def migrate(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Create or upgrade hybridstore's tables on the primary (safe to run from many nodes at once)."""
    if not configuration(ctx).primary_url:  # before anything is opened or created
        fail("no primary configured: pass --primary-url or set HYBRIDSTORE_PRIMARY_URL", code=2)
    with open_store(ctx) as store:
        gateway = store.node.gateway
        applied = gateway.call(lambda p: p.migrate())
        schema = gateway.tier.schema
    latest = primary_migrations()[-1].version
    if as_json:
        print_json({"schema": schema, "applied": applied, "version": latest})
    elif applied:
        which = "migration" if len(applied) == 1 else "migrations"
        out.print(f"schema {schema}: applied {which} {', '.join(map(str, applied))}; now at version {latest}")
    else:
        out.print(f"schema {schema} is up to date (version {latest})")
