"""Errors over HTTP: every failure is a problem-details body with the status our error tree says, and no request
— malformed JSON, huge bodies, bad keys, wrong types — gets a 500 or a traceback. Store calls never run on the
event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hybridstore import errors
from hybridstore.web.problems import problem_for

from . import test_web_api as base
from .test_web_api import Web, item

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
JSON = {"content-type": "application/json"}
make_web, web = base.make_web, base.web  # the fixtures


def problem(r: Any, status: int, slug: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == f"urn:hybridstore:problem:{slug}" and body["title"] and body["detail"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("body", "status", "slug"),
    [
        (b"{not json", 400, "malformed-json"),
        (b"", 400, "malformed-json"),
        (b"   ", 400, "malformed-json"),
        (b'{"a": 1} trailing', 400, "malformed-json"),
        (b"\xff\xfe\xfa", 400, "malformed-json"),
        (b"NaN", 422, "validation"),
        (b'{"x": Infinity}', 422, "validation"),
        (b'"nul \\u0000 inside"', 422, "validation"),
        (b"[" * 100_000 + b"]" * 100_000, 422, "validation"),
    ],
)
def test_put_bodies_that_are_not_storable_json(web: Web, body: bytes, status: int, slug: str) -> None:
    problem(web.put(item("c", "k"), content=body, headers=JSON), status, slug)


def test_put_media_type_and_size(web: Web) -> None:
    text = web.put(item("c", "k"), content=b"1", headers={"content-type": "text/plain"})
    problem(text, 415, "unsupported-media-type")
    assert web.put(item("c", "k"), content=b"1", headers={"content-type": "application/merge-patch+json"}).is_success
    limit = web.ctx.max_body_bytes
    problem(web.put(item("c", "k"), content=b" " * (limit + 1), headers=JSON), 413, "body-too-large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    problem(web.put(item("c", "k"), content=chunks(), headers=JSON), 413, "body-too-large")
    too_big_value = '"' + "x" * web.store.config.max_value_bytes + '"'
    problem(web.put(item("c", "k"), content=too_big_value.encode(), headers=JSON), 422, "validation")
    # an anonymous huge body is refused before a byte of it is read
    anonymous = web.client.put(item("c", "k"), content=b" " * (limit + 1), headers=JSON)
    problem(anonymous, 401, "unauthenticated")
    problem(web.post("/api/v1/sync", content=b"x" * (limit + 1), headers=JSON), 413, "body-too-large")


@pytest.mark.parametrize(
    "path",
    [
        item("bad name!", "k"),
        item("1starts-with-digit", "k"),
        item("c" * 65, "k"),
        item("c", "k" * 513),
        item("c", "nul\x00key"),
        item("c", ""),
    ],
)
def test_bad_collections_and_keys(web: Web, path: str) -> None:
    problem(web.put(path, json=1), 422, "validation")
    problem(web.get(path), 422, "validation")
    problem(web.delete(path), 422, "validation")


@pytest.mark.parametrize(
    ("method", "path", "kw"),
    [
        ("GET", "/api/v1/collections/c/items", {"params": {"limit": "abc"}}),
        ("GET", "/api/v1/collections/c/items", {"params": {"limit": 0}}),
        ("GET", "/api/v1/collections/c/items", {"params": {"limit": 10**30}}),
        ("GET", "/api/v1/collections/c/items", {"params": {"after": "x" * 600}}),
        ("GET", "/api/v1/events", {"params": {"since": -1}}),
        ("GET", "/api/v1/alerts", {"params": {"active": "maybe"}}),
        ("GET", "/api/v1/conflicts/0", {}),
        ("GET", "/api/v1/conflicts/abc", {}),
        ("GET", f"/api/v1/conflicts/{2**70}", {}),
        ("POST", f"/api/v1/dead-letters/{2**70}/retry", {}),
        ("POST", "/api/v1/sync", {"json": {"full": "yes"}}),
        ("POST", "/api/v1/sync", {"json": {"full": 1}}),
        ("POST", "/api/v1/sync", {"json": {"fulll": True}}),
        ("POST", "/api/v1/sync", {"json": [1, 2]}),
        ("POST", "/api/v1/backups", {"json": {"label": "x" * 201}}),
        ("POST", "/api/v1/backups", {"json": {"label": 5}}),
        ("POST", "/api/v1/backups/abcd/restore", {"json": {"collections": "orders"}}),
        ("PUT", "/api/v1/backups/config", {"json": {"interval_hours": "soon", "confirm": "config"}}),
        ("PUT", "/api/v1/backups/config", {"json": {"source": "cloud", "confirm": "config"}}),
        ("GET", "/api/v1/backups/abc", {}),
        ("POST", "/api/v1/conflicts/1/resolve", {"json": {}}),
    ],
)
def test_wrong_types_and_ranges_are_422(web: Web, method: str, path: str, kw: dict[str, Any]) -> None:
    problem(web.client.request(method, path, headers=web.auth("admin"), **kw), 422, "validation")


def test_malformed_json_bodies_of_admin_routes(web: Web) -> None:
    for path in ("/api/v1/sync", "/api/v1/backups", "/api/v1/backups/prune", "/api/v1/conflicts/1/resolve"):
        problem(web.post(path, content=b"{oops", headers=JSON), 400, "malformed-json")


def test_unexpected_errors_are_500_problems_without_a_traceback(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(web.store, "get", broken)
    client = TestClient(web.client.app, raise_server_exceptions=False)
    r = client.get(item("c", "k"), headers=web.auth("read"))
    problem(r, 500, "internal")
    assert "secret internal detail" not in r.text and "RuntimeError" not in r.text


def test_store_errors_map_to_statuses(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [
        (errors.PrimaryUnavailableError("down"), 503, "primary-unavailable"),
        (errors.StorageExhaustedError("full"), 503, "storage-exhausted"),
        (errors.ClosedError("closed"), 503, "closed"),
        (errors.CorruptionError("bad page"), 503, "local-unavailable"),
        (errors.ConflictError("newer"), 409, "conflict"),
        (errors.ValidationError("bad"), 422, "validation"),
    ]
    for exc, status, slug in cases:

        def fail(*args: Any, exc: Exception = exc) -> None:
            raise exc

        monkeypatch.setattr(web.store, "set", fail)
        r = web.put(item("c", "k"), json=1)
        problem(r, status, slug)
        if status == 503:
            assert r.headers["retry-after"]


def test_problem_mapping_covers_the_error_tree() -> None:
    expected = {
        errors.BackupNotFoundError: 404,
        errors.BackupTamperedError: 422,
        errors.WrongPassphraseError: 422,
        errors.NotABackupError: 422,
        errors.BackupError: 409,
        errors.ValidationError: 422,
        errors.ConfigError: 422,
        errors.ConflictError: 409,
        errors.PrimaryMisconfiguredError: 503,
        errors.PrimaryTimeoutError: 503,
        errors.PrimaryUnavailableError: 503,
        errors.StorageExhaustedError: 503,
        errors.UnavailableError: 503,
        errors.PrimaryRejectedError: 422,
        errors.CorruptionError: 503,
        errors.LocalStoreError: 503,
        errors.JournalError: 503,
        errors.ClosedError: 503,
    }
    tree = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.HybridStoreError)}
    assert tree - {errors.HybridStoreError, errors.StoreLockedError} <= set(expected), "a new error class is unmapped"
    for cls, status in expected.items():
        p = problem_for(cls("message"))
        assert p.status == status and p.detail == "message", cls
    assert problem_for(ImportError("x", name="zstandard")).status == 503
    assert problem_for(KeyError("secret")).to_dict()["detail"] == "an unexpected error; the server log has the details"


def test_store_calls_never_run_on_the_event_loop(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool]] = []

    def watch(name: str) -> None:
        original = getattr(web.store, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            seen.append((threading.current_thread().name, on_loop))
            return original(*args, **kwargs)

        monkeypatch.setattr(web.store, name, wrapper)

    for name in ("set", "get", "list", "delete", "status", "sync_status"):
        watch(name)
    web.put(item("c", "k"), json=1)
    web.put(item("c", "k"), json=2, headers={"If-Match": "*"})
    web.get(item("c", "k"))
    web.get("/api/v1/collections/c/items")
    web.get("/api/v1/status")
    web.get("/api/v1/sync")
    web.delete(item("c", "k"))
    assert len(seen) >= 8 and not any(on_loop for _, on_loop in seen)
