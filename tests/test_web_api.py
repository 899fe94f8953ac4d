"""The HTTP service in process (Starlette's TestClient over the ASGI app): data, status, sync, conflicts, dead
letters, backups, jobs and the audit trail, against the real PostgreSQL primary. The fixtures here (``web``) are
imported by the other ``test_web_*`` modules."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from fastapi.testclient import TestClient

from hybridstore import HybridStore
from hybridstore.web import create_app
from hybridstore.web.app import context_of
from hybridstore.web.context import WebContext

from .faults import refuse_poison
from .fix_db import primary_rows
from .fix_proxy import Proxy

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
ADMIN_TOKEN = "test-admin-token-" + "x" * 24
KEY_SCOPES = {"read": ["read"], "write": ["write"], "rw": ["read", "write"], "admin": ["admin"]}


@dataclass
class Web:
    """A running app over a store, with a key per scope."""

    store: HybridStore
    client: TestClient
    ctx: WebContext
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, scope: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[scope]}"}

    def get(self, path: str, scope: str = "read", **kw: Any) -> Any:
        return self.client.get(path, headers={**self.auth(scope), **kw.pop("headers", {})}, **kw)

    def put(self, path: str, scope: str = "write", **kw: Any) -> Any:
        return self.client.put(path, headers={**self.auth(scope), **kw.pop("headers", {})}, **kw)

    def post(self, path: str, scope: str = "admin", **kw: Any) -> Any:
        return self.client.post(path, headers={**self.auth(scope), **kw.pop("headers", {})}, **kw)

    def delete(self, path: str, scope: str = "write", **kw: Any) -> Any:
        return self.client.request("DELETE", path, headers={**self.auth(scope), **kw.pop("headers", {})}, **kw)

    def job(self, response: Any, timeout: float = 30.0) -> dict[str, Any]:
        """Follow a 202's job until it ends."""
        assert response.status_code == 202, response.text
        url = response.headers["location"]
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.get(url).json()
            if job["state"] != "running":
                return job
            assert time.monotonic() < deadline, f"job {job['id']} still running"
            time.sleep(0.02)


WebFactory = Callable[..., Web]


@pytest.fixture
def make_web(make_store: Callable[..., HybridStore]) -> Iterator[WebFactory]:
    """``make_web(name="node", primary=True, **store_options)``: a store (no background threads unless asked) and
    its app, with keys ``read``, ``write``, ``read+write`` (``rw``) and ``admin``."""
    clients: list[TestClient] = []

    def factory(name: str = "node", primary: bool | str = True, **options: Any) -> Web:
        options.setdefault("background", False)
        options.setdefault("backups", False)
        store = make_store(name, primary, **options)
        app = create_app(store, admin_token=ADMIN_TOKEN)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        web = Web(store, client, context_of(app))
        for label, scopes in KEY_SCOPES.items():
            web.tokens[label] = web.ctx.keys.create(f"{name}-{label}", scopes)[1]
        web.tokens["token"] = ADMIN_TOKEN
        return web

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def web(make_web: WebFactory) -> Web:
    return make_web()


def item(collection: str, key: str) -> str:
    return f"/api/v1/collections/{collection}/items/{quote(key, safe='')}"


# -- data ---------------------------------------------------------------------------------------------------------


