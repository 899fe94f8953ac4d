"""``health`` (one check or a live view) and ``alerts`` (the node's alert history)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..recovery.alerts import Alert
from ..store import HybridStore
from . import attach
from .app import app, open_store, real_paths
from .output import fail, out, plural, print_json, print_json_line

_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "down": "red",
    "outage": "bold red",
    "recovering": "cyan",
    "disabled": "dim",
    "unknown": "dim",
}
RECHECK_INTERVAL = 0.25  # seconds between the checks that confirm (or clear) a suspected outage
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
        return plural(c.get("entries", 0), "entry", "entries")
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


def _check(ctx: typer.Context, store: HybridStore, *, probe: bool = True) -> dict[str, Any]:
    """A health check now. The command's store runs no prober thread, so each check asks the primary first
    (``probe=False`` right after `open_store` did)."""
    if probe and store.node.gateway.configured:
        store.node.gateway.probe_now()
    status: dict[str, Any] = real_paths(ctx, store.recovery.get_health_status(refresh=True))
    return status


def _one_shot(ctx: typer.Context, store: HybridStore) -> dict[str, Any]:
    """One check, confirmed: a primary that fails its probe is not an outage yet (hysteresis: the monitor waits
    for a second failure some time later), so look again as the monitor would, until the outage is confirmed or
    the primary answers. Costs nothing while the primary answers, under a second when it does not."""
    status = _check(ctx, store, probe=False)
    detector = store.node.gateway.detector
    give_up = time.monotonic() + 3 * detector.confirm_seconds
    while detector.suspect and time.monotonic() < give_up:
        time.sleep(RECHECK_INTERVAL)
        status = _check(ctx, store)
    return status


@app.command()
def health(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON (with --watch: one line per check).")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep checking and show a live view (Ctrl-C stops).")
    ] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between checks with --watch.")] = 2.0,
    count: Annotated[int, typer.Option("--count", help="With --watch: stop after this many checks (0 = never).")] = 0,
) -> None:
    """Check every component (primary, local SQLite, journal, disk space, sync) and show the overall state:
    healthy, degraded, misconfigured, outage or recovering. Exit code 1 during an outage."""
    if interval <= 0 or count < 0:
        fail("--interval must be positive and --count at least 0", code=2)
    remote = attach.connect(ctx)
    if remote is not None:  # the running node's own monitor: it sees the outage the node is in
        with remote:
            status = _remote(remote, as_json=as_json, watch=watch, interval=interval, count=count)
        if status["overall"] == "outage":
            raise typer.Exit(1)
        return
    with open_store(ctx, access="read") as store:
        if not watch:
            status = _one_shot(ctx, store)
            if as_json:
                print_json(status)
            else:
                out.print(render_health(status))
        elif as_json:
            status = _watch(ctx, store, interval, count, print_json_line)
        else:
            with Live(console=out, refresh_per_second=4, transient=False) as live:
                status = _watch(ctx, store, interval, count, lambda s: live.update(render_health(s)))
    if status["overall"] == "outage":
        raise typer.Exit(1)


def _remote(remote: attach.Attached, *, as_json: bool, watch: bool, interval: float, count: int) -> dict[str, Any]:
    """`health` against a running node: its monitor's last check (``GET /api/v1/health``), once or watched."""

    def check() -> dict[str, Any]:
        found: dict[str, Any] = remote.get("/health", ok=(200, 503))
        return found

    if not watch:
        status = check()
        if as_json:
            print_json(status)
        else:
            out.print(render_health(status))
        return status
    if as_json:
        return _watch_with(check, interval, count, print_json_line)
    with Live(console=out, refresh_per_second=4, transient=False) as live:
        return _watch_with(check, interval, count, lambda s: live.update(render_health(s)))


def _watch_with(
    check: Callable[[], dict[str, Any]], interval: float, count: int, show: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    status = check()
    show(status)
    checks = 1
    try:
        while not count or checks < count:
            time.sleep(interval)
            status = check()
            show(status)
            checks += 1
    except KeyboardInterrupt:
        pass
    return status


def _watch(
    ctx: typer.Context, store: HybridStore, interval: float, count: int, show: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Check every ``interval`` seconds and show each status, ``count`` times (0: until Ctrl-C); the last."""
    status = _check(ctx, store, probe=False)
    show(status)
    checks = 1
    try:
        while not count or checks < count:
            time.sleep(interval)
            status = _check(ctx, store)
            show(status)
            checks += 1
    except KeyboardInterrupt:
        pass
    return status


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
    remote = attach.connect(ctx)
    if remote is not None:
        with remote:
            found = remote.get("/alerts", params={"active": None if which is None else str(which).lower()})
        items = [_alert(a) for a in found["alerts"]][:limit]
    else:
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


def _alert(data: dict[str, Any]) -> Alert:
    fields = {f.name for f in dataclasses.fields(Alert)}
    return Alert(**{k: v for k, v in data.items() if k in fields})


@app.command()
def repair(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Check the local SQLite store now (an integrity check) and, if it is corrupt or unreadable, rebuild it —
    from the primary, else the newest verified backup, else what the broken file still holds — and print the
    rebuild report. The broken file is kept in data_dir/broken/. Exit code 1 if it could not be rebuilt, or
    if acknowledged writes could not be recovered."""
    with open_store(ctx, access="existing") as store:
        recovery = store.recovery
        before = recovery.last_rebuild
        status = recovery.check()  # an acting check: the integrity check runs, and the rebuild if it is needed
        report = recovery.last_rebuild if recovery.last_rebuild is not before else None
    local = status["components"]["local"]
    manual = next((a for a in status["alerts"] if a["kind"] == "manual_intervention"), None)
    intact = report is None and local["state"] != "down"
    if as_json:
        print_json(
            real_paths(
                ctx,
                {
                    "rebuilt": report is not None,
                    "intact": intact,
                    "report": None if report is None else report.to_dict(),
                    "local": local,
                    "manual_intervention": None if manual is None else manual["message"],
                },
            )
        )
    elif report is not None:
        _print_rebuild(ctx, report.to_dict())
    elif intact:
        check = local.get("quick_check", {})
        out.print(f"the local store is intact (integrity check: {check.get('detail') or 'ok'}); nothing to repair")
    else:
        out.print(Text(f"the local store is unusable: {local.get('detail')}", style="bold red"))
        if manual is not None:
            out.print(Text(manual["message"]))
    if (report is not None and report.unrecovered) or (report is None and not intact):
        raise typer.Exit(1)


def _print_rebuild(ctx: typer.Context, report: dict[str, Any]) -> None:
    table = Table(show_header=False, title=f"local store rebuilt from {report['source']}")
    rows = [
        ("reason", report["reason"]),
        ("records loaded from the source", f"{report['records_from_source']:,}"),
        ("records salvaged from the broken file", f"{report['records_salvaged']:,}"),
        ("queued writes recovered", f"{report['requeued']:,}"),
        ("journaled writes replayed", f"{report['journal_replayed']:,}"),
        ("acknowledged writes lost", f"{len(report['unrecovered']):,}"),
        ("broken file kept as", ", ".join(real_paths(ctx, report["moved_aside"]))),
        ("took", f"{report['seconds']:.2f}s"),
    ]
    for name, value in rows:
        table.add_row(name, Text(str(value)))
    out.print(table)
    for problem in report["salvage_errors"][:5]:
        out.print(Text(f"salvage: {problem}", style="yellow"))


__all__ = ["alerts", "health", "render_health", "repair"]
