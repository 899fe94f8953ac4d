"""``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics`` (Prometheus text).

- ``/healthz`` answers 200 from the event loop itself, touching nothing: the process serves requests. No
  credentials (an orchestrator's probe has none); it says nothing about the data.
- ``/readyz``: 200 when this node can acknowledge writes — the store is open, the server is not draining, and
  SQLite or the journal takes writes (the primary being down does not make a node unready: that is the point of
  the store); 503 otherwise. No credentials; it reports states only.
- ``/metrics`` needs the ``read`` scope (Prometheus sends ``authorization: Bearer …`` with ``bearer_token_file``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from .context import WebContext
from .responses import DataResponse
from .routing import ScopedRouter

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


def build(ctx: WebContext) -> tuple[APIRouter, ScopedRouter]:
    """The public probes, and the scoped ``/metrics``."""
    public = APIRouter(tags=["probes"])
    scoped = ScopedRouter(tags=["probes"])
    store = ctx.store

    @public.get("/healthz", summary="Liveness: the process answers (no credentials)")
    async def healthz() -> DataResponse:
        return DataResponse({"status": "alive"})

    @public.get("/readyz", summary="Readiness: writes can be acknowledged (no credentials)")
    async def readyz() -> DataResponse:
        if ctx.draining or store.node.closed:
            return DataResponse({"ready": False, "reason": "stopping"}, status_code=503)
        ready = _readiness(ctx)  # in-memory states only: answered from the loop, even when every thread is busy
        return DataResponse(ready, status_code=200 if ready["ready"] else 503)

    @scoped.get("/metrics", "read", summary="Prometheus metrics (text exposition format)")
    async def metrics() -> Response:
        body = await ctx.run(store.metrics.prometheus_text)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return public, scoped


def _readiness(ctx: WebContext) -> dict[str, Any]:
    node = ctx.store.node
    local_ok = node.slot.writable() is not None
    journal_ok = node.journal.last_error is None  # its last append worked (or none failed yet)
    return {
        "ready": local_ok or journal_ok,
        "local": "writable" if local_ok else "not writable",
        "journal": "usable" if journal_ok else f"failing: {node.journal.last_error}",
    }
