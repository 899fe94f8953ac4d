"""``backup …``: create, list, show, verify, restore, export, import, delete, prune, pin, rekey, config."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from ..backup.repository import BackupInfo
from ..backup.restore import RestoreReport
from ..store import HybridStore
from . import attach
from .app import app, open_store
from .output import confirm, fail, out, plural, print_json, progress_bar

backup_app = typer.Typer(
    name="backup",
    help="Backups: create, list, verify, restore, export/import, prune, settings.",
    no_args_is_help=True,
)
app.add_typer(backup_app, name="backup")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
IdArg = Annotated[
    str,
    typer.Argument(help="Backup id: the short id from `backup list`, the full id, or a unique prefix (4+ characters)."),
]
SHORT_ID = 8
YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def short_ids(ids: Iterable[str]) -> dict[str, str]:
    """Each backup id's short form: its last 8 characters, longer if another id ends the same way. (Ids are
    time-ordered: they start with a timestamp that backups taken close together share, and end at random.)"""
    every = list(ids)
    shorts: dict[str, str] = {}
    for backup_id in every:
        n = SHORT_ID
        while n < len(backup_id) and any(o != backup_id and o.endswith(backup_id[-n:]) for o in every):
            n += 1
        shorts[backup_id] = backup_id[-n:]
    return shorts


def resolve_id(store: HybridStore, ref: str) -> str:
    """The full id of the backup ``ref`` names: a full id, a short id (an ending) or a prefix of one. Two
    matches are bad input (exit code 2), none is not found (1)."""
    ids = store.backups.repo.ids()
    if ref in ids:
        return ref
    if len(ref) < 4:
        fail(f"backup id {ref!r} is too short: give at least 4 characters", code=2)
    found = [i for i in ids if i.startswith(ref) or i.endswith(ref)]
    if len(found) == 1:
        return found[0]
    if found:
        shorts = short_ids(ids)
        fail(
            f"backup id {ref!r} is ambiguous: it matches {', '.join(shorts[i] for i in found[:5])}"
            f"{' …' if len(found) > 5 else ''}; give more characters",
            code=2,
            kind="AmbiguousId",
        )
    fail(f"no backup {ref!r} in {store.backups.repo.dir}; see `hybridstore backup list`", kind="BackupNotFoundError")


def _with_short(info: BackupInfo, short: str) -> dict[str, object]:
    return {"short_id": short, **info.to_dict()}


def _show(info: BackupInfo, short: str) -> None:
    table = Table(show_header=False, title=f"backup {short}")
    rows = [
        ("id", info.id),
        ("kind", info.kind),
        ("label", info.label),
        ("description", info.description),
        ("created", _when(info.created_at)),
        ("node", info.node_id),
        ("source", info.source),
        ("records", f"{info.records:,}"),
        ("pending ops", f"{info.pending_ops:,} (outbox and journal when it was taken)"),
        ("collections", ", ".join(f"{c} ({n:,})" for c, n in info.collections.items())),
        ("size", f"{_size(info.size_bytes)} on disk, {_size(info.content_bytes)} of content"),
        ("compressed", "zstd" if info.compressed else "no"),
        ("encrypted", "AES-256-GCM" if info.encrypted else "no"),
        ("verified", _when(info.verified_at) if info.verified and info.verified_at else "no"),
        ("pinned", "yes" if info.pinned else "no"),
        ("file", info.path),
    ]
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    out.print(table)


def _info(data: dict[str, Any]) -> BackupInfo:
    """A backup as the running node's API shows it (without the file's path on the server)."""
    return BackupInfo(**{f.name: data[f.name] for f in dataclasses.fields(BackupInfo) if f.name in data})


@backup_app.command("create")
def create(
    ctx: typer.Context,
    label: Annotated[str, typer.Option("--label", "-l", help="Short name of the backup.")] = "Manual backup",
    description: Annotated[str, typer.Option("--description", help="Why it was taken.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Take a backup now (from the primary when reachable, else the local copy), verified before it is kept.
    While a node serves the data directory, the node takes it (a backup job of its own)."""
    remote = attach.connect(ctx)
    if remote is not None:
        with remote, progress_bar("backing up", quiet=as_json) as progress:
            job = remote.send("POST", "/backups", json={"label": label, "description": description})
            info = _info(remote.follow(job, lambda p: progress(p["done"], p["total"])))
            short = short_ids(b["id"] for b in remote.get("/backups")["backups"])[info.id]
    else:
        with open_store(ctx) as store:
            with progress_bar("backing up", quiet=as_json) as progress:
                info = store.backups.create_manual_backup(label, description, progress=progress)
            short = short_ids(store.backups.repo.ids())[info.id]
    if as_json:
        print_json(_with_short(info, short))
    else:
        out.print(
            f"backup {short} created: {plural(info.records, 'record')} from the {info.source} tier, "
            f"{_size(info.size_bytes)}, verified"
        )


