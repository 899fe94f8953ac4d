"""The admin pages (``GET``, ``admin`` scope): each gathers plain data from the store in a worker thread and renders
one template. Actions on a page call the REST API (``/api/v1``, with the session cookie and the page's CSRF
token) or the admin actions (`hybridstore.web.admin.actions`); nothing here changes state.

Sections that depend on features a node may not have yet (nodes sharing the primary, the resilience tester)
are detected by what the node offers — the store's ``nodes()``, the app's routes — and otherwise say "not
available on this node".
"""

from __future__ import annotations

import importlib
import time
from typing import Annotated, Any

from fastapi import Query, Request
from starlette.responses import RedirectResponse, Response

from ...errors import HybridStoreError
from ..api_data import record_json
from ..context import WebContext
from ..localview import outbox_view
from ..routing import ScopedRouter
from ..sse import LiveFeed
from ..users import UserStore
from . import views
from .render import HEADERS, page
from .session import SessionCodec

PAGE_SIZE = 50
NODE_SILENT_S = 60.0  # a node whose heartbeat is older than this is flagged
RESILIENCE_RUNS = "/api/v1/resilience/runs"
API_IMPORT = "/api/v1/backups/import"
SERIES_FIELDS = ("t", "p50_ms", "p99_ms", "writes", "outbox_depth", "push_rate", "pull_rate")


def _safe(fn: Any, default: Any = None) -> tuple[Any, str | None]:
    """``fn()`` or ``default`` with the reason it failed (a page shows what it can when a part is unavailable)."""
    try:
        return fn(), None
    except HybridStoreError as exc:
        return default, str(exc)


