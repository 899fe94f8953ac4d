"""``nodes``: every node sharing the primary, from their heartbeat rows (see `hybridstore.node.heartbeat`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from . import attach
from .app import app, open_store
from .output import out, plural, print_json

_STYLE = {"healthy": "green", "degraded": "yellow", "outage": "bold red", "recovering": "cyan", "stopped": "dim"}


def render_nodes(nodes: list[dict[str, Any]]) -> Table:
    table = Table(title=plural(len(nodes), "node"))
    for column in ("node", "host", "version", "state", "outbox", "last heartbeat", "last push", "last pull"):
        table.add_column(column, justify="right" if column == "outbox" else "left")
    for n in nodes:
        state = Text(n["state"], style=_STYLE.get(n["state"], "white"))
        if n["stale"]:
            state = Text.assemble(state, (" (stale)", "bold red"))
        table.add_row(
            Text(n["node_id"]),
            Text(n["host"]),
            Text(n["version"]),
            state,
            f"{n['outbox_depth']:,}",
            _short(n["last_heartbeat"]),
            _short(n["last_push"]),
            _short(n["last_pull"]),
        )
    return table


def _short(iso: str | None) -> str:
    """``2026-11-30T08:30:01.123456+00:00`` → ``2026-11-30 08:30:01Z``."""
    return "" if iso is None else iso[:19].replace("T", " ") + "Z"


@app.command()
def nodes(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Every node sharing the primary: host, version, state, outbox depth, last heartbeat, push and pull. A node
    silent for more than three heartbeat intervals is marked stale. Without a primary: this node alone."""
    remote = attach.connect(ctx)
    if remote is not None:
        with remote:
            found = remote.get("/nodes")["nodes"]
    else:
        with open_store(ctx, access="read") as store:
            found = store.nodes()
    if as_json:
        print_json(found)
    else:
        out.print(render_nodes(found))
