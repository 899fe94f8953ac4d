"""The REST API under ``/api/v1``, assembled from one module per area:

- `api_data`: collections and items (``read`` to read, ``write`` to write);
- `api_node`: status, health, alerts, events, sync state and the sync job, jobs, the audit log;
- `api_sync`: conflicts and dead letters;
- `api_backups`: backups, their settings and statistics;
- `api_resilience`: resilience runs (a job each) and their reports;

plus the OpenAPI document (``GET /api/v1/openapi.json``, ``read`` scope). Administrative calls need ``admin``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from . import api_backups, api_data, api_node, api_resilience, api_sync
from .context import WebContext
from .routing import ScopedRouter

PREFIX = "/api/v1"
UPLOAD_PATHS = (api_backups.IMPORT_PATH,)  # streamed to a file: the body size limit is ``max_upload_bytes``


def build(ctx: WebContext, openapi: Callable[[], dict[str, Any]]) -> APIRouter:
    router = APIRouter(prefix=PREFIX)
    for area in (api_data, api_node, api_sync, api_backups, api_resilience):
        router.include_router(area.build(ctx).router)
    meta = ScopedRouter(tags=["meta"])

    @meta.get("/openapi.json", "read", include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(openapi())

    router.include_router(meta.router)
    return router
