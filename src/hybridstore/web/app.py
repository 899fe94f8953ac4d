"""`create_app(store)`: the running node as an ASGI application (FastAPI) — the REST API under ``/api/v1``,
``/metrics``, ``/healthz``, ``/readyz``, the API docs page, and the admin web UI under ``/admin/``.

Mount it in an application of your own (``outer.mount("/store", create_app(store))``) or run it with
``hybridstore serve``. The app does not own the store: whoever opened the store closes it (after the server has
stopped; `WebContext.jobs` ``.wait()`` first lets running jobs end).

Layers, outermost first: authentication (`auth.AuthMiddleware`: 401 before anything is read or routed), the body
size limit (`limits.BodyLimitMiddleware`: 413), then FastAPI's routing, where each route checks its scope (403)
and turns our errors into problem details (`problems.problem_for`). No request gets a traceback back.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import HybridStoreError
from . import admin, api, docs, probes, sse
from .auth import AuthMiddleware, admin_token_from_env
from .context import WebContext
from .limits import BodyLimitMiddleware
from .problems import MEDIA_TYPE, Problem, problem_for, validation_problem
from .webdb import WebDatabase

if TYPE_CHECKING:
    from ..store import HybridStore

log = logging.getLogger("hybridstore.web")
FROM_ENV: Any = object()  # ``admin_token`` default: read HYBRIDSTORE_ADMIN_TOKEN
BODY_SLACK = 64 * 1024
DESCRIPTION = """The REST API of one hybridstore node: data, status, health, sync, conflicts and backups.

Authenticate with `Authorization: Bearer <API key>` (create keys with `hybridstore apikey create`). Scopes:
`read`, `write` (items), `admin` (everything). Errors are problem details (`application/problem+json`)."""


def create_app(
    store: HybridStore,
    *,
    admin_token: str | None = FROM_ENV,
    max_threads: int = 16,
    max_jobs: int = 4,
    max_body_bytes: int | None = None,
    max_upload_bytes: int | None = None,
    docs_ui: bool = True,
) -> FastAPI:
    """The ASGI app of ``store`` (see the module docstring).

    ``admin_token``: a token with every scope (default: ``HYBRIDSTORE_ADMIN_TOKEN``; ``None``: keys only).
    ``max_threads``: store calls running at once (more wait their turn). ``max_jobs``: jobs running at once.
    ``max_body_bytes``: the largest request body (default: twice the store's ``max_value_bytes``, plus 64 KiB).
    ``max_upload_bytes``: the largest backup file ``POST /api/v1/backups/import`` takes (default: no limit but the
    disk's; it is streamed to a file, never held in memory).
    ``docs_ui``: serve the Swagger UI page (when ``swagger-ui-bundle-v2`` is installed)."""
    token = admin_token_from_env() if admin_token is FROM_ENV else admin_token
    limit = max_body_bytes if max_body_bytes is not None else 2 * store.config.max_value_bytes + BODY_SLACK
    ctx = WebContext(
        store,
        db=WebDatabase.in_dir(store.data_dir),
        admin_token=token,
        max_threads=max_threads,
        max_jobs=max_jobs,
        max_body_bytes=limit,
    )
    app = FastAPI(
        title="hybridstore",
        version=_version(),
        description=DESCRIPTION,
        openapi_url=None,  # served by the API itself, behind the read scope
        docs_url=None,
        redoc_url=None,
    )
    app.state.hybridstore = ctx
    live = sse.LiveFeed(store)
    app.state.live = live
    ui = admin.build(ctx, live)
    app.state.admin = ui
    public = set(probes.PUBLIC_PATHS)
    probe_routes, metrics = probes.build(ctx)
    app.include_router(probe_routes)
    app.include_router(metrics.router)
    app.include_router(api.build(ctx, app.openapi))
    app.include_router(sse.build(ctx, live).router, prefix=api.PREFIX)
    app.include_router(ui.router)
    docs_routes = docs.build(api.PREFIX) if docs_ui else None
    if docs_routes is not None:
        app.include_router(docs_routes[0])
        public |= docs_routes[1]
    _install_error_handlers(app)
    uploads = {f"{api.PREFIX}{path}": max_upload_bytes for path in api.UPLOAD_PATHS}
    app.add_middleware(BodyLimitMiddleware, max_bytes=limit, overrides=uploads)
    exact = frozenset(public)
    app.add_middleware(
        AuthMiddleware,
        authenticator=ctx.auth,
        public=lambda path: path in exact or admin.is_public(path),
        sessions=ui.gate,
    )
    return app


def _version() -> str:
    try:
        return metadata.version("hybridstore")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def context_of(app: FastAPI) -> WebContext:
    """The shared state of an app made by `create_app` (its store, keys, audit log and jobs)."""
    ctx = app.state.hybridstore
    assert isinstance(ctx, WebContext)
    return ctx


def problem_response(problem: Problem) -> JSONResponse:
    return JSONResponse(problem.to_dict(), status_code=problem.status, headers=problem.headers, media_type=MEDIA_TYPE)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem_response(Problem(400, "malformed-json", "Malformed JSON", "the body is not valid JSON"))
        return problem_response(validation_problem(errors))

    async def on_known(request: Request, exc: Exception) -> JSONResponse:
        problem = problem_for(exc)
        if problem.status >= 500 and problem.status != 503:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return problem_response(problem)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback (the server's log); the client learns nothing of the code.
        return problem_response(problem_for(exc))

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_known)
    app.add_exception_handler(HybridStoreError, on_known)
    app.add_exception_handler(ImportError, on_known)
    app.add_exception_handler(Exception, on_unexpected)
