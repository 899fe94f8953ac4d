"""The running node as a service: `create_app(store)` returns the ASGI app (REST API under ``/api/v1``,
``/metrics``, ``/healthz``, ``/readyz``); ``hybridstore serve`` runs it with uvicorn. Needs the ``[web]`` extra.

Importing this package does not import FastAPI (the CLI's ``apikey`` commands use `hybridstore.web.keys` without
it); `create_app` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..store import HybridStore


def create_app(store: HybridStore, **options: Any) -> FastAPI:
    """See `hybridstore.web.app.create_app`."""
    from .app import create_app as build

    return build(store, **options)


__all__ = ["create_app"]
