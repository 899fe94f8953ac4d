"""Every administrative state-changing route of ``/api/v1`` — enumerated from the router, so none can be missed —
writes an audit entry (actor, action, target, outcome, client address) for each call, whether it succeeds, fails
or is refused; item writes are the exception (their op ids and origins trace them)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from . import test_web_api as base
from .test_web_api import Web
from .test_web_auth import concrete, routes

make_web, web = base.make_web, base.web  # the fixtures
BINARY = {"content-type": "application/octet-stream"}
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
ITEMS = "/api/v1/collections/{collection}/items/{key:path}"
# A valid request for each route (the call may still fail or be refused: it must be audited either way).
CALLS: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/api/v1/config"): {"json": {"log_level": "warning", "confirm": "config"}},
    ("DELETE", "/api/v1/nodes/{node_id}"): {"params": {"confirm": "swagger-ui.css"}},  # the sample path value
    ("POST", "/api/v1/sync"): {"json": {"full": False}},
    ("POST", "/api/v1/conflicts/{conflict_id}/resolve"): {"json": {"choice": "remote"}},
    ("POST", "/api/v1/dead-letters/{letter_id}/retry"): {},
    ("DELETE", "/api/v1/dead-letters/{letter_id}"): {"params": {"confirm": "1"}},
    ("POST", "/api/v1/backups"): {"json": {"label": "audited"}},
    ("PUT", "/api/v1/backups/config"): {"json": {"max_backups": 30, "confirm": "config"}},
    ("POST", "/api/v1/backups/prune"): {"json": {"dry_run": True}},
    ("POST", "/api/v1/backups/import"): {
        "content": b"not a backup",
        "headers": {"content-type": "application/octet-stream"},
    },
    ("DELETE", "/api/v1/backups/{backup_id}"): {"params": {"confirm": "abcd1234"}},
    ("POST", "/api/v1/backups/{backup_id}/verify"): {},
    ("POST", "/api/v1/backups/{backup_id}/restore"): {"json": {"dry_run": True}},
}


@pytest.fixture
def keep_log_level() -> Iterator[None]:
    logger = logging.getLogger("hybridstore")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("keep_log_level")
def test_every_mutating_api_call_is_audited(web: Web) -> None:
    mutating = [(m, p) for m, p, _ in routes(web) if m in ("POST", "PUT", "DELETE") and p.startswith("/api/v1/")]
    mutating = [(m, p) for m, p in mutating if p != ITEMS]
    assert sorted(mutating) == sorted(CALLS), "a new administrative route: add a call for it here"

    def audit() -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = web.get("/api/v1/audit?limit=1000", scope="admin").json()["entries"]
        return entries

    for method, path in mutating:
        assert web.ctx.jobs.wait(30)  # a job's closing entry is not mistaken for the next call's
        before = len(audit())
        options = dict(CALLS[(method, path)])
        headers = {**web.auth("admin"), **options.pop("headers", {})}
        r = web.client.request(method, concrete(path), headers=headers, **options)
        assert r.status_code < 500 or r.json()["type"].endswith(("unavailable", "primary-unavailable")), r.text
        after = audit()
        new = after[: len(after) - before]
        assert new, f"{method} {path} answered {r.status_code} and wrote no audit entry"
        entry = new[-1]  # the oldest of the new ones: this call's first
        assert entry["actor"] == "key:node-admin" and entry["client"] == "testclient", entry
        assert entry["action"] and entry["target"] and entry["outcome"], entry

    items_before = len(audit())
    assert web.put(base.item("c", "k"), json=1).status_code == 200
    assert web.delete(base.item("c", "k")).status_code == 200
    assert len(audit()) == items_before  # the data itself: traced by op ids, not audited
