"""``/api/v1`` views of the node — status snapshot, health, alerts, events, nodes, configuration, sync state, jobs,
audit log — the sync job (``POST /api/v1/sync``) and the run-time settings (``PUT /api/v1/config``).

Every view reads what the node already knows (`NodeStatus`, the recovery monitor's last check, the event bus):
none probes the primary. ``/health`` answers 200 while the node serves (healthy, degraded, recovering) and 503
when it cannot do its job (outage, misconfigured), so a load balancer can use it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request

from .confirm import require_confirmation
from .context import WebContext, accepted
from .jobs import Progress
from .problems import not_found
from .responses import DataResponse
from .routing import ScopedRouter
from .schemas import ConfigChange, Confirmation, JobOut, SyncRequest, problems
from .settings import apply_runtime, effective_config

UNHEALTHY = ("outage", "misconfigured")
CONFIG_TARGET = "config"


def build(ctx: WebContext) -> ScopedRouter:
    routes = ScopedRouter(tags=["node"])
    store = ctx.store

    @routes.get("/status", "read", summary="The node's status snapshot (tiers, circuit, outbox, sync, health, backups)")
    async def status(
        fresh: Annotated[bool, Query(description="Sample the local outbox now (a cheap local count).")] = False,
    ) -> DataResponse:
        snapshot = await ctx.run(lambda: store.status(fresh=fresh).to_dict())
        return DataResponse(snapshot)

    @routes.get(
        "/health",
        "read",
        summary="Overall health: 200 healthy / degraded / recovering, 503 outage / misconfigured",
        responses=problems(),
    )
    async def health() -> DataResponse:
        data = await ctx.run(store.recovery.get_health_status)
        return DataResponse(data, status_code=503 if data.get("overall") in UNHEALTHY else 200)

    @routes.get("/alerts", "read", summary="Alerts, newest first")
    async def alerts(
        active: Annotated[bool | None, Query(description="true: only active; false: only resolved.")] = None,
    ) -> DataResponse:
        found = await ctx.run(lambda: [a.to_dict() for a in store.recovery.alerts(active)])
        return DataResponse({"alerts": found})

    @routes.get("/events", "read", summary="The node's recent state-change events, oldest first")
    async def events(
        since: Annotated[int, Query(ge=0, le=2**63 - 1, description="Only events after this seq.")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> DataResponse:
        found = [e.to_dict() for e in store.node.events.since(since)][:limit]  # in memory: no I/O
        last = found[-1]["seq"] if found else since
        return DataResponse({"events": found, "last_seq": last})

    @routes.get(
        "/nodes",
        "read",
        summary="Every node sharing the primary (heartbeats): host, version, state, outbox depth, push/pull, stale",
        responses=problems(503),
    )
    async def nodes() -> DataResponse:
        return DataResponse({"nodes": await ctx.run(store.nodes)})

    @routes.delete(
        "/nodes/{node_id}",
        "admin",
        summary="Remove a stopped or stale node from the list (type its id in `confirm`)",
        responses=problems(409),
    )
    async def forget_node(
        request: Request,
        node_id: Annotated[str, Path(min_length=1, max_length=64)],
        body: Confirmation | None = None,
        confirm: Annotated[str | None, Query(max_length=200, description="Instead of the body's confirm.")] = None,
    ) -> DataResponse:
        def forget() -> dict[str, Any]:
            require_confirmation(body.confirm if body is not None else confirm, node_id)
            return store.node.heartbeat.forget(node_id)

        return DataResponse({"forgotten": await ctx.audited(request, "node.forget", node_id, forget)})

    @routes.get("/config", "admin", summary="The node's configuration (secrets masked) and its run-time settings")
    async def get_config() -> DataResponse:
        return DataResponse(await ctx.run(lambda: effective_config(store, ctx.web_settings())))

    @routes.put(
        "/config",
        "admin",
        summary='Change run-time settings of this node, until it restarts (type "config" in `confirm`)',
        responses=problems(),
    )
    async def put_config(request: Request, body: ConfigChange) -> DataResponse:
        changes = body.model_dump(exclude_none=True, exclude={"confirm"})

        def change() -> dict[str, Any]:
            require_confirmation(body.confirm, CONFIG_TARGET)
            return apply_runtime(store, changes)

        return DataResponse(await ctx.audited(request, "config.change", CONFIG_TARGET, change, details=changes))

    @routes.get("/sync", "read", summary="Sync state: outbox, counts, conflicts, dead letters, history")
    async def sync_status() -> DataResponse:
        return DataResponse(await ctx.run(store.sync_status))

    @routes.post(
        "/sync",
        "admin",
        summary="Sync now (push the outbox, pull the primary's changes) as a job",
        status_code=202,
        responses={202: {"model": JobOut}, **problems(429)},
    )
    async def start_sync(request: Request, body: SyncRequest | None = None) -> DataResponse:
        full = body.full if body is not None else False

        def work(progress: Progress) -> dict[str, Any]:
            report = store.sync_now(full=full, progress=progress)
            return {name: getattr(report, name) for name in report.__slots__}

        job = await ctx.start_job(request, "sync", "full" if full else "incremental", work, details={"full": full})
        return accepted(request, job)

    @routes.get("/jobs", "read", summary="Jobs started over HTTP (kept across restarts), newest first")
    async def jobs() -> DataResponse:
        return DataResponse({"jobs": [j.to_dict() for j in ctx.jobs.list()]})

    @routes.get("/jobs/{job_id}", "read", summary="One job: progress, then result or problem", responses=problems(404))
    async def job(job_id: Annotated[str, Path(max_length=64)]) -> DataResponse:
        found = ctx.jobs.get(job_id)
        if found is None:
            raise not_found(f"no job {job_id!r} (the newest 1000 are kept)")
        return DataResponse(found.to_dict())

    @routes.get("/audit", "admin", summary="This node's audit log of administrative calls, newest first")
    async def audit(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    ) -> DataResponse:
        entries = await ctx.run(lambda: ctx.audit.entries(limit=limit, before_id=before_id))
        return DataResponse({"entries": [e.to_dict() for e in entries]})

    return routes
