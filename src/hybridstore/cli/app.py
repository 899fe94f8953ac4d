"""The Typer application, global options, and shared helpers for every command module."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ..config import resolve
from ..errors import ConfigError, HybridStoreError, ValidationError
from ..store import HybridStore

app = typer.Typer(
    name="hybridstore",
    help="Resilient hybrid storage: PostgreSQL primary, local SQLite, emergency journal, automatic fallback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


@dataclass
class Settings:
    data_dir: Path | None
    primary_url: str | None
    schema: str | None
    timeout: float | None


@app.callback()
def _global(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", "-d", help="Data directory (default: $HYBRIDSTORE_DATA_DIR or ./data)."),
    ] = None,
    primary_url: Annotated[
        str | None,
        typer.Option(
            "--primary-url",
            help="PostgreSQL URL of the primary (default: $HYBRIDSTORE_PRIMARY_URL, $SUPABASE_DB_URL, "
            "$DATABASE_URL; none = embedded mode).",
        ),
    ] = None,
    schema: Annotated[
        str | None, typer.Option("--schema", help="Schema on the primary (default: hybridstore).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to wait for the primary before falling back.")
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level", help="Log level: debug, info, warning, error (default: $HYBRIDSTORE_LOG_LEVEL or warning)."
        ),
    ] = "",
) -> None:
    """Resilient hybrid storage: PostgreSQL primary, local SQLite, emergency journal, automatic fallback."""
    level = (log_level or os.environ.get("HYBRIDSTORE_LOG_LEVEL") or "warning").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        fail(f"unknown log level {level.lower()!r}", code=2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level != "DEBUG":  # the pool's reconnect warnings repeat what our own messages say
        logging.getLogger("psycopg").setLevel(max(logging.getLevelName(level), logging.ERROR))
    ctx.obj = Settings(data_dir, primary_url, schema, timeout)


def fail(message: str, *, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def open_store(ctx: typer.Context) -> Iterator[HybridStore]:
    """Open the store for one command (no background thread: the command does its own work) and turn our
    errors into a clear message and exit code (2 = bad input or configuration, 1 = anything else)."""
    settings: Settings = ctx.obj
    options: dict[str, Any] = {"background": False}
    if settings.schema:
        options["primary_schema"] = settings.schema
    if settings.timeout:
        options["primary_timeout"] = settings.timeout
    try:
        store = HybridStore(resolve(primary_url=settings.primary_url, data_dir=settings.data_dir, **options))
    except HybridStoreError as exc:
        fail(str(exc), code=2 if isinstance(exc, ConfigError) else 1)
    gateway = store.node.gateway
    gateway.probe_now()  # offline: the command works locally at once instead of waiting the timeout
    if gateway.misconfigured is not None:
        store.close()
        fail(
            f"the primary refuses this node: {gateway.misconfigured.strip()}. Fix the primary URL (database name), "
            "the credentials (role, password) or the role's privileges; nothing was done",
            code=2,
        )
    try:
        yield store
    except (ValidationError, ConfigError) as exc:
        fail(str(exc), code=2)
    except HybridStoreError as exc:
        fail(str(exc))
    finally:
        store.close()


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str, ensure_ascii=False))


def main() -> None:
    from . import admin, apikey, backup, conflicts, data, health, serve, status  # noqa: F401  (registers the commands)

    app()
