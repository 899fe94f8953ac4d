"""``/api/v1/backups``: list, take (a job), show, verify, restore (a job), download (streamed), import (a streamed
upload, then a job), delete, prune, settings and statistics of this node's backup repository
(`hybridstore.backup.service.BackupService`).

Destructive calls need ``"confirm"`` in the body: the backup id for a delete and for a restore that overwrites
records, ``"config"`` for a settings change (settings are shared by every node through the primary).

An import is streamed to a file in the data directory as it arrives (never held in memory), its header checked
at once (not a backup file: 422, nothing kept), then verified completely by a job before it is registered (a
tampered file: the job fails with a 422 problem, ``backup-tampered``); the uploaded file is removed either way.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request
from fastapi.responses import FileResponse

from ..backup.format import read_header
from ..backup.repository import BackupInfo
from ..errors import BackupTamperedError
from .confirm import require_confirmation
from .context import WebContext, accepted
from .jobs import Progress
from .problems import problem_for
from .responses import DataResponse
from .routing import ScopedRouter
from .schemas import (
    BackupConfigChange,
    BackupCreateRequest,
    Confirmation,
    JobOut,
    PruneRequest,
    RestoreRequest,
    problems,
)
from .uploads import receive_file

IMPORT_PATH = "/backups/import"
BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
BackupId = Annotated[str, Path(min_length=4, max_length=64, description="A backup id or a unique prefix (≥ 4).")]
CONFIG_TARGET = "config"


def info_json(info: BackupInfo) -> dict[str, Any]:
    """What the API shows of a backup: everything but the file's path on the server."""
    data = info.to_dict()
    data.pop("path", None)
    return data


