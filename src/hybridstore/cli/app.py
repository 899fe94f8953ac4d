"""The Typer application, global options, and `open_store`, which every command module uses."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from ..config import DEFAULT_DATA_DIR, StoreConfig, parse_strategies, redact, resolve
from ..errors import (
    ConfigError,
    HybridStoreError,
    NotABackupError,
    StoreLockedError,
    ValidationError,
    WrongPassphraseError,
)
from ..store import HybridStore
from . import datadir
from .logs import setup_logging
from .output import emit_error, err, fail, json_requested, note, out, print_json

log = logging.getLogger("hybridstore.cli")
BACKUP_DIR_ENV = "HYBRIDSTORE_BACKUP_DIR"  # the backup repository's directory (hybridstore.backup.service)
Access = Literal["read", "write", "existing"]
# Errors that mean "fix the command": exit code 2 (anything else that fails is 1).
BAD_INPUT = (ValidationError, ConfigError, WrongPassphraseError, NotABackupError)


class _Group(TyperGroup):
    """The top-level command group: remembers whether ``--json`` was asked for, so that every error of the
    invocation — usage errors from argument parsing included — is printed as JSON on standard output."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        wants_json = "--json" in (argv[: argv.index("--")] if "--" in argv else argv)
        token = json_requested.set(wants_json)
        try:
            if not (wants_json and standalone_mode):
                return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
            try:
                code = super().main(argv, prog_name, complete_var, False, **extra)
            except typer.Abort:
                emit_error("Aborted", "aborted")
                raise SystemExit(1) from None
            except typer.TyperException as exc:  # argument parsing: a usage error
                message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
                emit_error("UsageError", message)
                raise SystemExit(getattr(exc, "exit_code", 2)) from None
            raise SystemExit(code if isinstance(code, int) else 0)
        finally:
            json_requested.reset(token)


