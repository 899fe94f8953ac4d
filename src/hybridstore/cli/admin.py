"""``migrate``: bring the primary's schema up to date (as the node's role, or as the owner with ``--admin-url``).
(The ``admin …`` group — the web UI's users — is in `hybridstore.cli.users`, registered by importing it here.)"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import HybridStoreError
from ..migrations import primary_migrations
from . import users  # noqa: F401  (registers the ``admin`` group)
from .app import app, configuration, open_store
from .output import fail, out, print_json


@app.command()
def migrate(
    ctx: typer.Context,
    admin_url: Annotated[
        str | None,
        typer.Option(
            "--admin-url",
            envvar="HYBRIDSTORE_ADMIN_URL",
            help="Run the DDL as this role (the schema's owner), not as the nodes' runtime role; "
            "no local store is opened.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Create or upgrade hybridstore's tables on the primary (safe to run from many nodes at once)."""
    config = configuration(ctx)
    if admin_url:
        applied = _migrate_as_owner(admin_url, config.primary_schema, config.primary_timeout, config.primary_pooled)
        schema = config.primary_schema
    else:
        if not config.primary_url:  # before anything is opened or created
            fail("no primary configured: pass --primary-url (or --admin-url) or set HYBRIDSTORE_PRIMARY_URL", code=2)
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


def _migrate_as_owner(url: str, schema: str, timeout: float, pooled: bool | None) -> list[int]:
    from ..tiers.primary import PrimaryTier

    try:
        tier = PrimaryTier(url, schema=schema, timeout=timeout, pooled=pooled, node_id="migrate")
    except HybridStoreError as exc:
        fail(f"--admin-url: {exc}", code=2)
    try:
        return tier.migrate()
    except HybridStoreError as exc:
        fail(f"migration as the owner failed: {exc}")
    finally:
        tier.close()
