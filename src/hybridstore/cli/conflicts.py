"""`hybridstore conflicts …` and `hybridstore deadletters …`: what sync could not settle by itself."""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, fields
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import ValidationError
from ..model import Conflict
from . import attach
from .app import app, open_store
from .output import confirm, err, fail, interactive, out, print_json

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

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
    as_json: JsonFlag = False,
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
    as_json: JsonFlag = False,
) -> None:
    """Show one conflict with its base, local and remote values."""
    with open_store(ctx, access="read") as store:
        conflict = store.get_conflict(conflict_id)
    if conflict is None:
        fail(f"no conflict with id {conflict_id}", kind="NotFound")
    if as_json:
        print_json(conflict.to_dict())
        return
    _print_conflict(conflict)


def _print_conflict(conflict: Conflict, console: Console = out) -> None:
    console.print(f"conflict {conflict.id} on {escape(conflict.collection)}/{escape(conflict.key)}", highlight=False)
    console.print(f"strategy {conflict.strategy}, {conflict.status}, created {_when(conflict.created_at)} UTC")
    for side in ("base", "local", "remote"):
        console.print(f"[bold]{side}:[/] {escape(json.dumps(getattr(conflict, side), ensure_ascii=False, indent=2))}")
    if conflict.status != "open":
        console.print(
            f"resolved by {escape(conflict.resolved_by or '?')} at {_when(conflict.resolved_at)} UTC: "
            f"{escape(json.dumps(conflict.resolution))}"
        )


CHOICES = ("local", "remote", "value")


@conflicts_app.command("resolve")
def conflicts_resolve(
    ctx: typer.Context,
    conflict_id: Annotated[int, typer.Argument(help="Conflict id (from `conflicts list`).")],
    choice: Annotated[
        str | None,
        typer.Option(
            "--choice",
            help="local (the queued write), remote (keep the primary's), or value (write --value). Asked for on a "
            "terminal; required anywhere else.",
        ),
    ] = None,
    value: Annotated[str | None, typer.Option("--value", help="JSON value to write with --choice value.")] = None,
    actor: Annotated[str, typer.Option("--actor", help="Who resolves it (recorded in the audit log).")] = "admin",
    as_json: JsonFlag = False,
) -> None:
    """Resolve an open manual conflict; the choice is audited."""
    if choice is not None and choice not in CHOICES:
        fail("--choice must be local, remote or value", code=2)
    if choice is None and not interactive():
        fail("--choice is required (local, remote or value): standard input is not a terminal", code=2)
    if value is not None and choice not in (None, "value"):
        fail("--value goes with --choice value", code=2)
    if choice == "value" and value is None:
        fail("--choice value needs --value JSON", code=2)
    remote = attach.connect(ctx)
    if remote is not None:  # the running node resolves it (audited there, with this actor's name too)
        with remote:
            if choice is None:
                _print_conflict(_conflict(remote.get(f"/conflicts/{conflict_id}")), err)
                choice = _ask_choice()
                if choice == "value" and value is None:
                    value = typer.prompt("JSON value to write", err=True)
            body = {"choice": choice, "value": _decode_value(value) if choice == "value" else None}
            done = remote.send("POST", f"/conflicts/{conflict_id}/resolve", json=body)
        write = done["write"]
        if as_json:
            print_json({"id": conflict_id, "choice": choice, "write": write})
        else:
            where = "kept the primary's value" if write is None else f"wrote it ({write['tier']})"
            out.print(f"conflict {conflict_id} resolved: {choice}, {where}")
        return
    with open_store(ctx) as store:
        if choice is None:
            conflict = store.get_conflict(conflict_id)
            if conflict is None:
                fail(f"no conflict with id {conflict_id}", kind="NotFound")
            _print_conflict(conflict, err)  # part of the question: standard output stays the result's
            choice = _ask_choice()
            if choice == "value" and value is None:
                value = typer.prompt("JSON value to write", err=True)
        decoded = _decode_value(value) if choice == "value" else None
        result = store.resolve_conflict(conflict_id, choice, decoded, actor=actor)
    if as_json:
        print_json({"id": conflict_id, "choice": choice, "write": None if result is None else asdict(result)})
        return
    where = "kept the primary's value" if result is None else f"wrote it ({result.tier})"
    out.print(f"conflict {conflict_id} resolved: {choice}, {where}")


def _conflict(data: dict[str, Any]) -> Conflict:
    return Conflict(**{f.name: data[f.name] for f in fields(Conflict) if f.name in data})


def _ask_choice() -> str:
    while True:
        answer = str(typer.prompt("Keep which value? local, remote, or value (write a new one)", err=True)).strip()
        if answer in CHOICES:
            return answer
        err.print("answer local, remote or value")


def _decode_value(text: str | None) -> Any:
    try:
        return json.loads(text or "")
    except json.JSONDecodeError as exc:
        fail(f"--value is not JSON: {exc}", code=2)


@deadletters_app.command("list")
def deadletters_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 100,
    as_json: JsonFlag = False,
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
    as_json: JsonFlag = False,
) -> None:
    """Write a dead letter's value again, as a new write."""
    remote = attach.connect(ctx)
    if remote is not None:  # the running node writes it (and pushes it by itself)
        with remote:
            wrote = remote.send("POST", f"/dead-letters/{letter_id}/retry")
        if as_json:
            print_json({"id": letter_id, "write": wrote})
        else:
            out.print(f"dead letter {letter_id} written again ({wrote['tier']}{', queued' if wrote['queued'] else ''})")
        return
    with open_store(ctx, access="existing") as store:
        try:
            result = store.retry_dead_letter(letter_id)
        except ValidationError as exc:
            fail(str(exc), kind="NotFound")
        store.sync_now()
    if as_json:
        print_json({"id": letter_id, "write": asdict(result)})
    else:
        out.print(f"dead letter {letter_id} written again ({result.tier}{', queued' if result.queued else ''})")


@deadletters_app.command("discard")
def deadletters_discard(
    ctx: typer.Context,
    letter_id: Annotated[int, typer.Argument(help="Dead letter id (from `deadletters list`).")],
    actor: Annotated[str, typer.Option("--actor", help="Who discards it (recorded in the audit log).")] = "admin",
    yes: YesFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Drop a dead letter for good (asks first on a terminal; --yes anywhere else)."""
    confirm(f"Discard dead letter {letter_id} for good?", yes=yes)
    remote = attach.connect(ctx)
    if remote is not None:
        with remote:
            letter = remote.send("DELETE", f"/dead-letters/{letter_id}", params={"confirm": str(letter_id)})[
                "discarded"
            ]
    else:
        letter = _discard_locally(ctx, letter_id, actor)
    if as_json:
        print_json({"id": letter_id, "discarded": letter})
    else:
        out.print(f"dead letter {letter_id} ({escape(letter['collection'])}/{escape(letter['key'])}) discarded")


def _discard_locally(ctx: typer.Context, letter_id: int, actor: str) -> dict[str, Any]:
    with open_store(ctx, access="existing") as store:
        try:
            letter: dict[str, Any] = store.discard_dead_letter(letter_id, actor=actor)
        except ValidationError as exc:
            fail(str(exc), kind="NotFound")
    return letter