@backup_app.command("list")
def list_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the backups of this node's repository, newest first."""
    remote = attach.connect(ctx)
    if remote is not None:
        with remote:
            backups = [_info(b) for b in remote.get("/backups")["backups"]]
    else:
        with open_store(ctx, access="read") as store:
            backups = store.backups.list_backups()
    shorts = short_ids(b.id for b in backups)
    if as_json:
        print_json([_with_short(b, shorts[b.id]) for b in backups])
        return
    table = Table(title=plural(len(backups), "backup"))
    table.add_column("id", no_wrap=True)  # ids are copied from here: never split
    for col in ("created", "kind", "label", "records", "size", "flags"):
        table.add_column(col, justify="right" if col in ("records", "size") else "left", overflow="fold")
    for b in backups:
        flags = " ".join(
            f for f, on in (("verified", b.verified), ("encrypted", b.encrypted), ("pinned", b.pinned)) if on
        )
        table.add_row(
            shorts[b.id], _when(b.created_at), b.kind, escape(b.label), f"{b.records:,}", _size(b.size_bytes), flags
        )
    out.print(table)


@backup_app.command("show")
def show(ctx: typer.Context, backup_id: IdArg, as_json: JsonFlag = False) -> None:
    """Show one backup's manifest: kind, source tier, collections and counts, sizes, cipher, verification."""
    with open_store(ctx, access="read") as store:
        info = store.backups.get_backup(resolve_id(store, backup_id))
        short = short_ids(store.backups.repo.ids())[info.id]
    if as_json:
        print_json(_with_short(info, short))
    else:
        _show(info, short)


@backup_app.command("verify")
def verify(ctx: typer.Context, backup_id: IdArg, as_json: JsonFlag = False) -> None:
    """Check a backup completely: decrypt, decompress, every chunk's tag and every checksum."""
    with open_store(ctx, access="existing") as store:
        full_id = resolve_id(store, backup_id)
        with progress_bar("verifying", quiet=as_json, as_bytes=True) as progress:
            report = store.backups.verify_backup(full_id, progress=progress)
    if as_json:
        print_json(vars(report))
    else:
        out.print(
            f"backup {backup_id} is intact: {plural(report.chunks, 'chunk')}, {plural(report.records, 'record')}, "
            f"{plural(report.pending_ops, 'pending op')} ({report.duration_s:.2f}s)"
        )


