"""Authentication and scopes: every route of the app, enumerated from its router, refuses a request without
credentials (401) and one whose key lacks the route's scope (403); keys are created, listed and revoked by the
CLI; ``serve`` refuses to start open."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hybridstore.cli import apikey, serve  # noqa: F401  (importing registers the commands)
from hybridstore.cli.app import app as cli_app
from hybridstore.web.auth import admin_token_from_env
from hybridstore.web.keys import ApiKeyStore, hash_token, parse_scopes
from hybridstore.web.routing import SCOPE_EXTRA
from hybridstore.web.webdb import WebDatabase

from . import test_web_api as base
from .test_web_api import Web

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
PUBLIC = {"/healthz", "/readyz", "/api/v1/docs", "/api/v1/docs-assets/{name}"}
# the admin UI's login page, setup link and static assets (a POST without its form, a missing asset: not 200)
ADMIN_PUBLIC = {"/admin/login", "/admin/setup", "/admin/static/{name:path}"}
LACKING = {"read": "write", "write": "read", "admin": "rw"}  # a key without the scope, for each scope
SAMPLE = {"collection": "c", "key": "k", "conflict_id": "1", "letter_id": "1", "backup_id": "abcd1234", "job_id": "j"}
runner = CliRunner()
make_web, web = base.make_web, base.web  # the fixtures


def routes(web: Web) -> list[tuple[str, str, str | None]]:
    """(method, path template, scope or None for public) of every route the app serves, from its router (FastAPI
    keeps included routers lazily since 0.16x: walk them with its own iterator where it has one)."""
    app = web.client.app
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined]
    except ImportError:  # older FastAPI: included routes are flattened into app.routes
        entries = [(r, r) for r in app.routes]  # type: ignore[attr-defined]
    else:
        entries = [(rc, rc.original_route) for rc in iter_route_contexts(app.routes)]  # type: ignore[attr-defined]
    found = []
    for effective, original in entries:
        extra = getattr(original, "openapi_extra", None) or {}
        for method in sorted((effective.methods or set()) - {"HEAD"}):
            found.append((method, effective.path, extra.get(SCOPE_EXTRA)))
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: SAMPLE.get(m.group(1), "swagger-ui.css"), path)


def call(web: Web, method: str, path: str, headers: dict[str, str]) -> Any:
    body = {"json": {}} if method in ("PUT", "POST") else {}
    return web.client.request(method, concrete(path), headers=headers, **body)


def test_every_route_refuses_without_credentials_or_scope(web: Web) -> None:
    table = routes(web)
    assert len(table) > 30
    assert {path for _, path, scope in table if scope is None} == PUBLIC | ADMIN_PUBLIC
    for method, path, scope in table:
        if path in ADMIN_PUBLIC:
            assert call(web, method, path, {}).status_code not in (401, 403, 500), (method, path)
            continue
        if scope is None:
            assert call(web, method, path, {}).status_code == 200, path
            continue
        anonymous = call(web, method, path, {})
        assert anonymous.status_code == 401, (method, path)
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert anonymous.json()["type"].endswith("unauthenticated")
        assert call(web, method, path, {"Authorization": "Bearer hsk_not-a-key"}).status_code == 401
        assert call(web, method, path, {"Authorization": f"Basic {web.tokens['admin']}"}).status_code == 401
        lacking = call(web, method, path, web.auth(LACKING[scope]))
        assert lacking.status_code == 403, (method, path, scope, lacking.text)
        assert lacking.json()["type"].endswith("forbidden")
        allowed = call(web, method, path, web.auth("admin"))
        assert allowed.status_code not in (401, 403, 500), (method, path, allowed.text)
        assert allowed.status_code < 500 or allowed.headers["content-type"] == "application/problem+json"


def test_unknown_paths_need_credentials_too(web: Web) -> None:
    assert web.client.get("/api/v2/nothing").status_code == 401  # no route map for strangers
    found = web.get("/api/v2/nothing")
    assert found.status_code == 404 and found.json()["type"].endswith("not-found")
    wrong_method = web.client.patch("/api/v1/collections", headers=web.auth("admin"))
    assert wrong_method.status_code == 405 and wrong_method.json()["type"].endswith("method-not-allowed")


def test_scopes_read_write_admin(web: Web) -> None:
    path = "/api/v1/collections/c/items/k"
    assert web.put(path, scope="write", json=1).status_code == 200
    assert web.get(path, scope="write").status_code == 403  # write does not imply read
    assert web.get(path, scope="read").status_code == 200
    assert web.put(path, scope="read", json=2).status_code == 403
    assert web.put(path, scope="rw", json=2).status_code == 200
    assert web.get(path, scope="admin").status_code == 200  # admin allows everything
    assert web.get(path, scope="token").status_code == 200  # HYBRIDSTORE_ADMIN_TOKEN
    assert web.post("/api/v1/sync", scope="rw").status_code == 403


def test_keys_are_stored_hashed_and_revocation_takes_effect(web: Web) -> None:
    other = ApiKeyStore(WebDatabase.in_dir(web.store.data_dir))  # as the CLI would, beside the server
    _, token = other.create("ci", ["read"])
    assert token.startswith("hsk_") and len(token) > 40
    raw = b"".join(p.read_bytes() for p in web.store.data_dir.glob("web.db*"))  # the file and its WAL
    assert token.encode() not in raw and hash_token(token).encode() in raw
    headers = {"Authorization": f"Bearer {token}"}
    assert web.client.get("/api/v1/status", headers=headers).status_code == 200
    other.revoke("ci")
    deadline = time.monotonic() + 3
    while web.client.get("/api/v1/status", headers=headers).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still works"
        time.sleep(0.1)
    listed = {k.name: k for k in other.list()}
    assert not listed["ci"].active and listed["ci"].last_used_at is not None


def test_scope_and_token_validation() -> None:
    assert parse_scopes(["read,write"]) == {"read", "write"} == parse_scopes(["read", "write"])
    for bad in ([], [""], ["root"], ["read", "sudo"]):
        with pytest.raises(ValueError):
            parse_scopes(bad)
    assert admin_token_from_env({}) is None
    with pytest.raises(ValueError):
        admin_token_from_env({"HYBRIDSTORE_ADMIN_TOKEN": "short"})


# -- the CLI --------------------------------------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli_app, list(args))
    return result.exit_code, result.output


def test_apikey_commands(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    code, out = cli("-d", d, "apikey", "create", "--name", "grafana", "--scope", "read", "--json")
    assert code == 0, out
    created = json.loads(out)
    assert created["scopes"] == ["read"] and created["token"].startswith("hsk_")
    code, out = cli("-d", d, "apikey", "create", "--name", "ops", "-s", "admin")
    assert code == 0 and "not shown again" in out
    token = next(line for line in out.splitlines() if line.startswith("hsk_"))
    code, out = cli("-d", d, "apikey", "create", "--name", "ops", "-s", "read")
    assert code == 2 and "exists already" in out
    code, out = cli("-d", d, "apikey", "create", "--name", "x", "-s", "root")
    assert code == 2 and "unknown scope" in out
    code, out = cli("-d", d, "apikey", "list", "--json")
    listed = json.loads(out)
    assert [k["name"] for k in listed] == ["grafana", "ops"] and all("token" not in k for k in listed)
    assert token not in out
    code, out = cli("-d", d, "apikey", "list")
    assert code == 0 and "grafana" in out
    code, out = cli("-d", d, "apikey", "revoke", created["id"], "--json")
    assert code == 0 and json.loads(out)["active"] is False
    code, out = cli("-d", d, "apikey", "revoke", "nobody")
    assert code == 2 and "no API key" in out


def test_serve_needs_no_configuration_and_never_starts_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key and no admin token: `serve` creates one admin key, prints it once, and serves; nothing is open."""
    import signal
    import subprocess
    import sys

    import httpx

    from .test_web_serve import SRC, free_port, wait_ready

    monkeypatch.setenv("HYBRIDSTORE_ADMIN_TOKEN", "too-short")
    d = str(tmp_path / "d")
    code, out = cli("-d", d, "serve", "--port", "1")
    assert code == 2 and "at least 16" in out
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRIDSTORE_", "SUPABASE_", "DATABASE_URL"))}
    env["PYTHONPATH"] = str(SRC)
    port = free_port()
    cmd = [sys.executable, "-m", "hybridstore", "-d", d, "serve", "--port", str(port), "--no-access-log"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)  # type: ignore[arg-type]
        assert httpx.get(f"{base}/api/v1/status").status_code == 401, "never open"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0
    lines = stderr.splitlines()
    token = lines[lines.index(next(x for x in lines if "shown this once" in x)) + 1].strip()
    with httpx.Client() as client:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_ready(base, proc)  # type: ignore[arg-type]
            r = client.get(f"{base}/api/v1/status", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, "the printed key works, and a restart keeps it"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, again = proc.communicate(timeout=60)
    assert "shown this once" not in again, "a key exists now: no second setup key"
    for command in (["serve"], ["apikey", "create"], ["apikey", "list"], ["apikey", "revoke"]):
        code, out = cli(*command, "--help")
        assert code == 0 and len(out.split("Usage")[1]) > 40


def test_websockets_are_refused(web: Web) -> None:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as refused, web.client.websocket_connect("/api/v1/status") as ws:
        ws.receive_text()
    assert refused.value.code == 1008
