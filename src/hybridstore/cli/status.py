"""``status`` and ``sync``: what each tier is doing, and pushing the outbox now."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..model import SyncReport
from . import attach
from .app import app, open_store, real_paths
from .output import out, plural, print_json, progress_bars

_STYLE = {"healthy": "green", "degraded": "yellow", "down": "red", "disabled": "dim", "unknown": "dim"}


def _state(state: str) -> str:
    return f"[{_STYLE.get(state, 'white')}]{state}[/]"


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show each tier's health, the circuit breaker and the outbox (of the running node, when one serves the
    data directory's socket)."""
    remote = attach.connect(ctx)
    if remote is not None:
        with remote:
            health = health_view(remote.get("/status", params={"fresh": "true"}))
            recovery = remote.get("/health", ok=(200, 503))
    else:
        with open_store(ctx, access="read") as store:
            health = store.health()
            recovery = store.recovery.get_health_status(refresh=True)
        health = real_paths(ctx, health)
    health["overall"] = recovery["overall"]
    health["alerts"] = recovery["alerts"]
    if as_json:
        print_json(health)
        return
    table = Table(title=f"hybridstore node {health['node_id']}  ({health['data_dir']})")
    table.add_column("tier")
    table.add_column("state")
    table.add_column("latency", justify="right")
    table.add_column("detail", overflow="fold")
    for name in ("primary", "local", "journal"):
        tier: dict[str, Any] = health[name]
        latency = f"{tier['latency_ms']:.2f} ms" if tier.get("latency_ms") is not None else ""
        detail = tier.get("detail") or tier.get("url") or tier.get("path") or ""
        if name == "journal":
            detail = f"{plural(tier.get('entries', 0), 'entry', 'entries')} {detail}".strip()
        table.add_row(name, _state(tier["state"]), latency, escape(str(detail)))
    out.print(table)
    circuit = health["circuit"]
    outbox = health["outbox"]
    age = outbox["oldest_pending_age_s"]
    out.print(
        f"circuit: [bold]{circuit['state']}[/] (opened {circuit['times_opened']}x)   "
        f"outbox: [bold]{outbox['depth']}[/] pending"
        + (f", oldest {age:.1f}s" if age is not None else "")
        + f"   mode: {health['write_mode']}, reads {health['read_policy']}"
    )
    sync = health["sync"]
    out.print(
        f"pushed {sync['pushed']}, superseded {sync['superseded']}, duplicates {sync['duplicates']}, "
        f"failed {sync['failed']} since this process started"
        + (f"   [red]last error:[/] {escape(sync['last_error'])}" if sync["last_error"] else "")
    )
    alerts = health["alerts"]
    out.print(
        f"overall: [bold]{health['overall']}[/]   active alerts: {len(alerts)}"
        + (f" ({escape(', '.join(a['kind'] for a in alerts))}; see `hybridstore alerts`)" if alerts else "")
    )


def health_view(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``store.health()``'s shape from a status snapshot (``GET /api/v1/status``): the same figures."""
    sync = snapshot["sync"]
    outbox = snapshot["outbox"]
    return {
        **{k: snapshot[k] for k in ("node_id", "data_dir", "write_mode", "read_policy")},
        **{k: snapshot[k] for k in ("primary", "local", "journal", "circuit")},
        "outbox": {"depth": outbox["depth"], "oldest_pending_age_s": outbox["oldest_pending_age_s"]},
        "sync": {k: sync[k] for k in ("pushed", "superseded", "duplicates", "failed", "last_push_at", "last_error")},
    }


@app.command()
def sync(
    ctx: typer.Context,
    full: Annotated[
        bool,
        typer.Option("--full", help="Full resync: rebuild the local copy from the primary (pending writes are kept)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the sync report as JSON.")] = False,
) -> None:
    """Push every queued write to the primary, then pull the primary's changes — now, with progress bars. Exit
    code 1 if writes remain queued (no primary, or it is unreachable). While a node serves the data directory,
    the node does it (a sync job of its own)."""
    labels = {"push": "pushing outbox", "pull": "full resync" if full else "pulling changes"}
    remote = attach.connect(ctx)
    if remote is not None:
        with remote, progress_bars(quiet=as_json) as bars:
            job = remote.send("POST", "/sync", json={"full": full})
            result = remote.follow(
                job, lambda p: bars.update(labels.get(p["phase"], p["phase"]), p["done"], p["total"])
            )
            configured = remote.get("/status")["primary"].get("configured", True)
        report = SyncReport(**{f.name: result[f.name] for f in dataclasses.fields(SyncReport) if f.name in result})
    else:
        with open_store(ctx) as store, progress_bars(quiet=as_json) as bars:
            report = store.sync_now(
                full=full, progress=lambda phase, done, total: bars.update(labels[phase], done, total)
            )
            configured = store.node.gateway.configured
    if as_json:
        print_json(dataclasses.asdict(report))
    else:
        out.print(
            f"pushed {report.pushed}, superseded {report.superseded}, duplicates {report.duplicates}, "
            f"conflicts {report.conflicts}, failed {report.failed}, remaining {report.remaining}, "
            f"pulled {report.pulled}"
        )
        if report.remaining and not configured:
            out.print(
                f"no primary configured: {plural(report.remaining, 'write')} will stay queued until one is "
                "(--primary-url or $HYBRIDSTORE_PRIMARY_URL)"
            )
        elif report.errors:
            out.print(f"[red]last error:[/] {escape(report.errors[-1])}")
    if report.remaining or (full and report.errors):
        raise typer.Exit(1)