def test_item_round_trip_with_etags(web: Web, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    r = web.put(item("products", "p1"), json={"name": "Shoe", "price": 10})
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["tier"] == ack["source"] == "primary" and ack["version"] == 1 and ack["queued"] is False
    assert r.headers["etag"] == '"1"' and ack["op_id"]
    r = web.get(item("products", "p1"))
    assert r.status_code == 200 and r.headers["etag"] == '"1"'
    body = r.json()
    assert body["value"] == {"name": "Shoe", "price": 10} and body["source"] == "primary" and body["pending"] is False
    assert primary_rows(pg, pg_schema) == {"p1": ({"name": "Shoe", "price": 10}, 1)}

    # If-Match: the version read; a stale one is refused and changes nothing
    assert web.put(item("products", "p1"), json=2, headers={"If-Match": '"1"'}).json()["version"] == 2
    stale = web.put(item("products", "p1"), json=3, headers={"If-Match": '"1"'})
    assert stale.status_code == 412 and stale.json()["type"].endswith("precondition-failed")
    assert web.put(item("products", "p1"), json=3, headers={"If-Match": "2"}).status_code == 200  # bare version
    assert web.put(item("products", "p1"), json=4, headers={"If-Match": 'W/"3"'}).status_code == 412  # weak: never
    # If-None-Match: * = create only
    assert web.put(item("products", "p1"), json=0, headers={"If-None-Match": "*"}).status_code == 412
    assert web.put(item("products", "p2"), json=0, headers={"If-None-Match": "*"}).status_code == 200
    assert web.put(item("products", "p9"), json=0, headers={"If-Match": "*"}).status_code == 412  # absent
    # deletes honour If-Match too
    assert web.delete(item("products", "p1"), headers={"If-Match": '"2"'}).status_code == 412
    gone = web.delete(item("products", "p1"), headers={"If-Match": '"3"'})
    assert gone.status_code == 200 and gone.json()["tier"] == "primary"
    missing = web.get(item("products", "p1"))
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert set(missing.json()) >= {"type", "title", "detail"}


def test_keys_with_slashes_spaces_and_unicode(web: Web) -> None:
    for key in ("a/b/c", "with space", "é€😀", "?#&=%", "/lead"):
        assert web.put(item("c", key), json={"k": key}).status_code == 200, key
        r = web.get(item("c", key))
        assert r.status_code == 200 and r.json()["key"] == key and r.json()["value"] == {"k": key}


def test_list_pages_and_collections(web: Web) -> None:
    for i in range(7):
        web.put(item("orders", f"o{i}"), json=i)
    web.put(item("orders", "x1"), json="x")
    web.put(item("users", "u1"), json={})
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"prefix": "o", "limit": 3}
        if after:
            params["after"] = after
        page = web.get("/api/v1/collections/orders/items", params=params).json()
        seen += [i["key"] for i in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == [f"o{i}" for i in range(7)]
    cols = web.get("/api/v1/collections").json()["collections"]
    by_name = {c["name"]: c for c in cols}
    assert by_name["orders"]["records"] == 8 and by_name["users"] == {
        "name": "users",
        "records": 1,
        "bytes": 2,
        "pending": 0,
    }
    assert by_name["orders"]["bytes"] > 0


def test_outage_writes_are_queued_with_pending_etags(
    make_web: WebFactory, proxy: Proxy, proxied_dsn: str, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    web = make_web(primary=proxied_dsn, primary_timeout=0.5, coalesce=False)  # every queued op is pushed
    proxy.cut()
    acks = [web.put(item("c", f"k{i}"), json=i).json() for i in range(5)]
    assert all(a["queued"] and a["tier"] == "local" and a["version"] == 0 for a in acks)
    r = web.get(item("c", "k0"))
    assert r.json()["pending"] is True and r.headers["etag"] == f'"p.{acks[0]["hlc"]}"'
    assert web.put(item("c", "k0"), json="again", headers={"If-Match": r.headers["etag"]}).status_code == 200
    assert web.put(item("c", "k0"), json="lost", headers={"If-Match": r.headers["etag"]}).status_code == 412
    sync = web.get("/api/v1/sync").json()
    assert sync["outbox"]["depth"] == 6
    proxy.restore()
    job = web.job(web.post("/api/v1/sync", json={"full": False}))
    assert job["state"] == "succeeded" and job["result"]["pushed"] == 6 and job["result"]["remaining"] == 0
    rows = primary_rows(pg, pg_schema)
    assert rows["k0"] == ("again", 2) and {k for k in rows} == {f"k{i}" for i in range(5)}
    assert web.get(item("c", "k0")).headers["etag"] == '"2"'  # one version per accepted op


# -- node views -----------------------------------------------------------------------------------------------------


def test_status_health_alerts_events_metrics(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    web.put(item("c", "k"), json=1)
    status = web.get("/api/v1/status", params={"fresh": "true"}).json()
    assert status == {**status, "node_id": web.store.node_id} and {"primary", "local", "circuit", "outbox"} <= set(
        status
    )
    health = web.get("/api/v1/health")
    assert health.status_code == 200 and health.json()["overall"] in ("healthy", "degraded")
    for overall, code in (("outage", 503), ("misconfigured", 503), ("degraded", 200), ("recovering", 200)):
        monkeypatch.setattr(web.store.recovery, "get_health_status", lambda overall=overall: {"overall": overall})
        assert web.get("/api/v1/health").status_code == code, overall
    assert web.get("/api/v1/alerts", params={"active": "true"}).json() == {"alerts": []}
    events = web.get("/api/v1/events").json()
    assert "events" in events and events["last_seq"] >= 0
    metrics = web.get("/metrics")
    assert metrics.status_code == 200 and "hybridstore_" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert web.client.get("/healthz").json() == {"status": "alive"}
    assert web.client.get("/readyz").json()["ready"] is True
    web.ctx.draining = True
    assert web.client.get("/readyz").status_code == 503


def test_openapi_and_docs_page(web: Web) -> None:
    schema = web.get("/api/v1/openapi.json").json()
    assert schema["paths"]["/api/v1/collections/{collection}/items/{key}"]["put"]["x-required-scope"] == "write"
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    page = web.client.get("/api/v1/docs")  # public: a static page; it asks for a key
    assert page.status_code == 200 and "docs-assets/swagger-ui-bundle.js" in page.text
    assert "http" not in page.text.split("<body>")[1]  # no CDN: every asset is this server's
    asset = web.client.get("/api/v1/docs-assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    assert web.client.get("/api/v1/docs-assets/index.html").status_code == 401  # only the listed files


# -- conflicts and dead letters -------------------------------------------------------------------------------------


def test_conflicts_and_dead_letters(make_web: WebFactory, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    strategies = {"conflict_strategies": {"orders": "manual"}}
    other = make_web("other", **strategies)
    web = make_web("node", write_mode="local_first", **strategies)
    other.put(item("orders", "o1"), json={"status": "new"})
    web.store.sync_now()
    web.put(item("orders", "o1"), json={"status": "mine"})
    other.put(item("orders", "o1"), json={"status": "theirs"})
    assert web.store.sync_now().conflicts == 1

    found = web.get("/api/v1/conflicts").json()["conflicts"]
    assert len(found) == 1 and found[0]["local"] == {"status": "mine"} and found[0]["remote"] == {"status": "theirs"}
    cid = found[0]["id"]
    assert web.get(f"/api/v1/conflicts/{cid}").json()["key"] == "o1"
    assert web.get("/api/v1/conflicts/999999").status_code == 404
    assert web.get("/api/v1/conflicts", params={"status": "bogus"}).status_code == 422
    assert web.post(f"/api/v1/conflicts/{cid}/resolve", json={"choice": "nope"}).status_code == 422
    done = web.post(f"/api/v1/conflicts/{cid}/resolve", json={"choice": "value", "value": {"status": "merged"}})
    assert done.status_code == 200, done.text
    assert done.json()["write"]["collection"] == "orders"
    again = web.post(f"/api/v1/conflicts/{cid}/resolve", json={"choice": "local"})
    assert again.status_code == 409 and again.json()["type"].endswith(":conflict")
    assert web.get("/api/v1/conflicts", params={"status": "resolved"}).json()["conflicts"][0]["id"] == cid

    web.put(item("c", "bad"), json={"poison": True})
    refuse_poison(pg, pg_schema)
    for _ in range(3):
        web.store.sync_now()
    letters = web.get("/api/v1/dead-letters").json()["dead_letters"]
    assert len(letters) == 1 and letters[0]["key"] == "bad"
    lid = letters[0]["id"]
    retried = web.post(f"/api/v1/dead-letters/{lid}/retry")  # local_first: queued again as a new write
    assert retried.status_code == 200 and retried.json()["queued"] is True and retried.json()["key"] == "bad"
    assert web.post("/api/v1/dead-letters/424242/retry").status_code == 404
    for _ in range(3):
        web.store.sync_now()  # ... and refused again
    (letter,) = web.get("/api/v1/dead-letters").json()["dead_letters"]
    lid = letter["id"]
    no_confirm = web.delete(f"/api/v1/dead-letters/{lid}", scope="admin")
    assert no_confirm.status_code == 422 and no_confirm.json()["type"].endswith("confirmation-required")
    wrong = web.delete(f"/api/v1/dead-letters/{lid}", scope="admin", json={"confirm": "1234"})
    assert wrong.status_code == 422
    dropped = web.delete(f"/api/v1/dead-letters/{lid}", scope="admin", json={"confirm": str(lid)})
    assert dropped.status_code == 200 and dropped.json()["discarded"]["key"] == "bad"
    assert web.get("/api/v1/dead-letters").json()["dead_letters"] == []

    audit = web.get("/api/v1/audit", scope="admin").json()["entries"]
    actions = [(e["action"], e["outcome"]) for e in audit]
    assert ("deadletter.discard", "ok") in actions
    assert ("deadletter.discard", "failed: confirmation-required") in actions
    assert ("conflict.resolve", "ok") in actions and ("conflict.resolve", "failed: conflict") in actions
    assert ("deadletter.retry", "ok") in actions
    assert all(e["actor"] == "key:node-admin" and e["client"] == "testclient" for e in audit)
    shared = pg.execute(f'SELECT actor, action, details FROM "{pg_schema}".audit_log WHERE details ? %s', ("via",))
    on_primary = {(action, details["outcome"]) for _actor, action, details in shared}
    assert ("deadletter.discard", "ok") in on_primary


# -- backups --------------------------------------------------------------------------------------------------------


def test_backups_over_http(web: Web, tmp_path: Path) -> None:
    for i in range(20):
        web.put(item("products", f"p{i}"), json={"i": i})
    job = web.job(web.post("/api/v1/backups", json={"label": "before the sale"}))
    assert job["state"] == "succeeded", job
    info = job["result"]
    assert info["records"] == 20 and info["verified"] and "path" not in info
    bid = info["id"]
    listed = web.get("/api/v1/backups").json()["backups"]
    assert [b["id"] for b in listed] == [bid]
    assert web.get(f"/api/v1/backups/{bid[:8]}").json()["label"] == "before the sale"
    assert web.get("/api/v1/backups/ffffffffffff").status_code == 404
    verified = web.post(f"/api/v1/backups/{bid}/verify").json()
    assert verified["verified"] is True and verified["records"] == 20

    download = web.get(f"/api/v1/backups/{bid}/download", scope="admin")
    assert download.status_code == 200 and download.headers["content-type"] == "application/octet-stream"
    assert download.content == Path(web.store.backups.get_backup(bid).path).read_bytes()
    assert web.get(f"/api/v1/backups/{bid}/download", scope="read").status_code == 403

    web.put(item("products", "p0"), json="changed")
    refused = web.post(f"/api/v1/backups/{bid}/restore", json={"overwrite": True})
    assert refused.status_code == 422 and refused.json()["type"].endswith("confirmation-required")
    dry = web.job(web.post(f"/api/v1/backups/{bid}/restore", json={"dry_run": True}))
    assert dry["state"] == "succeeded" and dry["result"]["totals"]["overwritten"] == 1
    done = web.job(web.post(f"/api/v1/backups/{bid}/restore", json={"confirm": bid}))
    assert done["state"] == "succeeded" and done["result"]["pre_restore_backup"]
    assert web.get(item("products", "p0")).json()["value"] == {"i": 0}

    config = web.get("/api/v1/backups/config").json()
    assert config["max_backups"] == 30
    assert web.client.put("/api/v1/backups/config", headers=web.auth(), json={"max_backups": 5}).status_code == 422
    changed = web.client.put("/api/v1/backups/config", headers=web.auth(), json={"max_backups": 5, "confirm": "config"})
    assert changed.status_code == 200 and changed.json()["max_backups"] == 5
    bad = web.client.put("/api/v1/backups/config", headers=web.auth(), json={"max_backups": 0, "confirm": "config"})
    assert bad.status_code == 422 and bad.json()["type"].endswith("invalid-setting")
    wrong_type = web.client.put("/api/v1/backups/config", headers=web.auth(), json={"max_backups": "5"})
    assert wrong_type.status_code == 422
    stats = web.get("/api/v1/backups/stats").json()
    assert stats["count"] == 2 and stats["by_kind"] == {"manual": 1, "pre_restore": 1}
    pruned = web.post("/api/v1/backups/prune", json={"dry_run": True}).json()
    assert pruned == {"dry_run": True, "removed": []}

    assert web.delete(f"/api/v1/backups/{bid}", scope="admin").status_code == 422
    gone = web.delete(f"/api/v1/backups/{bid}", scope="admin", params={"confirm": bid})
    assert gone.status_code == 200 and gone.json()["deleted"]["id"] == bid
    assert web.get(f"/api/v1/backups/{bid}").status_code == 404

    kinds = [(e["action"], e["outcome"]) for e in web.get("/api/v1/audit", scope="admin").json()["entries"]]
    for expected in (
        ("backup.create", "accepted"),
        ("backup.create", "ok"),
        ("backup.restore", "refused: confirmation-required"),
        ("backup.restore", "ok"),
        ("backup.download", "ok"),
        ("backup.config", "ok"),
        ("backup.delete", "ok"),
        ("backup.verify", "ok"),
        ("backup.prune", "ok"),
    ):
        assert expected in kinds, expected


def test_tampered_backup_is_reported_not_failed(web: Web) -> None:
    web.put(item("c", "k"), json=1)
    bid = web.job(web.post("/api/v1/backups"))["result"]["id"]
    path = Path(web.store.backups.get_backup(bid).path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    r = web.post(f"/api/v1/backups/{bid}/verify")
    assert r.status_code == 200 and r.json()["verified"] is False
    assert r.json()["problem"]["type"].endswith("backup-tampered")
    restore = web.job(web.post(f"/api/v1/backups/{bid}/restore", json={"confirm": bid}))
    assert restore["state"] == "failed" and restore["problem"]["type"].endswith("backup-tampered")


def test_jobs_listing_and_limits(web: Web) -> None:
    assert web.get("/api/v1/jobs/nope").status_code == 404
    job = web.job(web.post("/api/v1/sync"))
    assert job["actor"] == "key:node-admin" and job["kind"] == "sync"
    assert web.get("/api/v1/jobs").json()["jobs"][0]["id"] == job["id"]


def test_mounted_in_an_application_of_ones_own(web: Web) -> None:
    from fastapi import FastAPI

    outer = FastAPI()

    @outer.get("/")
    async def home() -> dict[str, str]:
        return {"app": "mine"}

    outer.mount("/store", web.client.app)
    with TestClient(outer) as client:
        assert client.get("/").json() == {"app": "mine"}
        assert client.get("/store/healthz").status_code == 200
        assert client.get("/store/api/v1/status").status_code == 401
        headers = web.auth("admin")
        assert client.put("/store/api/v1/collections/c/items/k", json=1, headers=headers).status_code == 200
        assert client.get("/store/api/v1/collections/c/items/k", headers=headers).json()["value"] == 1
        job = client.post("/store/api/v1/sync", headers=headers)
        assert job.status_code == 202 and job.headers["location"].endswith(f"/store/api/v1/jobs/{job.json()['id']}")
        assert client.get("/store/api/v1/docs").status_code == 200
        schema = client.get("/store/api/v1/openapi.json", headers=headers).json()
        assert "/api/v1/status" in schema["paths"]
