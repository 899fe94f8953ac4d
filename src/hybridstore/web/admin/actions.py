"""Admin actions the REST API does not offer (yet), called by the pages' scripts with JSON bodies (``admin`` scope,
CSRF-checked for sessions, audited like the API's administrative calls): pin a backup, upload (import) a backup
file, create and revoke API keys, add and remove admin users — and the pages' live stream.

Destructive ones need ``"confirm"`` naming their target, as in the API.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Annotated, Any

from fastapi import Path, Request
from starlette.responses import Response

from ...errors import ValidationError
from ..confirm import require_confirmation
from ..context import WebContext
from ..limits import read_json_value
from ..responses import DataResponse
from ..routing import ScopedRouter
from ..sse import LiveFeed, respond
from ..users import UserStore

MAX_UPLOAD = 16 * 1024**3  # a backup file is streamed to disk: bounded by the disk, not by memory
Name = Annotated[str, Path(min_length=1, max_length=64)]
BackupId = Annotated[str, Path(min_length=4, max_length=64)]


async def _body(request: Request) -> dict[str, Any]:
    value = await read_json_value(request)
    if not isinstance(value, dict):
        raise ValidationError("send a JSON object")
    return value


def build(ctx: WebContext, feed: LiveFeed, users: UserStore) -> ScopedRouter:
    routes = ScopedRouter(tags=["admin"])
    store = ctx.store

    @routes.get("/admin/stream", "admin", include_in_schema=False)
    async def stream(request: Request) -> Response:
        return await respond(request, feed, ctx)

    @routes.post("/admin/backups/{backup_id}/pin", "admin", include_in_schema=False)
    async def pin(request: Request, backup_id: BackupId) -> DataResponse:
        body = await _body(request)
        pinned = body.get("pinned", True)
        if not isinstance(pinned, bool):
            raise ValidationError("pinned is true or false")
        info = await ctx.audited(
            request,
            "backup.pin" if pinned else "backup.unpin",
            backup_id,
            lambda: store.backups.pin_backup(backup_id, pinned),
        )
        data = info.to_dict()
        data.pop("path", None)
        return DataResponse(data)

    @routes.post("/admin/backups/import", "admin", include_in_schema=False)
    async def upload(request: Request) -> DataResponse:
        """The request body is the backup file itself (streamed to a temporary file, verified, then registered).
        The pages use ``POST /api/v1/backups/import`` instead when the node has it."""
        directory = store.data_dir / "tmp"
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".hsb", dir=directory)
        received = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > MAX_UPLOAD:
                        raise ValidationError("the file is larger than any backup this node accepts")
                    await ctx.run(lambda c=chunk: out.write(c))  # type: ignore[misc]
            if received == 0:
                raise ValidationError("the upload is empty: send the backup file as the body")
            info = await ctx.audited(
                request,
                "backup.import",
                "upload",
                lambda: store.backups.import_backup(name),
                details={"bytes": received},
            )
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)
        data = info.to_dict()
        data.pop("path", None)
        return DataResponse(data, status_code=201)

    @routes.post("/admin/keys", "admin", include_in_schema=False)
    async def create_key(request: Request) -> DataResponse:
        body = await _body(request)
        name, scopes = body.get("name", ""), body.get("scopes", "")
        if not isinstance(name, str) or not isinstance(scopes, str | list):
            raise ValidationError("send a name and scopes")
        wanted = [scopes] if isinstance(scopes, str) else [str(s) for s in scopes]
        key, token = await ctx.audited(
            request, "apikey.create", name, lambda: ctx.keys.create(name, wanted), details={"scopes": wanted}
        )
        return DataResponse({**key.to_dict(), "key": token}, status_code=201)

    @routes.post("/admin/keys/{name}/revoke", "admin", include_in_schema=False)
    async def revoke_key(request: Request, name: Name) -> DataResponse:
        body = await _body(request)

        def revoke() -> Any:
            require_confirmation(body.get("confirm"), name)
            return ctx.keys.revoke(name)

        key = await ctx.audited(request, "apikey.revoke", name, revoke)
        return DataResponse(key.to_dict())

    @routes.post("/admin/users", "admin", include_in_schema=False)
    async def add_user(request: Request) -> DataResponse:
        body = await _body(request)
        name, password = body.get("name", ""), body.get("password", "")
        if not isinstance(name, str) or not isinstance(password, str):
            raise ValidationError("send a name and a password")
        user = await ctx.audited(request, "user.add", name, lambda: users.add(name, password))
        return DataResponse(user.to_dict(), status_code=201)

    @routes.post("/admin/users/{name}/remove", "admin", include_in_schema=False)
    async def remove_user(request: Request, name: Name) -> DataResponse:
        body = await _body(request)

        def remove() -> Any:
            require_confirmation(body.get("confirm"), name)
            return users.remove(name)

        user = await ctx.audited(request, "user.remove", name, remove)
        return DataResponse(user.to_dict())

    return routes