def build(ctx: WebContext, codec: SessionCodec, feed: LiveFeed, users: UserStore) -> ScopedRouter:
    routes = ScopedRouter(tags=["admin"])
    store = ctx.store

    def show(request: Request, template: str, active: str, title: str, **values: Any) -> Response:
        return page(request, codec, template, active, title, **values)

    @routes.get("/admin", "admin", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/admin/data-storage", status_code=303, headers=HEADERS)

    @routes.get("/admin/data-storage", "admin", include_in_schema=False)
    async def overview(request: Request) -> Response:
        def gather() -> dict[str, Any]:
            sample, status = feed.latest()
            counts, counts_error = _safe(
                lambda: store.node.slot.tier.collection_counts() if store.node.slot.tier else {}, {}
            )
            return {
                "sample": sample or {},
                "status": status or store.status().to_dict(),
                "collections": sorted(counts.items()),
                "counts_error": counts_error,
                "alerts": [a.to_dict() for a in store.recovery.alerts(True)],  # the history's active ones
                "data_bytes": _data_bytes(store.data_dir),
            }

        return show(request, "overview.html", "overview", "Overview", **await ctx.run(gather))

    @routes.get("/admin/series", "admin", include_in_schema=False)
    async def series() -> Response:
        from ..responses import DataResponse

        def charted() -> list[dict[str, Any]]:  # only what the charts draw: an hour is 1800 samples
            return [{k: sample.get(k) for k in SERIES_FIELDS} for sample in feed.history()]

        return DataResponse({"samples": await ctx.run(charted), "interval": feed.interval})

    @routes.get("/admin/backups", "admin", include_in_schema=False)
    async def backups(request: Request) -> Response:
        def gather() -> dict[str, Any]:
            service = store.backups
            found, error = _safe(lambda: [b.to_dict() for b in service.list_backups()], [])
            stats, stats_error = _safe(service.stats, {})
            config, _ = _safe(lambda: service.get_config().to_dict(), {})
            return {
                "backups": found,
                "stats": stats,
                "config": config,
                "error": error or stats_error,
                "collections": sorted(store.node.slot.tier.collection_counts()) if store.node.slot.tier else [],
            }

        # the API's streamed import (a job) when the node has it, else the admin UI's own
        upload = API_IMPORT if views.route_exists(request.app, API_IMPORT) else "/admin/backups/import"
        return show(request, "backups.html", "backups", "Backups", upload_url=upload, **await ctx.run(gather))

    @routes.get("/admin/sync", "admin", include_in_schema=False)
    async def sync(request: Request) -> Response:
        def gather() -> dict[str, Any]:
            status = store.sync_status()
            outbox, outbox_error = _safe(lambda: outbox_view(store, collection=None, limit=PAGE_SIZE * 2), None)
            conflicts, conflicts_error = _safe(lambda: store.conflicts("open", limit=50), [])
            shown = [{**c.to_dict(), "diff": views.field_diff(c.base, c.local, c.remote)} for c in conflicts or []]
            return {
                "sync": status,
                "pending": views.pending_rows(outbox or {}, time.time()),
                "pending_error": outbox_error,
                "dead_letters": store.dead_letters(limit=100),
                "conflicts": shown,
                "conflicts_error": conflicts_error,
            }

        return show(request, "sync.html", "sync", "Sync", **await ctx.run(gather))

    @routes.get("/admin/health", "admin", include_in_schema=False)
    async def health(request: Request) -> Response:
        resilience = views.route_exists(request.app, RESILIENCE_RUNS)

        def gather() -> dict[str, Any]:
            scenarios: list[str] = []
            if resilience:
                try:  # by name: the tester is an optional part of the service, found when it is there
                    tester = importlib.import_module("hybridstore.resilience")
                except ImportError:
                    tester = None
                scenarios = [getattr(s, "name", str(s)) for s in getattr(tester, "SCENARIOS", [])]
            return {
                "health": store.recovery.get_health_status(),
                "alerts": [a.to_dict() for a in store.recovery.alerts()],
                "events": store.recovery.events(100),
                "node_events": [e.to_dict() for e in reversed(store.node.events.since(0))],
                "resilience": resilience,
                "scenarios": scenarios,
            }

        return show(request, "health.html", "health", "Health", **await ctx.run(gather))

    @routes.get("/admin/nodes", "admin", include_in_schema=False)
    async def nodes(request: Request) -> Response:
        lister = getattr(store, "nodes", None)

        def gather() -> dict[str, Any]:
            if not callable(lister):
                return {"available": False, "nodes": [], "error": None}
            found, error = _safe(lister, [])
            return {"available": True, "nodes": found or [], "error": error}

        return show(
            request,
            "nodes.html",
            "nodes",
            "Nodes",
            silent_s=NODE_SILENT_S,
            this_node=store.node_id,
            **await ctx.run(gather),
        )

    @routes.get("/admin/data", "admin", include_in_schema=False)
    async def data(
        request: Request,
        collection: Annotated[str, Query(max_length=64)] = "",
        prefix: Annotated[str, Query(max_length=512)] = "",
        after: Annotated[str, Query(max_length=512)] = "",
        key: Annotated[str | None, Query(max_length=512)] = None,
    ) -> Response:
        def gather() -> dict[str, Any]:
            tier = store.node.slot.tier
            counts, error = _safe(lambda: tier.collection_counts() if tier else {}, {})
            out: dict[str, Any] = {
                "collections": sorted(counts.items()),
                "collection": collection,
                "prefix": prefix,
                "after": after,
                "items": [],
                "next_after": None,
                "record": None,
                "key": key,
                "error": error,
            }
            if collection:
                page_, error = _safe(
                    lambda: store.list(collection, prefix=prefix, limit=PAGE_SIZE, after=after or None)
                )
                if page_ is not None:
                    out["items"] = [record_json(r) for r in page_.records]
                    out["next_after"] = page_.next_after
                if key is not None:
                    record, error = _safe(lambda: store.get(collection, key))
                    out["record"] = None if record is None else record_json(record)
                out["error"] = error
            return out

        return show(request, "data.html", "data", "Data", **await ctx.run(gather))

    @routes.get("/admin/audit", "admin", include_in_schema=False)
    async def audit(
        request: Request,
        actor: Annotated[str, Query(max_length=200)] = "",
        action: Annotated[str, Query(max_length=200)] = "",
        hours: Annotated[float | None, Query(ge=0, le=24 * 366)] = None,
    ) -> Response:
        since = None if not hours else time.time() - hours * 3600

        def gather() -> list[Any]:
            return [e.to_dict() for e in views.audit_entries(ctx.db, actor=actor, action=action, since=since)]

        entries = await ctx.run(gather)
        return show(request, "audit.html", "audit", "Audit", entries=entries, actor=actor, action=action, hours=hours)

    @routes.get("/admin/settings", "admin", include_in_schema=False)
    async def settings(request: Request) -> Response:
        def gather() -> dict[str, Any]:
            return {
                "config": views.masked_config(store.config),
                "keys": [k.to_dict() for k in ctx.keys.list()],
                "users": [u.to_dict() for u in users.list()],
                "config_api": views.route_exists(request.app, "/api/v1/config"),
            }

        return show(request, "settings.html", "settings", "Settings", **await ctx.run(gather))

    return routes


def _data_bytes(data_dir: Any) -> int:
    total = 0
    for name in ("local.db", "local.db-wal", "journal.log"):
        path = data_dir / name
        if path.exists():
            total += path.stat().st_size
    return total
