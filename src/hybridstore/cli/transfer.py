"""``export`` / ``import``: records as plain JSON lines — data for other tools, not backups.

One record per line: ``{"collection": "products", "key": "p1", "value": {...}}``. Both stream: export reads page
by page, import reads the file twice (check everything, then write), so neither holds the data in memory. An
import writes nothing unless every line is valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from ..errors import ValidationError
from ..store import HybridStore
from ..validation import check_collection, check_key, encode_value
from .app import app, configuration, open_store
from .data import all_records
from .output import fail, out, plural, print_json, progress_bars

BATCH = 1000  # records per set_many call: one SQLite transaction each
PAGE = 1000


@app.command()
def export(
    ctx: typer.Context,
    collection: Annotated[
        list[str] | None, typer.Argument(help="Collections to export (default: every collection of this node).")
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="File to write ('-': standard output, the default).")
    ] = "-",
    prefix: Annotated[str, typer.Option("--prefix", "-p", help="Only keys starting with this.")] = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary (needs --output: the records use standard output).")
    ] = False,
) -> None:
    """Write records as JSON lines ({"collection", "key", "value"} per line), read as `get` reads them, with a
    progress bar. A file is written whole or not at all."""
    if as_json and output == "-":
        fail("--json needs --output FILE: the records themselves go to standard output", code=2)
    with open_store(ctx, access="read") as store:
        for name in collection or []:
            check_collection(name)
        counts = _counts(store)
        names = collection or sorted(counts)
        with progress_bars(quiet=as_json) as bars, _target(output) as stream:
            written: dict[str, int] = {}
            done, total = 0, sum(counts.get(n, 0) for n in names)
            for name in names:
                written[name] = 0
                for record in all_records(store, name, prefix, PAGE, None):
                    line = {"collection": name, "key": record.key, "value": record.value}
                    stream.write(json.dumps(line, ensure_ascii=False) + "\n")
                    written[name] += 1
                    done += 1
                    if done % 100 == 0:
                        bars.update("exporting", done, max(total, done))
            bars.update("exporting", done, done)
    summary = {"path": None if output == "-" else output, "records": done, "collections": written}
    if as_json:
        print_json(summary)
    elif output != "-":
        out.print(f"exported {plural(done, 'record')} of {plural(len(written), 'collection')} to {output}")


def _counts(store: HybridStore) -> dict[str, int]:
    local = store.node.slot.tier
    return local.collection_counts() if local is not None else {}


@contextlib.contextmanager
def _target(output: str) -> Iterator[IO[str]]:
    """Standard output, or a temporary file beside ``output`` that replaces it only once it is complete."""
    if output == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@app.command("import")
def import_(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="JSON-lines file to read ('-': standard input).")],
    collection: Annotated[
        str | None,
        typer.Option("--collection", "-c", help="Collection for lines that name none (lines that do name one win)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Read JSON lines ({"collection", "key", "value"} per line, as `export` writes them) and store every record,
    with progress bars. Every line is checked first: one bad line (its number is given) and nothing is
    written. The records are queued like any write and pushed to the primary at once when it answers."""
    config = configuration(ctx)
    with _readable(source) as path:
        try:  # before the store is opened: a file that cannot be imported creates nothing
            if collection is not None:
                check_collection(collection)
            with progress_bars(quiet=as_json, as_bytes=True) as bars:
                lines = _check(path, collection, config.max_value_bytes, bars.callback("checking"))
        except ValidationError as exc:
            fail(f"nothing was imported: {exc}", code=2, kind="ValidationError")
        with open_store(ctx) as store, progress_bars(quiet=as_json) as bars:
            counts = _write(store, path, collection, lines, bars.callback("importing"))
            records = sum(counts.values())
            report = None
            if store.node.gateway.configured and records:
                labels = {"push": "pushing", "pull": "pulling changes"}
                report = store.sync_now(progress=lambda phase, done, total: bars.update(labels[phase], done, total))
    queued = report.remaining if report is not None else records
    if as_json:
        print_json({"records": records, "collections": counts, "still_queued": queued})
        return
    out.print(f"imported {plural(records, 'record')} into {plural(len(counts), 'collection')}")
    if queued:
        out.print(f"{plural(queued, 'write')} queued for the primary (see `hybridstore pending`)")


@contextlib.contextmanager
def _readable(source: str) -> Iterator[Path]:
    """A path to read twice: the file itself, or standard input spooled to a temporary file."""
    if source != "-":
        path = Path(source)
        if not path.is_file():
            fail(f"{source}: no such file", code=2, kind="UsageError")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="hybridstore-import-") as tmp:
        spool = Path(tmp) / "stdin.jsonl"
        with open(spool, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f)
        yield spool


def _records(path: Path) -> Iterator[tuple[int, int, str]]:
    """(line number, bytes read so far, text) of every line that is not blank."""
    done = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            done += len(raw)
            text = raw.decode("utf-8", errors="strict").strip()
            if text:
                yield number, done, text


def _parse(number: int, text: str, collection: str | None) -> tuple[str, str, Any]:
    try:
        line = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"line {number} is not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(line, dict) or "key" not in line or "value" not in line:
        raise ValidationError(f'line {number} is not a record: {{"collection": …, "key": …, "value": …}} expected')
    name = line.get("collection", collection)
    if name is None:
        raise ValidationError(f"line {number} names no collection: add one, or pass --collection")
    if not isinstance(name, str) or not isinstance(line["key"], str):
        raise ValidationError(f"line {number}: collection and key must be strings")
    return name, line["key"], line["value"]


def _check(path: Path, collection: str | None, max_bytes: int, progress: Callable[[int, int], None]) -> int:
    """Check every line as the write would (names, keys, values); returns how many records there are."""
    total = path.stat().st_size
    count = 0
    try:
        for number, done, text in _records(path):
            name, key, value = _parse(number, text, collection)
            try:
                check_collection(name)
                check_key(key)
                encode_value(value, max_bytes=max_bytes)
            except ValidationError as exc:
                raise ValidationError(f"line {number}: {exc}") from None
            count += 1
            if count % 500 == 0:
                progress(done, total)
    except UnicodeDecodeError as exc:
        raise ValidationError(f"the file is not UTF-8 text: {exc.reason}") from None
    progress(total, total)
    return count


def _write(
    store: HybridStore, path: Path, collection: str | None, total: int, progress: Callable[[int, int], None]
) -> dict[str, int]:
    """Store every record, in batches of consecutive lines of one collection; returns the count per collection."""
    counts: dict[str, int] = {}
    batch: list[tuple[str, Any]] = []
    current: str | None = None
    done = 0

    def flush() -> None:
        nonlocal done
        if current is not None and batch:
            store.set_many(current, batch)
            counts[current] = counts.get(current, 0) + len(batch)
            done += len(batch)
            progress(done, total)
            batch.clear()

    for number, _, text in _records(path):
        name, key, value = _parse(number, text, collection)
        if name != current or len(batch) >= BATCH:
            flush()
            current = name
        batch.append((key, value))
    flush()
    return counts


__all__ = ["export", "import_"]
