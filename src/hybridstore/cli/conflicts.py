"""`hybridstore conflicts …` and `hybridstore deadletters …`: what sync could not settle by itself."""

from __future__ import annotations

import datetime
import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ValidationError
from .app import app, fail, open_store, out, print_json

conflicts_app = typer.Typer(
    help="Sync conflicts: list, show and resolve the ones queued for an admin.", no_args_is_help=True
)
deadletters_app = typer.Typer(
    help="Dead letters: writes the primary refused STORAGE_SYNC_RETRY_ATTEMPTS times. Retry or discard them.",
    no_args_is_help=True,
)
app.add_typer(conflicts_app, name="conflicts")
app.add_typer(deadletters_app, name="deadletters")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


@conflicts_app.command("list")
def conflicts_list(
    ctx: typer.Context,
    status: Annotated[str, typer.Option("--status", help="open, resolved or all.")] = "open",
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Only this collection.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List conflicts (open ones by default)."""
    if status not in ("open", "resolved", "all"):
        fail("--status must be open, resolved or all", code=2)
    with open_store(ctx, access="read") as store:
        found = store.conflicts(None if status == "all" else status, collection=collection, limit=limit)
    if as_json:
        print_json([c.to_dict() for c in found])
        return
    if not found:
        out.print(f"no {'' if status == 'all' else status + ' '}conflicts")
        return
    table = Table("id", "record", "strategy", "status", "local", "remote", "created (UTC)")
    for c in found:
        table.add_row(
            str(c.id),
            escape(f"{c.collection}/{c.key}"),
            c.strategy,
            c.status,
            escape(_short(c.local)),
            escape(_short(c.remote)),
            _when(c.created_at),
        )
    out.print(table)


@conflicts_app.command("show")
def conflicts_show(
    ctx: typer.Context,
    conflict_id: Annotated[int, typer.Argument(help="Conflict id (from `conflicts list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one conflict with its base, local and remote values."""
    with open_store(ctx, access="read") as store:
        conflict = store.get_conflict(conflict_id)
    if conflict is None:
        fail(f"no conflict with id {conflict_id}")
    if as_json:
        print_json(conflict.to_dict())
        return
    out.print(f"conflict {conflict.id} on {escape(conflict.collection)}/{escape(conflict.key)}", highlight=False)
    out.print(f"strategy {conflict.strategy}, {conflict.status}, created {_when(conflict.created_at)} UTC")
    for side in ("base", "local", "remote"):
        out.print(f"[bold]{side}:[/] {escape(json.dumps(getattr(conflict, side), ensure_ascii=False, indent=2))}")
    if conflict.status != "open":
        out.print(
            f"resolved by {escape(conflict.resolved_by or '?')} at {_when(conflict.resolved_at)} UTC: "
            f"{escape(json.dumps(conflict.resolution))}"
        )


@conflicts_app.command("resolve")
def conflicts_resolve(
    ctx: typer.Context,
    conflict_id: Annotated[int, typer.Argument(help="Conflict id (from `conflicts list`).")],
    choice: Annotated[
        str,
        typer.Option(
            "--choice", help="local (the queued write), remote (keep the primary's), or value (write --value)."
        ),
    ] = "local",
    value: Annotated[str | None, typer.Option("--value", help="JSON value to write with --choice value.")] = None,
    actor: Annotated[str, typer.Option("--actor", help="Who resolves it (recorded in the audit log).")] = "admin",
) -> None:
    """Resolve an open manual conflict; the choice is audited."""
    decoded: Any = None
    if choice == "value":
        if value is None:
            fail("--choice value needs --value JSON", code=2)
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError as exc:
            fail(f"--value is not JSON: {exc}", code=2)
    elif value is not None:
        fail("--value goes with --choice value", code=2)
    with open_store(ctx) as store:
        result = store.resolve_conflict(conflict_id, choice, decoded, actor=actor)
    where = "kept the primary's value" if result is None else f"wrote it ({result.tier})"
    out.print(f"conflict {conflict_id} resolved: {choice}, {where}")


@deadletters_app.command("list")
def deadletters_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List dead letters of this node."""
    with open_store(ctx, access="read") as store:
        letters = store.dead_letters(limit=limit)
    if as_json:
        print_json(letters)
        return
    if not letters:
        out.print("no dead letters")
        return
    table = Table("id", "record", "value", "attempts", "error", "dead since (UTC)")
    for d in letters:
        table.add_row(
            str(d["id"]),
            escape(f"{d['collection']}/{d['key']}"),
            escape(_short(None if d["value"] is None else json.loads(d["value"]))),
            str(d["attempts"]),
            escape((d["error"] or "").removeprefix("primary rejected the operation: ").splitlines()[0][:60]),
            _when(d["dead_at"]),
        )
    out.print(table)


@deadletters_app.command("retry")
def deadletters_retry(
    ctx: typer.Context,
    letter_id: Annotated[int, typer.Argument(help="Dead letter id (from `deadletters list`).")],
) -> None:
    """Write a dead letter's value again, as a new write."""
    with open_store(ctx) as store:
        try:
            result = store.retry_dead_letter(letter_id)
        except ValidationError as exc:
            fail(str(exc))
        store.sync_now()
    out.print(f"dead letter {letter_id} written again ({result.tier}{', queued' if result.queued else ''})")


@deadletters_app.command("discard")
def deadletters_discard(
    ctx: typer.Context,
    letter_id: Annotated[int, typer.Argument(help="Dead letter id (from `deadletters list`).")],
    actor: Annotated[str, typer.Option("--actor", help="Who discards it (recorded in the audit log).")] = "admin",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop a dead letter for good."""
    if not yes:
        typer.confirm(f"discard dead letter {letter_id} for good?", abort=True)
    with open_store(ctx) as store:
        try:
            letter = store.discard_dead_letter(letter_id, actor=actor)
        except ValidationError as exc:
            fail(str(exc))
    out.print(f"dead letter {letter_id} ({escape(letter['collection'])}/{escape(letter['key'])}) discarded")