app = typer.Typer(
    name="hybridstore",
    cls=_Group,
    help="Resilient hybrid storage: PostgreSQL primary, local SQLite, emergency journal, automatic fallback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass
class Settings:
    """The global options of one invocation."""

    data_dir: Path
    primary_url: str | None
    schema: str | None
    timeout: float | None
    write_mode: str | None = None
    read_policy: str | None = None
    max_value_bytes: int | None = None
    conflict_strategy: str | None = None  # the default strategy
    conflict_strategies: dict[str, str] | None = None  # per collection
    snapshot: Path | None = None  # the copy a reading command works on, when it cannot open the directory itself


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"hybridstore {_version()}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    data_dir: Annotated[
        str | None,
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
        float | None,
        typer.Option("--timeout", help="Seconds to wait for the primary before falling back (default 2)."),
    ] = None,
    write_mode: Annotated[
        str | None,
        typer.Option(
            "--write-mode",
            help="write_through (default: the primary first) or local_first (queue every write; "
            "default: $HYBRIDSTORE_WRITE_MODE).",
        ),
    ] = None,
    read_policy: Annotated[
        str | None,
        typer.Option(
            "--read-policy",
            help="primary_first (default) or local_first (default: $HYBRIDSTORE_READ_POLICY).",
        ),
    ] = None,
    max_value_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-value-bytes",
            help="Largest value accepted, in bytes of JSON (default: 1 MiB; $HYBRIDSTORE_MAX_VALUE_BYTES).",
        ),
    ] = None,
    conflict_strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--conflict-strategy",
            help="COLLECTION=STRATEGY (repeatable, or comma-separated), or STRATEGY alone for every other "
            "collection: last_wins, merge, manual (default: $HYBRIDSTORE_CONFLICT_STRATEGIES, "
            "$HYBRIDSTORE_CONFLICT_STRATEGY).",
        ),
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level", help="Log level: debug, info, warning, error (default: $HYBRIDSTORE_LOG_LEVEL or warning)."
        ),
    ] = "",
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Resilient hybrid storage: PostgreSQL primary, local SQLite, emergency journal, automatic fallback."""
    problem = setup_logging(log_level or os.environ.get("HYBRIDSTORE_LOG_LEVEL") or "warning")
    if problem:
        fail(problem, code=2)
    if data_dir is None:
        data_dir = os.environ.get("HYBRIDSTORE_DATA_DIR") or DEFAULT_DATA_DIR
    if not data_dir.strip():
        fail("the data directory is empty (''): pass a directory with --data-dir", code=2)
    default, per_collection = _strategies(conflict_strategy or [])
    ctx.obj = Settings(
        Path(data_dir),
        primary_url,
        schema,
        timeout,
        write_mode=write_mode,
        read_policy=read_policy,
        max_value_bytes=max_value_bytes,
        conflict_strategy=default,
        conflict_strategies=per_collection,
    )


def _strategies(values: list[str]) -> tuple[str | None, dict[str, str] | None]:
    """``--conflict-strategy`` values: the default strategy (a value without ``=``) and the per-collection ones."""
    default: str | None = None
    pairs: list[str] = []
    for value in values:
        for item in value.split(","):
            if "=" in item:
                pairs.append(item)
            elif item.strip():
                default = item.strip()
    try:
        per_collection = parse_strategies(",".join(pairs), source="--conflict-strategy")
    except ConfigError as exc:
        fail(str(exc), code=2, kind="ConfigError")
    return default, per_collection or None


# Closes that outlived their command (see `_close`); a later command of this process waits for them first.
_closing: list[threading.Thread] = []


@contextmanager
def open_store(ctx: typer.Context, *, access: Access = "write") -> Iterator[HybridStore]:
    """Open the store for one command (no background thread: the command does its own work) and turn our
    errors into a clear message and exit code (2 = bad input or configuration, 1 = anything else).

    ``access``: ``"read"`` for commands that only look — they need an existing store and work on a snapshot
    copy of one they may not write; ``"existing"`` for commands that change an existing store only;
    ``"write"`` (default) creates the store if the directory has none."""
    settings: Settings = ctx.obj
    for pending in _closing:
        pending.join()
    _closing.clear()
    config = _configure(settings)  # a mistake in the options is reported before anything is looked at
    path = settings.data_dir
    problem = datadir.location_problem(path)
    if problem:
        fail(problem, code=2, kind="ConfigError")
    exists = path.is_dir() and datadir.holds_store(path)
    if not exists and access != "write":
        where = "does not exist" if not path.exists() else "holds no hybridstore store"
        fail(
            f"data directory {path} {where}: check --data-dir / HYBRIDSTORE_DATA_DIR (this command never creates "
            "a store)",
            code=2,
            kind="ConfigError",
        )
    with ExitStack() as stack:
        if exists and not datadir.writable(path):
            if access != "read":
                fail(
                    f"data directory {path} is not writable by this process (read-only or another user's): only "
                    "commands that read (status, get, list …) work on it",
                    code=2,
                    kind="ConfigError",
                )
            settings.snapshot = _snapshot(stack, path, "is not writable by this process")
        try:
            store = _open(config, settings.snapshot or path)
        except StoreLockedError as exc:
            if access != "read":
                fail(
                    f"{_holder(exc, path)}; stop it first, or use a command that only reads",
                    code=2,
                    kind="StoreLockedError",
                )
            settings.snapshot = _snapshot(stack, path, "is in use by another process")
            store = _open(config, settings.snapshot)
        if not exists:
            note(f"created a new store in {path}")
        try:
            _probe(store)
            yield store
        except BAD_INPUT as exc:
            fail(str(exc), code=2, kind=type(exc).__name__)
        except HybridStoreError as exc:
            fail(str(exc), kind=type(exc).__name__)
        except OSError as exc:
            fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", kind="OSError")
        finally:
            _close(store)


def _holder(exc: StoreLockedError, path: Path) -> str:
    """The lock error, with the process that holds the directory and what it is, when known."""
    from ..web.local_socket import socket_path

    pid = datadir.lock_holder(path)
    if pid is None:
        return str(exc)
    what = "a running `hybridstore serve`, whose REST API can do it" if socket_path(path).exists() else "an application"
    return f"data directory {path} is in use by another process (pid {pid}: {what})"


def configuration(ctx: typer.Context) -> StoreConfig:
    """The store configuration the global options and the environment give (exit code 2 if it is wrong), for
    a command that checks its input against it before opening the store."""
    return _configure(ctx.obj)


def _configure(settings: Settings) -> StoreConfig:
    options: dict[str, Any] = {"background": False}
    if settings.schema:
        options["primary_schema"] = settings.schema
    for name in ("write_mode", "read_policy", "max_value_bytes", "conflict_strategy", "conflict_strategies"):
        if getattr(settings, name) is not None:
            options[name] = getattr(settings, name)
    if settings.timeout is not None:
        options["primary_timeout"] = settings.timeout
    try:
        config = resolve(primary_url=settings.primary_url, data_dir=settings.data_dir, **options)
        if config.primary_url:
            from ..tiers.primary import check_url

            check_url(config.primary_url)
    except ConfigError as exc:
        fail(str(exc), code=2, kind="ConfigError")
    log.debug(
        "data dir %s, primary %s (schema %s, timeout %gs), write mode %s, reads %s, max value %d bytes, "
        "conflicts %s (per collection: %s)",
        settings.data_dir,
        redact(config.primary_url) if config.primary_url else "none (embedded)",
        config.primary_schema,
        config.primary_timeout,
        config.write_mode,
        config.read_policy,
        config.max_value_bytes,
        config.conflict_strategy,
        dict(config.conflict_strategies) or "none",
    )
    return config


def real_paths(ctx: typer.Context, data: Any) -> Any:
    """``data`` (plain data) with the paths of a snapshot copy shown as the data directory's own."""
    settings: Settings = ctx.obj
    if settings.snapshot is None:
        return data
    copy, real = str(settings.snapshot), str(settings.data_dir)
    if isinstance(data, str):
        return real + data[len(copy) :] if data.startswith(copy) else data
    if isinstance(data, dict):
        return {k: real_paths(ctx, v) for k, v in data.items()}
    if isinstance(data, list):
        return [real_paths(ctx, v) for v in data]
    return data


