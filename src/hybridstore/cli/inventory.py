"""``collections`` and ``pending``: what this node holds, and what it has not handed to the primary yet."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..store import HybridStore
from ..tiers.local import LocalTier
from ..validation import check_collection
from ..web.localview import CollectionFigures, OutboxEntry, collection_figures, outbox_view
from . import attach
from .app import app, open_store
from .output import fail, out, plural, print_json

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _local(store: HybridStore) -> LocalTier:
    local = store.node.slot.tier
    if local is None:
        fail(
            f"the local store is not usable: {store.node.slot.error}; see `hybridstore repair`", kind="LocalStoreError"
        )
    return local


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


@app.command()
def collections(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The collections this node holds: live records, their size (stored JSON), and writes waiting for the
    primary."""
    remote = attach.connect(ctx)
    if remote is not None:
        with remote:
            found = remote.get("/collections")["collections"]
        figures = [CollectionFigures(c["name"], c["records"], c["bytes"], c["pending"]) for c in found]
    else:
        with open_store(ctx, access="read") as store:
            figures = collection_figures(_local(store).path)
    if as_json:
        print_json([f.to_dict() for f in figures])
        return
    if not figures:
        out.print("no collections")
        return
    table = Table(title=plural(len(figures), "collection"))
    table.add_column("collection")
    for name in ("records", "size", "pending"):
        table.add_column(name, justify="right")
    for f in figures:
        table.add_row(escape(f.collection), f"{f.records:,}", _size(f.bytes), f"{f.pending:,}" if f.pending else "")
    table.add_row(
        "[bold]total[/]",
        f"{sum(f.records for f in figures):,}",
        _size(sum(f.bytes for f in figures)),
        f"{sum(f.pending for f in figures):,}",
    )
    out.print(table)


def _why(primary: dict[str, Any], circuit: str) -> str:
    """Why queued writes have not reached the primary (the node-wide reason; each entry has its own error), from
    the gateway's snapshot and the circuit's state."""
    if primary.get("configured") is False:
        return "no primary is configured: writes stay queued until one is (--primary-url or $HYBRIDSTORE_PRIMARY_URL)"
    if primary["state"] == "misconfigured":
        return f"the primary refuses this node: {primary['detail']}"
    if circuit != "closed":
        return f"the primary is unreachable: {primary['detail']}"
    return (
        "the primary answers: the application using this data directory pushes them while it runs; "
        "`hybridstore sync` pushes them now"
    )


def _age(created_at: float, now: float) -> str:
    s = max(0, int(now - created_at))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@app.command()
def pending(
    ctx: typer.Context,
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Only this collection.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many, oldest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Writes queued for the primary, oldest first: what, since when, how many push attempts and the last
    error — and why they have not gone."""
    if limit < 1:
        fail("--limit must be at least 1", code=2)
    if collection is not None:
        check_collection(collection)
    remote = attach.connect(ctx)
    if remote is not None:  # the running node's queue, as it is now
        with remote:
            data = remote.get("/outbox", params={"collection": collection, "limit": min(limit, 1000)})
            status = remote.get("/status")
        why = _why(status["primary"], status["circuit"]["state"])
    else:
        with open_store(ctx, access="read") as store:
            data = outbox_view(store, collection=collection, limit=limit)
            why = _why(store.node.gateway.snapshot(), store.node.gateway.circuit.state)
    now = time.time()
    depth, oldest, dead = data["depth"], data["oldest_created_at"], data["dead_letters"]
    entries = [OutboxEntry(**e) for e in data["entries"]]
    journal = data["journal"]
    if as_json:
        print_json(
            {
                "reason": why,
                "depth": depth,
                "oldest_age_s": None if oldest is None else round(now - oldest, 3),
                "dead_letters": dead,
                "entries": [e.to_dict() | {"tier": "local", "age_s": round(now - e.created_at, 3)} for e in entries],
                "journal": [j | {"age_s": round(now - j["created_at"], 3)} for j in journal],
            }
        )
        return
    if not depth and not journal:
        out.print("nothing is waiting for the primary")
    else:
        waiting = plural(depth + len(journal), "write")
        out.print(f"{waiting} waiting, the oldest for {_age(oldest or now, now)}: {escape(why)}")
        table = Table()
        for name in ("seq", "record", "op", "waiting", "attempts", "last error"):
            table.add_column(
                name, justify="right" if name in ("seq", "attempts", "waiting") else "left", overflow="fold"
            )
        for e in entries:
            error = (e.last_error or "").removeprefix("primary rejected the operation: ").splitlines()
            table.add_row(
                str(e.seq),
                escape(f"{e.collection}/{e.key}"),
                "delete" if e.deleted else "set",
                _age(e.created_at, now),
                str(e.attempts),
                escape(error[0][:80] if error else ("" if e.attempts else "not tried yet")),
            )
        for j in journal:
            table.add_row(
                "journal",
                escape(f"{j['collection']}/{j['key']}"),
                "delete" if j["deleted"] else "set",
                _age(j["created_at"], now),
                "",
                "in the emergency journal: SQLite failed",
            )
        out.print(table)
        if len(entries) < depth and not collection:
            out.print(f"… {plural(depth - len(entries), 'more write')} (--limit)")
    if dead:
        out.print(f"{plural(dead, 'dead letter')}: writes the primary refused; see `hybridstore deadletters list`")


__all__ = ["collections", "pending"]
