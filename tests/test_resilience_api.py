"""``/api/v1/resilience/runs`` over the real app and the real primary: a run is a job with progress, then its JSON
report and its self-contained HTML report; one run at a time; admin only; runs are kept across restarts."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from hybridstore.resilience.runs import RunBook, next_due, schedule_days

from . import test_web_api as base
from .test_web_api import Web, WebFactory

pytestmark = [pytest.mark.resilience, pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]
RUNS = "/api/v1/resilience/runs"
make_web = base.make_web  # the fixture


def follow(web: Web, url: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while True:
        run: dict[str, Any] = web.get(url, "admin").json()
        seen.append(run["progress"])
        if run["status"] != "running":
            run["seen_progress"] = seen
            return run
        assert time.monotonic() < deadline, "the run is still running"
        time.sleep(0.1)


def test_a_run_through_the_api(make_web: WebFactory) -> None:
    web = make_web()
    r = web.post(RUNS, json={"scenarios": ["primary_outage"], "duration": 2, "seed": 3})
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["status"] == "running" and started["report"] is None
    assert started["progress"]["done"] == 0 and started["progress"]["total"] == 1
    busy = web.post(RUNS, json={"scenarios": ["primary_outage"], "duration": 2})
    assert busy.status_code == 409 and busy.json()["type"].endswith("run-in-progress")

    run = follow(web, r.headers["location"])
    assert run["id"] == started["id"] and run["status"] == "passed", run
    assert run["progress"] == {"scenario": "primary_outage", "done": 1, "total": 1}
    report = run["report"]
    assert report["seed"] == 3 and report["started_at"] > 0
    (scenario,) = report["scenarios"]
    assert scenario["name"] == "primary_outage" and scenario["verdict"] == "pass"
    assert scenario["lost"] == 0 and scenario["duplicated"] == 0 and scenario["converged"]
    for name in ("criteria", "ops", "acknowledged", "availability", "p50_ms", "p99_ms", "detection_s", "recovery_s"):
        assert name in scenario

    listed = web.get(RUNS, "admin").json()["runs"]
    assert [x["id"] for x in listed] == [run["id"]] and "report" not in listed[0]
    assert listed[0]["status"] == "passed"

    html = web.get(f"{RUNS}/{run['id']}/report.html", "admin")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    page = html.text
    assert "primary_outage" in page and "<svg" in page and "PASS" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no external asset"
    assert "<script" not in page

    # kept: a new book on the same directory (a restarted service) knows the run and its report
    book = RunBook(web.store.data_dir / "resilience-runs")
    kept = book.get(run["id"])
    assert kept is not None and kept.status == "passed" and kept.report is not None


def test_errors_and_scopes(make_web: WebFactory) -> None:
    web = make_web()
    assert web.get(RUNS, "read").status_code == 403
    assert web.post(RUNS, "write", json={}).status_code == 403
    assert web.get(f"{RUNS}/nope-1234", "admin").status_code == 404
    bad = web.post(RUNS, json={"scenarios": ["no_such_thing"]})
    assert bad.status_code == 422 and "no_such_thing" in bad.text
    assert web.post(RUNS, json={"duration": -1}).status_code == 422
    embedded = make_web("embedded", primary=False)
    refused = embedded.post(RUNS, json={"scenarios": ["primary_outage"]})
    assert refused.status_code == 422 and "primary" in refused.json()["detail"]


def test_schedule_is_off_by_default_and_monthly_when_asked() -> None:
    assert schedule_days({}) == 0.0
    assert schedule_days({"HYBRIDSTORE_RESILIENCE_EVERY_DAYS": "30"}) == 30.0
    day = 86400.0
    assert next_due(None, 1000.0, 30) == 30 * day, "the first run a period after the schedule starts"
    assert next_due(1000.0, 1000.0 + 29 * day, 30) == day
    assert next_due(1000.0, 1000.0 + 31 * day, 30) == 0.0


def test_a_run_stops_with_the_node(make_web: WebFactory) -> None:
    web = make_web()
    r = web.post(RUNS, json={"scenarios": ["primary_outage", "blackhole"], "duration": 60})
    assert r.status_code == 202, r.text
    started = time.monotonic()
    web.store.close()  # the service stops: the run must not keep it (nor the process) waiting for minutes
    run = follow(web, r.headers["location"], timeout=30)
    assert run["status"] == "error" and "cancelled" in run["error"]
    assert time.monotonic() - started < 30
    assert run["report"]["cancelled"] and len(run["report"]["scenarios"]) <= 1