@backup_app.command("restore")
def restore(
    ctx: typer.Context,
    backup_id: IdArg,
    collection: Annotated[
        list[str] | None, typer.Option("--collection", "-c", help="Restore only this collection (repeatable).")
    ] = None,
    key: Annotated[list[str] | None, typer.Option("--key", "-k", help="Restore only this key (repeatable).")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite/--no-overwrite", help="Replace records that exist (default) or keep them.")
    ] = True,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Check the whole backup before writing anything.")
    ] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would change.")] = False,
    yes: YesFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Restore a backup through the normal write path (a pre-restore backup is taken first)."""
    if not dry_run:
        confirm(f"Restore backup {backup_id} into this store?", yes=yes)
    remote = attach.connect(ctx)
    if remote is not None:  # the running node restores it (a job of its own)
        body = {
            "overwrite": overwrite,
            "validate_data": validate,
            "collections": collection or None,
            "keys": key or None,
            "dry_run": dry_run,
            "confirm": backup_id,
        }
        with remote, progress_bar("restoring", quiet=as_json) as progress:
            job = remote.send("POST", f"/backups/{quote(backup_id, safe='')}/restore", json=body)
            done = remote.follow(job, lambda p: progress(p["done"], p["total"]))
        report = RestoreReport(**{f.name: done[f.name] for f in dataclasses.fields(RestoreReport) if f.name in done})
    else:
        with open_store(ctx, access="read" if dry_run else "write") as store:
            full_id = resolve_id(store, backup_id)
            with progress_bar("restoring", quiet=as_json) as progress:
                report = store.backups.restore_backup(
                    full_id,
                    overwrite=overwrite,
                    validate_data=validate,
                    collections=collection or None,
                    keys=key or None,
                    dry_run=dry_run,
                    progress=progress,
                )
    if as_json:
        print_json(report.to_dict())
        return
    table = Table(title=f"{'dry run of ' if dry_run else ''}restore of backup {backup_id}")
    table.add_column("collection")
    for action in ("added", "overwritten", "skipped", "unchanged"):
        table.add_column(action, justify="right")
    for name, counts in report.collections.items():
        table.add_row(escape(name), *(f"{counts[a]:,}" for a in ("added", "overwritten", "skipped", "unchanged")))
    out.print(table)
    if dry_run:
        for d in report.diff[:50]:
            out.print(f"  {d['action']:<11} {escape(d['collection'])}/{escape(d['key'])}")
        if len(report.diff) > 50 or report.diff_truncated:
            out.print("  … (--json for the full diff)")
    else:
        out.print(
            f"{plural(report.written, 'record')} written (queued for the primary); "
            f"safety backup {report.pre_restore_backup}"
        )


@backup_app.command("export")
def export(
    ctx: typer.Context,
    backup_id: IdArg,
    path: Annotated[Path, typer.Argument(help="File or directory to write the backup to.")],
    as_json: JsonFlag = False,
) -> None:
    """Copy a backup file out of the repository (it is verified first)."""
    with open_store(ctx, access="existing") as store:
        full_id = resolve_id(store, backup_id)
        target = store.backups.export_backup(full_id, path)
    if as_json:
        print_json({"id": full_id, "path": str(target)})
    else:
        out.print(f"exported to {escape(str(target))}")


def _upload(remote: attach.Attached, path: Path) -> Any:
    """Stream a backup file to the running node's import (``POST /api/v1/backups/import``); its job."""
    try:
        f = path.open("rb")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", code=2, kind="OSError")
    with f:
        return remote.send(
            "POST",
            "/backups/import",
            content=iter(lambda: f.read(1 << 20), b""),
            headers={"content-type": "application/octet-stream"},
        )


@backup_app.command("import")
def import_(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A backup file (.hsb).")],
    as_json: JsonFlag = False,
) -> None:
    """Add a backup file to the repository; it is verified completely before it is registered. While a node
    serves the data directory, the file is streamed to it and the node imports it."""
    remote = attach.connect(ctx)
    if remote is not None:
        with remote, progress_bar("verifying", quiet=as_json, as_bytes=True) as progress:
            info = _info(remote.follow(_upload(remote, path), lambda p: progress(p["done"], p["total"])))
            short = short_ids(b["id"] for b in remote.get("/backups")["backups"])[info.id]
    else:
        with open_store(ctx) as store:
            with progress_bar("verifying", quiet=as_json, as_bytes=True) as progress:
                info = store.backups.import_backup(path, progress=progress)
            short = short_ids(store.backups.repo.ids())[info.id]
    if as_json:
        print_json(_with_short(info, short))
    else:
        out.print(
            f"imported backup {short} ({plural(info.records, 'record')}, {info.kind}, taken on node {info.node_id})"
        )


@backup_app.command("delete")
def delete(ctx: typer.Context, backup_id: IdArg, yes: YesFlag = False, as_json: JsonFlag = False) -> None:
    """Delete a backup (pinned and emergency ones too)."""
    confirm(f"Delete backup {backup_id}?", yes=yes)
    remote = attach.connect(ctx)
    if remote is not None:
        with remote:
            path = f"/backups/{quote(backup_id, safe='')}"
            info = _info(remote.send("DELETE", path, params={"confirm": backup_id})["deleted"])
    else:
        with open_store(ctx, access="existing") as store:
            info = store.backups.delete_backup(resolve_id(store, backup_id))
    if as_json:
        print_json(info.to_dict())
    else:
        out.print(f"deleted backup {backup_id} ({info.id})")


