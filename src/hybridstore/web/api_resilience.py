"""``/api/v1/resilience/runs``: start a resilience run (a job; one at a time), list the runs kept, follow one
(status, progress, then its JSON report) and read its HTML report. Administrative (``admin`` scope).

Runs are kept in ``<data dir>/resilience-runs`` (`hybridstore.resilience.runs.RunBook`), so they outlive the
service. With ``HYBRIDSTORE_RESILIENCE_EVERY_DAYS`` set (30: monthly, the original maintenance plan; unset or 0:
off, the default) the service also runs every scenario on that schedule.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..resilience import SCENARIOS
from ..resilience.html import render
from ..resilience.runner import DEFAULT_SEED, RunOptions
from ..resilience.runs import RunBook, RunRecord, Schedule, schedule_days
from .context import WebContext
from .jobs import Progress
from .problems import WebError, not_found
from .responses import DataResponse
from .routing import ScopedRouter
from .schemas import problems

RunId = Annotated[str, Path(min_length=4, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
DEFAULT_DURATION = 10.0


class RunRequest(BaseModel):
    """What to run (defaults: every scenario, 10 s each, seed 1)."""

    model_config = ConfigDict(extra="forbid")
    scenarios: list[str] | None = Field(default=None, description=f"Any of: {', '.join(SCENARIOS)}.")
    duration: float = Field(default=DEFAULT_DURATION, gt=0, le=600, description="Seconds per scenario.")
    seed: int = Field(default=DEFAULT_SEED, description="Seed of every random choice.")


def run_json(rec: RunRecord, *, report: bool) -> dict[str, Any]:
    """The shape the admin UI reads: ``id``, ``status``, ``progress`` (``scenario``, ``done``, ``total``), and
    ``report`` (only for one run; ``null`` until it ends)."""
    data: dict[str, Any] = {
        "id": rec.id,
        "status": rec.status,
        "progress": {k: rec.progress.get(k) for k in ("scenario", "done", "total")},
        "started_at": rec.started_at,
        "finished_at": rec.finished_at,
        "trigger": rec.trigger,
        "options": rec.options,
        "error": rec.error,
    }
    if report:
        data["report"] = rec.report
    return data


def build(ctx: WebContext) -> ScopedRouter:
    routes = ScopedRouter(tags=["resilience"])
    store = ctx.store
    book = RunBook(store.data_dir / "resilience-runs")
    store.node.on_close(book.cancel_all)  # a run in progress stops with the node

    def options(body: RunRequest) -> RunOptions:
        url = store.config.primary_url
        if not url:
            raise ConfigError("a resilience run needs a primary: this node has none configured")
        return RunOptions(url, scenarios=body.scenarios or list(SCENARIOS), duration=body.duration, seed=body.seed)

    every = schedule_days()
    if every > 0 and store.config.primary_url:
        schedule = Schedule(book, lambda: options(RunRequest()), every_days=every)
        schedule.start()
        store.node.on_close(schedule.stop)

    @routes.post(
        "/resilience/runs",
        "admin",
        summary="Start a resilience run (a job): scenarios against this node's primary, in a sandbox",
        status_code=202,
        responses=problems(409, 429),
    )
    async def start_run(request: Request, body: RunRequest | None = None) -> DataResponse:
        wanted = body or RunRequest()

        def begin() -> tuple[RunRecord, RunOptions]:
            opts = options(wanted)
            try:
                return book.begin(opts), opts
            except ConfigError as exc:
                if book.running() is not None:
                    raise WebError(409, "run-in-progress", "A run is in progress", str(exc)) from None
                raise

        details = {"scenarios": wanted.scenarios, "duration": wanted.duration, "seed": wanted.seed}
        # a refused start (bad scenario, no primary, a run in progress) is audited too; an accepted one by the job
        rec, opts = await ctx.audited(request, "resilience.start", "resilience", begin, details=details)

        def work(progress: Progress) -> dict[str, Any]:
            done = book.execute(rec, opts, lambda p: progress(str(p["scenario"]), int(p["done"]), int(p["total"])))
            return {"run": done.id, "status": done.status}

        details = {**details, "scenarios": rec.options["scenarios"]}
        await ctx.start_job(request, "resilience.run", rec.id, work, details=details)
        location = str(request.url_for("resilience_run", run_id=rec.id))
        return DataResponse(run_json(rec, report=True), status_code=202, headers={"Location": location})

    @routes.get("/resilience/runs", "admin", summary="The runs kept, newest first (without their reports)")
    async def list_runs() -> DataResponse:
        return DataResponse({"runs": [run_json(r, report=False) for r in book.list()]})

    @routes.get(
        "/resilience/runs/{run_id}",
        "admin",
        summary="One run: status, progress, then its JSON report",
        name="resilience_run",
        responses=problems(404),
    )
    async def get_run(run_id: RunId) -> DataResponse:
        rec = book.get(run_id)
        if rec is None:
            raise not_found(f"no resilience run {run_id}")
        return DataResponse(run_json(rec, report=True))

    @routes.get(
        "/resilience/runs/{run_id}/report.html",
        "admin",
        summary="One run's report as a self-contained HTML page",
        responses={200: {"content": {"text/html": {}}}, **problems(404, 409)},
    )
    async def get_report(run_id: RunId) -> HTMLResponse:
        rec = book.get(run_id)
        if rec is None:
            raise not_found(f"no resilience run {run_id}")
        if rec.report is None:
            raise WebError(409, "no-report", "No report yet", f"run {run_id} is {rec.status}: no report")
        return HTMLResponse(render(rec.report))

    return routes
