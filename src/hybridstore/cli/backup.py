"""``backup …``: create, list, show, verify, restore, export, import, delete, prune, pin, rekey, config."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..backup.repository import BackupInfo
from .app import app, fail, open_store, out, print_json

backup_app = typer.Typer(
    name="backup",
    help="Backups: create, list, verify, restore, export/import, prune, settings.",
    no_args_is_help=True,
)
app.add_typer(backup_app, name="backup")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
IdArg = Annotated[str, typer.Argument(help="Backup id (or a unique prefix of at least 4 characters).")]
YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@contextmanager
def _progress(label: str, *, quiet: bool, as_bytes: bool = False) -> Iterator[Any]:
    """A Rich progress bar and the ``progress(done, total)`` callback that drives it."""
    columns = [TextColumn(label), BarColumn(), DownloadColumn() if as_bytes else MofNCompleteColumn()]
    with Progress(*columns, TimeElapsedColumn(), console=out, disable=quiet, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _show(info: BackupInfo) -> None:
    table = Table(show_header=False, title=f"backup {info.id}")
    rows = [
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


@backup_app.command("create")
def create(
    ctx: typer.Context,
    label: Annotated[str, typer.Option("--label", "-l", help="Short name of the backup.")] = "Manual backup",
    description: Annotated[str, typer.Option("--description", help="Why it was taken.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Take a backup now (from the primary when reachable, else the local copy), verified before it is kept."""
    with open_store(ctx) as store, _progress("backing up", quiet=as_json) as progress:
        info = store.backups.create_manual_backup(label, description, progress=progress)
    if as_json:
        print_json(info.to_dict())
    else:
        out.print(
            f"backup {info.id} created: {info.records:,} records from the {info.source} tier, "
            f"{_size(info.size_bytes)}, verified"
        )


@backup_app.command("list")
def list_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the backups of this node's repository, newest first."""
    with open_store(ctx, access="read") as store:
        backups = store.backups.list_backups()
    if as_json:
        print_json([b.to_dict() for b in backups])
        return
    table = Table(title=f"{len(backups)} backup{'s' if len(backups) != 1 else ''}")
    table.add_column("id", no_wrap=True)  # ids are copied from here: never split
    for col in ("created", "kind", "label", "records", "size", "flags"):
        table.add_column(col, justify="right" if col in ("records", "size") else "left", overflow="fold")
    for b in backups:
        flags = " ".join(
            f for f, on in (("verified", b.verified), ("encrypted", b.encrypted), ("pinned", b.pinned)) if on
        )
        table.add_row(b.id, _when(b.created_at), b.kind, escape(b.label), f"{b.records:,}", _size(b.size_bytes), flags)
    out.print(table)


@backup_app.command("show")
def show(ctx: typer.Context, backup_id: IdArg, as_json: JsonFlag = False) -> None:
    """Show one backup's manifest: kind, source tier, collections and counts, sizes, cipher, verification."""
    with open_store(ctx, access="read") as store:
        info = store.backups.get_backup(backup_id)
    if as_json:
        print_json(info.to_dict())
    else:
        _show(info)


@backup_app.command("verify")
def verify(ctx: typer.Context, backup_id: IdArg, as_json: JsonFlag = False) -> None:
    """Check a backup completely: decrypt, decompress, every chunk's tag and every checksum."""
    with open_store(ctx) as store, _progress("verifying", quiet=as_json, as_bytes=True) as progress:
        report = store.backups.verify_backup(backup_id, progress=progress)
    if as_json:
        print_json(vars(report))
    else:
        out.print(
            f"backup {report.id} is intact: {report.chunks} chunks, {report.records:,} records, "
            f"{report.pending_ops:,} pending ops ({report.duration_s:.2f}s)"
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
    if not dry_run and not yes and not as_json:
        typer.confirm(f"Restore backup {backup_id} into this store?", abort=True)
    with open_store(ctx) as store, _progress("restoring", quiet=as_json) as progress:
        report = store.backups.restore_backup(
            backup_id,
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
    table = Table(title=f"{'dry run of ' if dry_run else ''}restore of {report.backup_id}")
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
            f"{report.written:,} records written (queued for the primary); safety backup {report.pre_restore_backup}"
        )


@backup_app.command("export")
def export(
    ctx: typer.Context,
    backup_id: IdArg,
    path: Annotated[Path, typer.Argument(help="File or directory to write the backup to.")],
    as_json: JsonFlag = False,
) -> None:
    """Copy a backup file out of the repository (it is verified first)."""
    with open_store(ctx) as store:
        target = store.backups.export_backup(backup_id, path)
    if as_json:
        print_json({"id": backup_id, "path": str(target)})
    else:
        out.print(f"exported to {escape(str(target))}")


@backup_app.command("import")
def import_(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A backup file (.hsb).")],
    as_json: JsonFlag = False,
) -> None:
    """Add a backup file to the repository; it is verified completely before it is registered."""
    with open_store(ctx) as store, _progress("verifying", quiet=as_json, as_bytes=True) as progress:
        info = store.backups.import_backup(path, progress=progress)
    if as_json:
        print_json(info.to_dict())
    else:
        out.print(f"imported backup {info.id} ({info.records:,} records, {info.kind}, taken on node {info.node_id})")


@backup_app.command("delete")
def delete(ctx: typer.Context, backup_id: IdArg, yes: YesFlag = False, as_json: JsonFlag = False) -> None:
    """Delete a backup (pinned and emergency ones too)."""
    if not yes and not as_json:
        typer.confirm(f"Delete backup {backup_id}?", abort=True)
    with open_store(ctx) as store:
        info = store.backups.delete_backup(backup_id)
    if as_json:
        print_json(info.to_dict())
    else:
        out.print(f"deleted backup {info.id}")


@backup_app.command("prune")
def prune(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be deleted.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete manual and scheduled backups beyond max_backups (never the newest verified, emergency,
    pre-restore or pinned ones)."""
    with open_store(ctx) as store:
        gone = store.backups.prune(dry_run=dry_run)
    if as_json:
        print_json({"dry_run": dry_run, "deleted": [b.to_dict() for b in gone]})
        return
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{verb} {len(gone)} backup{'s' if len(gone) != 1 else ''}")
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
    with open_store(ctx) as store:
        info = store.backups.pin_backup(backup_id, not unpin)
    if as_json:
        print_json(info.to_dict())
    else:
        out.print(f"backup {info.id} {'pinned' if info.pinned else 'unpinned'}")


@backup_app.command("rekey")
def rekey(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Re-wrap every encrypted backup's data key under a new passphrase (the current one comes from
    HYBRIDSTORE_BACKUP_PASSPHRASE; the new one is asked for)."""
    new = typer.prompt("New passphrase", hide_input=True, confirmation_prompt=True)
    if not new:
        fail("the new passphrase is empty", code=2)
    with open_store(ctx) as store:
        done = store.backups.rotate_passphrase(new)
    if as_json:
        print_json({"rewrapped": done})
    else:
        out.print(f"re-wrapped {len(done)} backup(s); set HYBRIDSTORE_BACKUP_PASSPHRASE to the new passphrase")


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
    with open_store(ctx) as store:
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
