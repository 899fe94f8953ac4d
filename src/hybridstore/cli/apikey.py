"""``apikey …``: create, list and revoke the API keys of the HTTP service (``hybridstore serve``).

Keys live where the server reads them: on the primary when one is configured (shared by every node, see
`hybridstore.web.shared_keys`), else in ``<data dir>/web.db`` (see `hybridstore.web.keys`). These commands work
while ``serve`` runs on the same directory (they do not open the store). A key is printed once, when it is
created.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ConfigError, HybridStoreError, ValidationError
from ..web.keys import SCOPES, ApiKeyStore, KeyStore
from ..web.shared_keys import SharedKeyStore
from ..web.webdb import WebDatabase
from .app import app, configuration, fail, out, print_json

apikey_app = typer.Typer(
    name="apikey",
    help="API keys of the HTTP service: create (printed once), list, revoke.",
    no_args_is_help=True,
)
app.add_typer(apikey_app, name="apikey")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@contextmanager
def open_keys(ctx: typer.Context) -> Iterator[KeyStore]:
    """Where the server reads its keys: the primary when one is configured (``--primary-url`` or the
    environment; every node accepts them), else the data directory's ``web.db``."""
    config = configuration(ctx)
    try:
        db = WebDatabase.in_dir(config.data_dir)
    except (HybridStoreError, OSError) as exc:
        fail(f"cannot open the key store: {exc}", code=2)
    with ExitStack() as stack:
        stack.callback(db.close)
        local = ApiKeyStore(db)
        keys: KeyStore = local
        if config.primary_url:
            from ..tiers.primary import PrimaryTier

            tier = PrimaryTier(
                config.primary_url,
                schema=config.primary_schema,
                timeout=config.primary_timeout,
                pooled=config.primary_pooled,
                pool_size=1,
            )
            stack.callback(tier.close)
            keys = SharedKeyStore(lambda fn: fn(tier), local, origin=f"cli@{socket.gethostname()}")
        try:
            yield keys
        except (ValidationError, ConfigError) as exc:
            fail(str(exc), code=2, kind=type(exc).__name__)
        except HybridStoreError as exc:
            fail(f"{exc} (keys live on the primary: it must answer to manage them)", kind=type(exc).__name__)


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@apikey_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="A name for the key (who or what uses it).")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", help=f"A scope ({', '.join(SCOPES)}); repeat for more. admin allows all."),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Create a key and print it (once: only its hash is kept)."""
    with open_keys(ctx) as keys:
        key, token = keys.create(name, scope)
    if as_json:
        print_json({**key.to_dict(), "token": token})
        return
    out.print(f"API key [bold]{escape(key.name)}[/] ({key.id}), scopes {', '.join(sorted(key.scopes))}:")
    print(token)  # plain print: the token alone on its line, never wrapped or styled
    out.print("Store it now: it is not shown again. Send it as `Authorization: Bearer <key>`.")


@apikey_app.command("list")
def list_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the keys (never their tokens): id, name, scopes, created, last used, revoked."""
    with open_keys(ctx) as keys:
        found = keys.list()
    if as_json:
        print_json([k.to_dict() for k in found])
        return
    table = Table(title=f"{len(found)} API key{'s' if len(found) != 1 else ''}")
    for col in ("id", "name", "scopes", "starts with", "created", "last used", "revoked"):
        table.add_column(col, no_wrap=col == "id")
    for k in found:
        table.add_row(
            k.id,
            escape(k.name),
            " ".join(sorted(k.scopes)),
            k.hint + "…",
            _when(k.created_at),
            _when(k.last_used_at),
            _when(k.revoked_at),
        )
    out.print(table)


@apikey_app.command("revoke")
def revoke(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key's id or name.")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key: a running server refuses it within a second."""
    with open_keys(ctx) as keys:
        revoked = keys.revoke(key)
    if as_json:
        print_json(revoked.to_dict())
    else:
        out.print(f"API key {escape(revoked.name)} ({revoked.id}) revoked at {_when(revoked.revoked_at)}")
