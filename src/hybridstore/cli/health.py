"""``health`` (one check or a live view) and ``alerts`` (the node's alert history)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..store import HybridStore
from .app import app, open_store, out, print_json, real_paths

_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "down": "red",
    "outage": "bold red",
    "recovering": "cyan",
    "disabled": "dim",
    "unknown": "dim",
}
COMPONENTS = ("primary", "local", "journal", "disk", "sync", "dead_letters", "conflicts")


def _styled(state: str) -> Text:
    return Text(state, style=_STYLE.get(state, "white"))


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _figure(name: str, c: dict[str, Any]) -> str:
    if name == "primary" and c.get("latency_ms") is not None:
        return f"{c['latency_ms']:.2f} ms"
    if name == "local" and c.get("write_probe_ms") is not None:
        return f"write {c['write_probe_ms']:.2f} ms"
    if name == "journal":
        return f"{c.get('entries', 0)} entries"
    if name == "disk" and c.get("free_bytes") is not None:
        return f"{c['free_bytes'] / 2**30:.1f} GiB free"
    if name == "sync":
        lag = c.get("lag_s")
        return f"{c['outbox_depth']} pending" + (f", lag {lag:.1f}s" if lag is not None else "")
    if c.get("count") is not None:
        return str(c["count"])
    return ""


def render_health(status: dict[str, Any]) -> Group:
    """The health view (user data and error texts as plain text, never as markup)."""
    title = Text.assemble("node ", status["node_id"], "  overall: ", _styled(status["overall"]))
    table = Table(title=title)
    table.add_column("component")
    table.add_column("state")
    table.add_column("figure", justify="right")
    table.add_column("detail", overflow="fold")
    for name in COMPONENTS:
        c = status["components"].get(name)
        if c is not None:
            table.add_row(name, _styled(c["state"]), _figure(name, c), Text(str(c.get("detail") or "")))
    parts: list[Any] = [table]
    for alert in status["alerts"]:
        parts.append(
            Text.assemble(("ALERT ", "bold red"), f"{alert['kind']} ({alert['severity']}): ", alert["message"])
        )
    for event in status["strategies"][:3]:
        parts.append(Text(f"{_when(event['started_at'])} {event['strategy']} {event['outcome']}: {event['summary']}"))
    parts.append(Text(f"checked {_when(status['checked_at'])}", style="dim"))
    return Group(*parts)


def _check(ctx: typer.Context, store: HybridStore) -> dict[str, Any]:
    status: dict[str, Any] = real_paths(ctx, store.recovery.get_health_status(refresh=True))
    return status


@app.command()
def health(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep checking and show a live view (Ctrl-C stops).")
    ] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between checks with --watch.")] = 2.0,
    count: Annotated[int, typer.Option("--count", help="With --watch: stop after this many checks (0 = never).")] = 0,
) -> None:
    """Check every component (primary, local SQLite, journal, disk space, sync) and show the overall state:
    healthy, degraded, outage or recovering. Exit code 1 during an outage."""
    with open_store(ctx, access="read") as store:
        status = _check(ctx, store)
        if watch:
            checks = 1
            try:
                with Live(render_health(status), console=out, refresh_per_second=4, transient=False) as live:
                    while not count or checks < count:
                        time.sleep(interval)
                        status = _check(ctx, store)
                        checks += 1
                        live.update(render_health(status))
            except KeyboardInterrupt:
                pass
        elif as_json:
            print_json(status)
        else:
            out.print(render_health(status))
    if status["overall"] == "outage":
        raise typer.Exit(1)


@app.command()
def alerts(
    ctx: typer.Context,
    active: Annotated[bool, typer.Option("--active", help="Only alerts still active.")] = False,
    resolved: Annotated[bool, typer.Option("--resolved", help="Only resolved alerts.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List this node's alerts (primary outage, local corruption, sync failure, low storage, conflicts
    backlog, manual intervention), newest first, with when each was raised and resolved."""
    which = True if active and not resolved else False if resolved and not active else None
    with open_store(ctx, access="read") as store:
        items = store.recovery.alerts(active=which)[:limit]
    if as_json:
        print_json([a.to_dict() for a in items])
        return
    table = Table(title=f"alerts ({len(items)})")
    for column in ("kind", "severity", "raised", "resolved", "message"):
        table.add_column(column, overflow="fold" if column == "message" else "ellipsis")
    for a in items:
        resolved_text = _when(a.resolved_at) if a.resolved_at else Text("active", style="bold red")
        table.add_row(a.kind, a.severity, _when(a.raised_at), resolved_text, Text(a.message))
    out.print(table)


__all__ = ["alerts", "health", "render_health"]