@backup_app.command("prune")
def prune(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be deleted.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete manual and scheduled backups beyond max_backups (never the newest verified, emergency,
    pre-restore or pinned ones)."""
    remote = attach.connect(ctx)
    if remote is not None:
        with remote:
            gone = [_info(b) for b in remote.send("POST", "/backups/prune", json={"dry_run": dry_run})["removed"]]
    else:
        with open_store(ctx, access="read" if dry_run else "existing") as store:
            gone = store.backups.prune(dry_run=dry_run)
    if as_json:
        print_json({"dry_run": dry_run, "deleted": [b.to_dict() for b in gone]})
        return
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{verb} {plural(len(gone), 'backup')}")
    for b in gone:
        out.print(f"  {b.id}  {_when(b.created_at)}  {b.kind}  {escape(b.label)}")


@backup_app.command("pin")
def pin(
    ctx: typer.Context,
    backup_id: IdArg,
    unpin: Annotated[bool, typer.Option("--unpin", help="Remove the pin instead.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Pin a backup so automatic pruning never deletes it (or --unpin)."""
    with open_store(ctx, access="existing") as store:
        info = store.backups.pin_backup(resolve_id(store, backup_id), not unpin)
    if as_json:
        print_json(info.to_dict())
    else:
        out.print(f"backup {backup_id} {'pinned' if info.pinned else 'unpinned'}")


@backup_app.command("rekey")
def rekey(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Re-wrap every encrypted backup's data key under a new passphrase (the current one comes from
    HYBRIDSTORE_BACKUP_PASSPHRASE; the new one is asked for)."""
    new = typer.prompt("New passphrase", hide_input=True, confirmation_prompt=True, err=True)
    if not new:
        fail("the new passphrase is empty", code=2)
    with open_store(ctx, access="existing") as store:
        done = store.backups.rotate_passphrase(new)
    if as_json:
        print_json({"rewrapped": done})
    else:
        out.print(f"re-wrapped {plural(len(done), 'backup')}; set HYBRIDSTORE_BACKUP_PASSPHRASE to the new passphrase")


@backup_app.command("config")
def config(
    ctx: typer.Context,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled", help="Allow backups at all.")] = None,
    automatic: Annotated[
        bool | None, typer.Option("--automatic/--manual-only", help="Scheduled and emergency backups.")
    ] = None,
    interval_hours: Annotated[
        float | None, typer.Option("--interval-hours", help="Hours between scheduled backups.")
    ] = None,
    max_backups: Annotated[
        int | None, typer.Option("--max-backups", help="Manual + scheduled backups kept by pruning.")
    ] = None,
    compress: Annotated[bool | None, typer.Option("--compress/--no-compress", help="zstd compression.")] = None,
    encrypt: Annotated[
        bool | None, typer.Option("--encrypt/--no-encrypt", help="AES-256-GCM (needs HYBRIDSTORE_BACKUP_PASSPHRASE).")
    ] = None,
    source: Annotated[str | None, typer.Option("--source", help="auto, local or primary.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the backup settings, or change them with options (validated, saved locally and on the primary)."""
    changes = {
        name: value
        for name, value in (
            ("enabled", enabled),
            ("automatic", automatic),
            ("interval_hours", interval_hours),
            ("max_backups", max_backups),
            ("compress", compress),
            ("encrypt", encrypt),
            ("source", source),
        )
        if value is not None
    }
    with open_store(ctx, access="write" if changes else "read") as store:
        cfg = store.backups.update_config(**changes) if changes else store.backups.get_config()
        stats = store.backups.stats()
    data = cfg.to_dict()
    if as_json:
        print_json(data | {"directory": stats["directory"]})
        return
    table = Table(show_header=False, title="backup settings" + (" (updated)" if changes else ""))
    for name, value in data.items():
        if name != "updated_at":
            table.add_row(name, escape(str(value)))
    table.add_row("directory", escape(stats["directory"]))
    out.print(table)
