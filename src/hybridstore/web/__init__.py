"""The running node as a service: `create_app(store)` returns the ASGI app (REST API under ``/api/v1``,
``/metrics``, ``/healthz``, ``/readyz``); ``hybridstore serve`` runs it with uvicorn; `serve_local_socket(store)`
serves it on the data directory's owner-only socket from an application. Needs the ``[web]`` extra.

Importing this package does not import FastAPI (the CLI's ``apikey`` commands use `hybridstore.web.keys` without
it); `create_app` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..store import HybridStore
    from .listener import LocalSocketServer


def create_app(store: HybridStore, **options: Any) -> FastAPI:
    """See `hybridstore.web.app.create_app`."""
    from .app import create_app as build

    return build(store, **options)


def serve_local_socket(store: HybridStore, **options: Any) -> LocalSocketServer:
    """See `hybridstore.web.listener.serve_local_socket`: serve the node's local socket (``node.sock``) from a
    thread, so the CLI attaches to an application's running store as it does to ``hybridstore serve``."""
    from .listener import serve_local_socket as start

    return start(store, **options)


__all__ = ["create_app", "serve_local_socket"]
