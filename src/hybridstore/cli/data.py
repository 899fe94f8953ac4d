"""``set`` / ``get`` / ``delete`` / ``list``: read and write records."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..model import Record
from ..store import HybridStore
from .app import app, open_store
from .output import fail, out, plural, print_json

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
        fail(f"{collection}/{key} not found", kind="NotFound")
    if as_json:
        print_json(dataclasses.asdict(record))
    else:
        print_json(record.value)


def _absent(store: HybridStore, collection: str, key: str) -> bool:
    """Is the record certainly absent? Only when the answer covers the primary too: the primary answered the
    read, or there is none. Otherwise a record only the primary holds may exist: the deletion must be sent."""
    if store.get(collection, key) is not None:
        return False
    gateway = store.node.gateway
    return not gateway.configured or (gateway.allow() and store.config.read_policy == "primary_first")


@app.command()
def delete(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    key: Annotated[str, typer.Argument(help="Record key.")],
    as_json: JsonFlag = False,
) -> None:
    """Delete COLLECTION/KEY (a tombstone that reaches the primary and other nodes). A record that does not
    exist is left alone, and the message says so."""
    with open_store(ctx) as store:
        if _absent(store, collection, key):
            if as_json:
                print_json({"collection": collection, "key": key, "deleted": False, "absent": True})
            else:
                out.print(f"{escape(collection)}/{escape(key)} does not exist: nothing to delete")
            return
        result = store.delete(collection, key)
    if as_json:
        print_json({"collection": collection, "key": key, "deleted": True, **dataclasses.asdict(result)})
    else:
        out.print(
            f"deleted {escape(collection)}/{escape(key)} ({'queued, ' if result.queued else ''}{result.tier} tier)"
        )


def all_records(store: HybridStore, collection: str, prefix: str, limit: int, after: str | None) -> Iterator[Record]:
    """Every record from ``after`` on, page by page."""
    while True:
        page = store.list(collection, prefix=prefix, limit=limit, after=after)
        yield from page.records
        if page.next_after is None:
            return
        after = page.next_after


@app.command("list")
def list_(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    prefix: Annotated[str, typer.Option("--prefix", "-p", help="Only keys starting with this.")] = "",
    limit: Annotated[int, typer.Option("--limit", "-n", help="Records per page (1-10000).")] = 100,
    after: Annotated[str | None, typer.Option("--after", help="Start after this key (paging cursor).")] = None,
    every: Annotated[
        bool, typer.Option("--all", "-a", help="Every record, not one page (--limit is then the page size).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """List records of COLLECTION ordered by key: one page (--limit, --after) or --all."""
    with open_store(ctx, access="read") as store:
        if every:
            records, next_after = list(all_records(store, collection, prefix, limit, after)), None
        else:
            page = store.list(collection, prefix=prefix, limit=limit, after=after)
            records, next_after = page.records, page.next_after
    if as_json:
        print_json({"records": [dataclasses.asdict(r) for r in records], "next_after": next_after})
        return
    table = Table(title=f"{escape(collection)} ({plural(len(records), 'record')})")
    table.add_column("key")
    table.add_column("version", justify="right")
    table.add_column("source")
    table.add_column("pending")
    table.add_column("value", overflow="ellipsis", max_width=60)
    for r in records:
        value = json.dumps(r.value, ensure_ascii=False)
        table.add_row(escape(r.key), str(r.version), r.source, "yes" if r.pending else "", escape(value))
    out.print(table)
    if next_after is not None:
        out.print(f"more: --after {escape(repr(next_after))} (or --all)")