def _snapshot(stack: ExitStack, path: Path, why: str) -> Path:
    problem = datadir.readable(path)
    if problem:
        fail(problem, code=2, kind="ConfigError")
    note(f"data directory {path} {why}: showing a snapshot copy of it")
    elsewhere = os.environ.get(BACKUP_DIR_ENV)
    copy: Path = stack.enter_context(datadir.snapshot(path, Path(elsewhere) if elsewhere else path / "backups"))
    if elsewhere:  # the copy's backup service must use the copy's links, not the repository itself
        os.environ[BACKUP_DIR_ENV] = str(copy / "backups")
        stack.callback(os.environ.__setitem__, BACKUP_DIR_ENV, elsewhere)
    return copy


def _open(config: StoreConfig, directory: Path) -> HybridStore:
    started = time.monotonic()
    try:
        store = HybridStore(dataclasses.replace(config, data_dir=directory))
    except StoreLockedError:
        raise
    except HybridStoreError as exc:
        fail(str(exc), code=2 if isinstance(exc, ConfigError) else 1, kind=type(exc).__name__)
    log.debug("opened node %s in %.0f ms", store.node_id, (time.monotonic() - started) * 1000)
    return store


def _probe(store: HybridStore) -> None:
    """Ask the primary once before the command (offline: the command works locally at once instead of waiting
    the timeout), and refuse to go on if the primary refuses this node."""
    gateway = store.node.gateway
    if not gateway.configured:
        return
    gateway.probe_now()
    probe = gateway.last_probe
    if probe is not None:
        log.debug(
            "primary probe: %s",
            f"answered in {probe.latency_ms:.1f} ms" if probe.ok and probe.latency_ms is not None else probe.error,
        )
    if gateway.misconfigured is not None:
        fail(
            f"the primary refuses this node: {gateway.misconfigured.strip()}. Fix the primary URL (database name), "
            "the credentials (role, password) or the role's privileges; nothing was done",
            code=2,
            kind="PrimaryMisconfiguredError",
        )


def _close(store: HybridStore) -> None:
    """Close the store. A probe of a black-holed primary keeps its connection attempt open for at least 2 s
    (libpq's and psycopg's smallest ``connect_timeout``), and closing the node waits for it: the command is done
    and every write it acknowledged is already durable, so do not make the user wait for that — close in a
    background thread. A later command of this process waits for it (the directory lock); a process that exits
    first is like one that crashed after its last write — the next open finds everything (SQLite's write-ahead
    log, the fsync'd journal)."""
    started = time.monotonic()
    probe = store.node.gateway.last_probe
    if probe is None or probe.ok or probe.exc is not None:  # no probe still waiting on a silent primary
        store.close()
    else:
        closer = threading.Thread(target=store.close, name="hybridstore-cli-close", daemon=True)
        closer.start()
        closer.join(0.05)
        if closer.is_alive():
            _closing.append(closer)
            log.debug("closing in the background: a probe still waits on the primary")
    log.debug("closed in %.0f ms", (time.monotonic() - started) * 1000)


def main() -> None:
    from . import admin, apikey, backup, conflicts, data, health, inventory, nodes, serve, status, transfer  # noqa: F401

    app()


__all__ = ["Settings", "app", "configuration", "err", "fail", "main", "open_store", "out", "print_json", "real_paths"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hybridstore")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
        return "unknown"