def build(ctx: WebContext) -> ScopedRouter:
    routes = ScopedRouter(tags=["backups"])
    store = ctx.store

    @routes.get("/backups", "read", summary="Backups of this node's repository, newest first")
    async def list_backups() -> DataResponse:
        found = await ctx.run(lambda: [info_json(b) for b in store.backups.list_backups()])
        return DataResponse({"backups": found})

    @routes.post(
        "/backups",
        "admin",
        summary="Take a backup now, as a job",
        status_code=202,
        responses={202: {"model": JobOut}, **problems(429)},
    )
    async def create_backup(request: Request, body: BackupCreateRequest | None = None) -> DataResponse:
        wanted = body or BackupCreateRequest()

        def work(progress: Progress) -> dict[str, Any]:
            info = store.backups.create_manual_backup(
                wanted.label, wanted.description, progress=lambda done, total: progress("backup", done, total)
            )
            return info_json(info)

        job = await ctx.start_job(request, "backup.create", wanted.label, work, details={"label": wanted.label})
        return accepted(request, job)

    @routes.get("/backups/config", "read", summary="Backup settings (shared by every node)")
    async def get_config() -> DataResponse:
        return DataResponse(await ctx.run(lambda: store.backups.get_config().to_dict()))

    @routes.put(
        "/backups/config",
        "admin",
        summary='Change backup settings (type "config" in `confirm`)',
        responses=problems(),
    )
    async def put_config(request: Request, body: BackupConfigChange) -> DataResponse:
        changes = body.model_dump(exclude_none=True, exclude={"confirm"})

        def change() -> dict[str, Any]:
            require_confirmation(body.confirm, CONFIG_TARGET)
            return store.backups.update_config(**changes).to_dict()

        return DataResponse(await ctx.audited(request, "backup.config", CONFIG_TARGET, change, details=changes))

    @routes.get("/backups/stats", "read", summary="Counts and sizes by kind, newest backup, next scheduled one")
    async def stats() -> DataResponse:
        return DataResponse(await ctx.run(store.backups.stats))

    @routes.post(
        "/backups/prune",
        "admin",
        summary="Remove manual and scheduled backups beyond max_backups (dry_run: only list them)",
        responses=problems(),
    )
    async def prune(request: Request, body: PruneRequest | None = None) -> DataResponse:
        dry_run = body.dry_run if body is not None else False

        def work() -> dict[str, Any]:
            gone = store.backups.prune(dry_run=dry_run)
            return {"dry_run": dry_run, "removed": [info_json(b) for b in gone]}

        return DataResponse(await ctx.audited(request, "backup.prune", "backups", work, details={"dry_run": dry_run}))

    @routes.post(
        IMPORT_PATH,
        "admin",
        summary="Import a backup file (the body, streamed), verified completely before it is registered, as a job",
        status_code=202,
        responses={202: {"model": JobOut}, **problems(400, 413, 415, 429)},
        openapi_extra=BINARY_BODY,
    )
    async def import_backup(request: Request) -> DataResponse:
        upload = await receive_file(request, store.data_dir, ctx.run)
        details = {"bytes": upload.size}
        try:
            header = await ctx.run(lambda: read_header(upload.path))  # not a backup at all: 422 now
            target = str(header.get("backup_id", ""))
        except Exception as exc:
            upload.discard()
            await ctx.refused(request, "backup.import", "upload", exc, details=details)
            raise

        def work(progress: Progress) -> dict[str, Any]:
            try:
                info = store.backups.import_backup(
                    upload.path, progress=lambda done, total: progress("verify", done, total)
                )
            finally:
                upload.discard()  # imported (copied into the repository) or refused: nothing stays behind
            return info_json(info)

        try:
            job = await ctx.start_job(request, "backup.import", target, work, details=details)
        except BaseException:
            upload.discard()
            raise
        return accepted(request, job)

    @routes.get("/backups/{backup_id}", "read", summary="One backup's manifest", responses=problems(404))
    async def show(backup_id: BackupId) -> DataResponse:
        return DataResponse(await ctx.run(lambda: info_json(store.backups.get_backup(backup_id))))

    @routes.delete(
        "/backups/{backup_id}",
        "admin",
        summary="Delete a backup (type its id in `confirm`)",
        responses=problems(404, 409),
    )
    async def delete(
        request: Request,
        backup_id: BackupId,
        body: Confirmation | None = None,
        confirm: Annotated[str | None, Query(max_length=200, description="Instead of the body's confirm.")] = None,
    ) -> DataResponse:
        def drop() -> dict[str, Any]:
            info = store.backups.get_backup(backup_id)
            require_confirmation(body.confirm if body is not None else confirm, info.id, backup_id)
            return info_json(store.backups.delete_backup(info.id))

        return DataResponse({"deleted": await ctx.audited(request, "backup.delete", backup_id, drop)})

    @routes.post(
        "/backups/{backup_id}/verify",
        "admin",
        summary="Check a backup completely (decrypt, decompress, every checksum)",
        responses=problems(404),
    )
    async def verify(request: Request, backup_id: BackupId) -> DataResponse:
        def check() -> dict[str, Any]:
            try:
                report = store.backups.verify_backup(backup_id)
            except BackupTamperedError as exc:  # a finding, not a failure of the call
                return {"id": backup_id, "verified": False, "problem": problem_for(exc).to_dict()}
            return {"verified": True, **vars(report)}

        return DataResponse(await ctx.audited(request, "backup.verify", backup_id, check))

    @routes.post(
        "/backups/{backup_id}/restore",
        "admin",
        summary="Restore a backup through the normal write path, as a job (overwriting needs `confirm`)",
        status_code=202,
        responses={202: {"model": JobOut}, **problems(404, 429)},
    )
    async def restore(request: Request, backup_id: BackupId, body: RestoreRequest | None = None) -> DataResponse:
        wanted = body or RestoreRequest()
        details = wanted.model_dump(exclude={"confirm", "keys"})
        try:
            info = await ctx.run(lambda: _checked_restore(ctx, backup_id, wanted))
        except Exception as exc:
            await ctx.refused(request, "backup.restore", backup_id, exc, details=details)
            raise

        def work(progress: Progress) -> dict[str, Any]:
            report = store.backups.restore_backup(
                info.id,
                overwrite=wanted.overwrite,
                validate_data=wanted.validate_data,
                collections=wanted.collections,
                keys=wanted.keys,
                dry_run=wanted.dry_run,
                progress=lambda done, total: progress("restore", done, total),
            )
            return report.to_dict()

        job = await ctx.start_job(request, "backup.restore", info.id, work, details=details)
        return accepted(request, job)

    @routes.get(
        "/backups/{backup_id}/download",
        "admin",
        summary="The backup file itself (streamed)",
        responses={200: {"content": {"application/octet-stream": {}}}, **problems(404)},
    )
    async def download(request: Request, backup_id: BackupId) -> FileResponse:
        info = await ctx.audited(request, "backup.download", backup_id, lambda: store.backups.get_backup(backup_id))
        return FileResponse(info.path, media_type="application/octet-stream", filename=f"{info.id}.hsb")

    return routes


def _checked_restore(ctx: WebContext, backup_id: str, wanted: RestoreRequest) -> BackupInfo:
    info = ctx.store.backups.get_backup(backup_id)
    if wanted.overwrite and not wanted.dry_run:
        require_confirmation(wanted.confirm, info.id, backup_id)
    return info
