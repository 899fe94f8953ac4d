"""What every command prints: the consoles, JSON, errors (as text or JSON), plurals and progress bars.

Standard output carries results; standard error carries messages and progress bars. Under ``--json`` standard
output holds exactly one JSON document (or one per line for a stream such as ``health --watch --json``): the
result, or ``{"error": {"type": …, "message": …}}`` when the command fails; the exit code says which.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

out = Console()
err = Console(stderr=True)

# Set by the command group for each invocation: was ``--json`` given (errors are then JSON too)?
json_requested: ContextVar[bool] = ContextVar("json_requested", default=False)


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str, ensure_ascii=False))


def print_json_line(data: Any) -> None:
    """One compact JSON document on one line (for streams of results)."""
    typer.echo(json.dumps(data, default=str, ensure_ascii=False))


def emit_error(kind: str, message: str) -> None:
    """Print an error the way the invocation asked for: JSON on standard output, or text on standard error."""
    if json_requested.get():
        typer.echo(json.dumps({"error": {"type": kind, "message": message}}, ensure_ascii=False))
    else:
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, *, code: int = 1, kind: str | None = None) -> NoReturn:
    """Stop the command with ``message``. ``code`` 2 means bad input or configuration (fix the command), 1 that
    the work failed or found nothing. ``kind`` names the error in JSON (default: ``UsageError`` for code 2,
    ``Error`` otherwise)."""
    emit_error(kind or ("UsageError" if code == 2 else "Error"), message)
    raise typer.Exit(code)


def note(message: str) -> None:
    """A remark on standard error that does not change the result (never under ``--json``)."""
    if not json_requested.get():
        err.print(escape(message), style="dim", highlight=False, soft_wrap=True)


def interactive() -> bool:
    """May the command ask the user (standard input is a terminal)?"""
    return sys.stdin.isatty()


def confirm(question: str, *, yes: bool) -> None:
    """Go on only if the user agrees: ``--yes`` (``-y``) agrees in advance; on a terminal the question is asked
    (on standard error, so standard output stays clean); anywhere else — a script, a pipe — ``--yes`` is
    required rather than assumed."""
    if yes:
        return
    if not interactive():
        fail(f"{question} Pass --yes (-y) to confirm: standard input is not a terminal, so nobody can answer", code=2)
    typer.confirm(question, abort=True, err=True)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 record``, ``2 records``, ``1,000 records`` (``many`` for irregular plurals: ``entry``/``entries``)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


class ProgressBars:
    """Progress bars on standard error, one per label, that appear with their first update (a command that fails
    before any work draws none)."""

    def __init__(self, *, quiet: bool, as_bytes: bool = False) -> None:
        self._quiet = quiet
        self._as_bytes = as_bytes
        self._progress: Progress | None = None
        self._tasks: dict[str, Any] = {}

    def callback(self, label: str) -> Callable[[int, int | None], None]:
        """The ``progress(done, total)`` callback of the bar named ``label``."""

        def update(done: int, total: int | None) -> None:
            self.update(label, done, total)

        return update

    def update(self, label: str, done: int, total: int | None) -> None:
        if self._quiet:
            return
        if self._progress is None:
            columns: list[ProgressColumn] = [
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn() if self._as_bytes else MofNCompleteColumn(),
                TimeElapsedColumn(),
            ]
            self._progress = Progress(*columns, console=err, transient=False)
            self._progress.start()
        if label not in self._tasks:
            self._tasks[label] = self._progress.add_task(label, total=total)
        self._progress.update(self._tasks[label], completed=done, total=total)

    def stop(self, *, erase: bool = False) -> None:
        if self._progress is not None:
            self._progress.live.transient = erase
            self._progress.stop()
            self._progress = None


@contextmanager
def progress_bars(*, quiet: bool, as_bytes: bool = False) -> Iterator[ProgressBars]:
    """Progress bars for the block; erased if the block fails, so an error message never follows a half-drawn
    bar."""
    bars = ProgressBars(quiet=quiet, as_bytes=as_bytes)
    try:
        yield bars
    except BaseException:
        bars.stop(erase=True)
        raise
    bars.stop()


@contextmanager
def progress_bar(label: str, *, quiet: bool, as_bytes: bool = False) -> Iterator[Callable[[int, int | None], None]]:
    """One progress bar (see `progress_bars`) and the ``progress(done, total)`` callback that drives it."""
    with progress_bars(quiet=quiet, as_bytes=as_bytes) as bars:
        yield bars.callback(label)


__all__ = [
    "ProgressBars",
    "confirm",
    "emit_error",
    "err",
    "fail",
    "interactive",
    "json_requested",
    "note",
    "out",
    "plural",
    "print_json",
    "print_json_line",
    "progress_bar",
    "progress_bars",
]
