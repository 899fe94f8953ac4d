"""``admin …``: the admin users of the web UI (``/admin/``) — add (password prompted on a terminal, read from standard
input otherwise), list, remove.

Users live in ``<data dir>/web.db`` with argon2id password hashes (see `hybridstore.web.users`); these commands
work while ``serve`` runs on the same directory (they do not open the store). A removed user's sessions stop
working at their next request.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..config import resolve
from ..errors import HybridStoreError
from ..web.users import UserStore
from ..web.webdb import WebDatabase
from .app import Settings, app, fail, out, print_json

admin_app = typer.Typer(
    name="admin",
    help="Admin users of the web UI: add-user (password prompted or read from stdin), list-users, remove-user.",
    no_args_is_help=True,
)
app.add_typer(admin_app, name="admin")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@contextmanager
def open_users(ctx: typer.Context) -> Iterator[UserStore]:
    """The user store of the data directory (``--data-dir``, else $HYBRIDSTORE_DATA_DIR, else ./data)."""
    settings: Settings = ctx.obj
    try:
        db = WebDatabase.in_dir(resolve(data_dir=settings.data_dir).data_dir)
    except (HybridStoreError, OSError) as exc:
        fail(f"cannot open the user store: {exc}", code=2)
    try:
        yield UserStore(db)
    except HybridStoreError as exc:
        fail(str(exc), code=2)
    finally:
        db.close()


def _read_password() -> str:
    if sys.stdin.isatty():
        return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


@admin_app.command("add-user")
def add_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user name (letters, digits, _ . @ -).")],
    as_json: JsonFlag = False,
) -> None:
    """Add an admin user of the web UI. The password is prompted (twice) on a terminal, else read from the first
    line of standard input; at least 10 characters."""
    password = _read_password()
    with open_users(ctx) as users:
        user = users.add(name, password)
    if as_json:
        print_json(user.to_dict())
    else:
        out.print(f"admin user {escape(user.name)} added: log in at /admin/login")


@admin_app.command("list-users")
def list_users(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the admin users of the web UI."""
    with open_users(ctx) as users:
        found = users.list()
    if as_json:
        print_json({"users": [u.to_dict() for u in found]})
        return
    if not found:
        out.print("no admin user: add one with `hybridstore admin add-user NAME`")
        return
    table = Table()
    for column in ("name", "created", "last login"):
        table.add_column(column)
    for u in found:
        table.add_row(escape(u.name), _when(u.created_at), _when(u.last_login_at))
    out.print(table)


@admin_app.command("remove-user")
def remove_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user to remove.")],
    as_json: JsonFlag = False,
) -> None:
    """Remove an admin user of the web UI (their sessions end at their next request)."""
    with open_users(ctx) as users:
        user = users.remove(name)
    if as_json:
        print_json({"removed": user.to_dict()})
    else:
        out.print(f"admin user {escape(user.name)} removed")
