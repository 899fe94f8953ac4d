"""``set`` / ``get`` / ``delete`` / ``list``: read and write records."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .app import app, fail, open_store, out, print_json

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _parse_value(text: str | None) -> Any:
    if text is None or text == "-":
        if sys.stdin.isatty():
            fail("no value given: pass JSON as an argument or on standard input", code=2)
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"the value is not valid JSON ({exc.msg} at position {exc.pos}); quote strings: '\"text\"'", code=2)


@app.command("set")
def set_(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="Collection name, e.g. products.")],
    key: Annotated[str, typer.Argument(help="Record key.")],
    value: Annotated[str | None, typer.Argument(help="JSON value; '-' or nothing reads standard input.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Store a JSON value under COLLECTION/KEY."""
    parsed = _parse_value(value)
    with open_store(ctx) as store:
        result = store.set(collection, key, parsed)
    if as_json:
        print_json(dataclasses.asdict(result))
    elif result.queued:  # user data is escaped: a key like "[b]" is text, not markup
        out.print(
            f"queued {escape(collection)}/{escape(key)} in the {result.tier} tier (op {result.op_id}); "
            "it will reach the primary when it is available"
        )
    else:
        out.print(f"saved {escape(collection)}/{escape(key)} on the primary (version {result.version})")


@app.command()
def get(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    key: Annotated[str, typer.Argument(help="Record key.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole record (value, version, source…).")] = False,
) -> None:
    """Print the value stored under COLLECTION/KEY (exit code 1 if there is none)."""
    with open_store(ctx, access="read") as store:
        record = store.get(collection, key)
    if record is None:
        fail(f"{collection}/{key} not found")
    if as_json:
        print_json(dataclasses.asdict(record))
    else:
        print_json(record.value)


@app.command()
def delete(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    key: Annotated[str, typer.Argument(help="Record key.")],
    as_json: JsonFlag = False,
) -> None:
    """Delete COLLECTION/KEY (a tombstone that reaches the primary and other nodes)."""
    with open_store(ctx) as store:
        result = store.delete(collection, key)
    if as_json:
        print_json(dataclasses.asdict(result))
    else:
        out.print(
            f"deleted {escape(collection)}/{escape(key)} ({'queued, ' if result.queued else ''}{result.tier} tier)"
        )


@app.command("list")
def list_(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    prefix: Annotated[str, typer.Option("--prefix", "-p", help="Only keys starting with this.")] = "",
    limit: Annotated[int, typer.Option("--limit", "-n", help="Records per page (1-10000).")] = 100,
    after: Annotated[str | None, typer.Option("--after", help="Start after this key (paging cursor).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List records of COLLECTION ordered by key."""
    with open_store(ctx, access="read") as store:
        page = store.list(collection, prefix=prefix, limit=limit, after=after)
    if as_json:
        print_json({"records": [dataclasses.asdict(r) for r in page], "next_after": page.next_after})
        return
    table = Table(title=f"{escape(collection)} ({len(page)} record{'s' if len(page) != 1 else ''})")
    table.add_column("key")
    table.add_column("version", justify="right")
    table.add_column("source")
    table.add_column("pending")
    table.add_column("value", overflow="ellipsis", max_width=60)
    for r in page:
        value = json.dumps(r.value, ensure_ascii=False)
        table.add_row(escape(r.key), str(r.version), r.source, "yes" if r.pending else "", escape(value))
    out.print(table)
    if page.next_after is not None:
        out.print(f"more: --after {escape(repr(page.next_after))}")
