"""``test-resilience``: run the resilience scenarios against the configured primary, in a sandbox of their own."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from ..errors import ConfigError
from ..resilience import SCENARIOS
from ..resilience.html import write_html
from ..resilience.report import failures, table, write_json
from ..resilience.runner import DEFAULT_DURATION, DEFAULT_SEED, RunOptions, run
from .app import Settings, app
from .output import err, fail, out, print_json

TABLE_WIDTH = 110


@contextmanager
def _quiet_faults() -> Iterator[None]:
    """The faults a run injects make the store and the driver warn (that is their job in production): under the
    default log level those expected warnings would bury the progress view, so only errors are shown meanwhile."""
    loggers = [logging.getLogger(name) for name in ("hybridstore", "psycopg", "psycopg.pool")]
    levels = [lg.level for lg in loggers]
    if logging.getLogger("hybridstore").getEffectiveLevel() >= logging.WARNING:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@app.command("test-resilience")
def test_resilience(
    ctx: typer.Context,
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", "-s", help=f"A scenario to run (repeatable; default: all): {', '.join(SCENARIOS)}."),
    ] = None,
    duration: Annotated[
        float, typer.Option("--duration", help="Seconds per scenario (some have a floor: see the docs).")
    ] = DEFAULT_DURATION,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of every random choice (same seed, same run).")
    ] = DEFAULT_SEED,
    rate: Annotated[float, typer.Option("--rate", help="Writes per second per writer.")] = 100.0,
    json_path: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="PATH",
            help="Write the JSON report to PATH ('-': standard output only); under --json standard output holds "
            "the report.",
        ),
    ] = None,
    html_path: Annotated[Path | None, typer.Option("--html", help="Write the HTML report to this file.")] = None,
    primary_url: Annotated[
        str | None,
        typer.Option("--primary-url", help="The primary to test (default: the configured one)."),
    ] = None,
) -> None:
    """Prove, with numbers, that the store holds: faults injected against the primary (outage, black hole,
    latency, resets, flapping), the local store (corruption, full disk, crashes) and the data (conflicts,
    replays, tampered backups), every acknowledged write checked afterwards. Runs in a sandbox of its own (a
    temporary schema on the primary, temporary directories): your data is never touched. Exit code 0 only if
    every scenario passed."""
    settings: Settings = ctx.obj
    url = (
        primary_url
        or settings.primary_url
        or os.environ.get("HYBRIDSTORE_PRIMARY_URL")
        or os.environ.get("SUPABASE_DB_URL")
        or os.environ.get("DATABASE_URL")
        or ""
    )
    options = RunOptions(url, scenarios=scenario or list(SCENARIOS), duration=duration, seed=seed, rate=rate)
    try:
        options.check()
    except ConfigError as exc:
        fail(str(exc), code=2)
    status = Text("starting")

    def progress(p: dict[str, Any]) -> None:
        status.plain = f"[{p['done']}/{p['total']}] {p['scenario']}: {p['step']}"

    try:
        with _quiet_faults(), Live(status, console=err, transient=True, refresh_per_second=4):
            report = run(options, progress=progress)
    except ConfigError as exc:
        fail(str(exc), code=2)
    if json_path not in (None, "-"):
        write_json(report, json_path)
    if html_path is not None:
        write_html(report, html_path)
    if json_path is not None:
        print_json(report)
    else:
        # wider than a narrow terminal if need be: it wraps the lines, rather than cutting the figures
        Console(width=max(out.width, TABLE_WIDTH)).print(table(report))
        for line in failures(report):
            out.print(Text(line, style="red"))
    raise typer.Exit(0 if report["passed"] else 1)
