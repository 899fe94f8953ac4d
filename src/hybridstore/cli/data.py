"""``set`` / ``get`` / ``delete`` / ``list``: read and write records."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from ..model import Record, WriteResult
from ..store import HybridStore
from . import attach
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
    remote = attach.connect(ctx)
    if remote is not None:  # the running node writes it
        with remote:
            result = _write_result(remote.send("PUT", _item(collection, key), json=parsed))
    else:
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
    remote = attach.connect(ctx)
    if remote is not None:
        with remote:
            record = _remote_record(remote, collection, key)
    else:
        with open_store(ctx, access="read") as store:
            record = store.get(collection, key)
    if record is None:
        fail(f"{collection}/{key} not found", kind="NotFound")
    if as_json:
        print_json(dataclasses.asdict(record))
    else:
        print_json(record.value)


def _item(collection: str, key: str) -> str:
    return f"/collections/{quote(collection, safe='')}/items/{quote(key, safe='')}"


def _record(data: dict[str, Any]) -> Record:
    return Record(**{f.name: data[f.name] for f in dataclasses.fields(Record) if f.name in data})


def _remote_record(remote: attach.Attached, collection: str, key: str) -> Record | None:
    """The running node's answer for one record (``None``: it has none)."""
    try:
        response = remote.client.get(attach.API + _item(collection, key))
    except httpx.TransportError as exc:
        fail(f"the running node stopped answering: {exc}", kind="UnavailableError")
    if response.status_code == 404 and response.json().get("type", "").endswith(":not-found"):
        return None
    if response.status_code != 200:
        attach.fail_with(response)
    return _record(response.json())


def _write_result(data: dict[str, Any]) -> WriteResult:
    return WriteResult(**{f.name: data[f.name] for f in dataclasses.fields(WriteResult) if f.name in data})


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
    remote = attach.connect(ctx)
    with remote if remote is not None else open_store(ctx) as target:
        if isinstance(target, attach.Attached):
            absent = _remote_record(target, collection, key) is None
        else:
            absent = _absent(target, collection, key)
        if absent:
            if as_json:
                print_json({"collection": collection, "key": key, "deleted": False, "absent": True})
            else:
                out.print(f"{escape(collection)}/{escape(key)} does not exist: nothing to delete")
            return
        if isinstance(target, attach.Attached):
            result = _write_result(target.send("DELETE", _item(collection, key)))
        else:
            result = target.delete(collection, key)
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


def _remote_list(
    remote: attach.Attached, collection: str, prefix: str, limit: int, after: str | None, every: bool
) -> tuple[list[Record], str | None]:
    """A page (or, with ``every``, all pages) from the running node; its pages hold at most 1000 records."""
    records: list[Record] = []
    path = f"/collections/{quote(collection, safe='')}/items"
    while True:
        page = remote.get(path, params={"prefix": prefix or None, "after": after, "limit": min(limit, 1000)})
        records += [_record(r) for r in page["items"]]
        after = page["next_after"]
        if after is None or (not every and len(records) >= limit):
            return records, None if every else after


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
    remote = attach.connect(ctx)
    if remote is not None:
        with remote:
            records, next_after = _remote_list(remote, collection, prefix, limit, after, every)
    else:
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
