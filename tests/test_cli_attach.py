"""The CLI attaches to a running node: ``hybridstore serve`` listens on an owner-only Unix socket in its data
directory, and the commands use it — reading ones show the live node (``health`` exits 1 during its outage),
mutating ones are done by the node. A real ``serve`` process each; the CLI runs in this process (CliRunner)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

import hybridstore
from hybridstore.cli import app as cli_app
from hybridstore.web import local_socket, serve_local_socket
from hybridstore.web.local_socket import SOCKET_FILE

from .fix_db import primary_rows
from .fix_proxy import Proxy
from .test_web_serve import SRC, TOKEN, free_port, wait_ready

runner = CliRunner()


def cli(d: Path, *args: str) -> tuple[int, Any]:
    result = runner.invoke(cli_app, ["-d", str(d), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = result.stdout if "--json" in args else result.output
    try:
        return result.exit_code, json.loads(text)
    except ValueError:
        return result.exit_code, text


class Served:
    def __init__(self, data: Path, proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.data, self.proc, self.base, self.log = data, proc, base, log

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def serve(tmp: Path, url: str | None = None, schema: str | None = None) -> Served:
    port = free_port()
    data, log = tmp / "node", tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRIDSTORE_", "SUPABASE_", "DATABASE_URL"))}
    env.update(HYBRIDSTORE_ADMIN_TOKEN=TOKEN, PYTHONPATH=str(SRC))
    cmd = [sys.executable, "-m", "hybridstore", "-d", str(data)]
    if url:
        env["HYBRIDSTORE_PRIMARY_SCHEMA"] = schema or "hybridstore"
        cmd += ["--primary-url", url, "--timeout", "0.5"]
    cmd += ["serve", "--port", str(port), "--no-access-log", "--graceful-timeout", "5"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Served(data, proc, base, log)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    node = serve(tmp_path)
    yield node
    if node.proc.poll() is None:
        node.proc.kill()
        node.proc.wait()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_socket_is_owner_only(served: Served) -> None:
    sock = served.data / SOCKET_FILE
    mode = sock.lstat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert served.stop() == 0
    assert not sock.exists()  # removed when the node stops


def test_commands_attach_to_a_running_serve(served: Served) -> None:
    d = served.data
    code, wrote = cli(d, "set", "orders", "o/1", '{"n": 1}', "--json")
    assert code == 0 and wrote["tier"] == "local" and wrote["queued"] is True  # embedded: local + outbox
    code, record = cli(d, "get", "orders", "o/1", "--json")
    assert code == 0 and record["value"] == {"n": 1} and record["key"] == "o/1"
    code, page = cli(d, "list", "orders", "--json")
    assert code == 0 and [r["key"] for r in page["records"]] == ["o/1"]
    result = runner.invoke(cli_app, ["-d", str(d), "status", "--json"])
    assert result.exit_code == 0 and "snapshot" not in result.output  # the live node, not a copy of its files
    status = json.loads(result.stdout)
    assert status["data_dir"] == str(d) and status["outbox"]["depth"] == 1
    assert status["overall"] in ("healthy", "degraded")
    code, health = cli(d, "health", "--json")
    assert code == 0 and health["overall"] != "outage"
    code, collections = cli(d, "collections", "--json")
    assert code == 0 and collections == [{"collection": "orders", "records": 1, "bytes": 7, "pending": 1}]  # {"n":1}
    code, pending = cli(d, "pending", "--json")
    assert code == 0 and pending["depth"] == 1 and [e["key"] for e in pending["entries"]] == ["o/1"]
    assert pending["reason"].startswith("no primary is configured")
    code, alerts = cli(d, "alerts", "--json")
    assert code == 0 and isinstance(alerts, list)
    code, nodes = cli(d, "nodes", "--json")
    assert code == 0 and [n["node_id"] for n in nodes] == [status["node_id"]]
    code, made = cli(d, "backup", "create", "--label", "from-cli", "--json")
    assert code == 0 and made["label"] == "from-cli" and made["records"] == 1
    code, backups = cli(d, "backup", "list", "--json")
    assert code == 0 and [b["label"] for b in backups] == ["from-cli"]
    code, exported = cli(d, "backup", "export", made["id"], str(d.parent / "copy.hsb"), "--json")
    assert code == 2 and "in use by another process" in str(exported)  # not done through the node: says so
    copy = d.parent / "copy.hsb"
    copy.write_bytes(next((d / "backups").glob("*.hsb")).read_bytes())
    code, again = cli(d, "backup", "import", str(copy), "--json")  # streamed to the node, which refuses a twin
    assert code == 2 and "already" in again["error"]["message"], again
    code, deleted = cli(d, "delete", "orders", "o/1", "--json")
    assert code == 0 and deleted["deleted"] is True
    code, _ = cli(d, "get", "orders", "o/1")
    assert code == 1
    code, missing = cli(d, "delete", "orders", "o/1", "--json")
    assert code == 0 and missing["absent"] is True
    bid = made["id"]
    code, dry = cli(d, "backup", "restore", bid, "--dry-run", "--json")  # through the node, as a job
    assert code == 0 and dry["dry_run"] is True and dry["totals"]["added"] == 1, dry
    code, restored = cli(d, "backup", "restore", bid, "-y", "--json")
    assert code == 0 and restored["written"] == 1 and restored["pre_restore_backup"]
    code, record = cli(d, "get", "orders", "o/1", "--json")
    assert code == 0 and record["value"] == {"n": 1}
    code, pruned = cli(d, "backup", "prune", "--dry-run", "--json")
    assert code == 0 and pruned == {"dry_run": True, "deleted": []}
    code, gone = cli(d, "backup", "delete", bid, "-y", "--json")
    assert code == 0 and gone["id"] == bid
    code, text = cli(d, "deadletters", "retry", "5")
    assert code == 1 and "no dead letter" in text
    code, text = cli(d, "conflicts", "resolve", "1", "--choice", "local")  # the node says: no primary
    assert code == 1 and "needs a primary" in text, text
    code, text = cli(d, "backup", "pin", made["id"][:8])  # not done through the node: says who holds it
    assert code == 2 and f"pid {served.proc.pid}" in text and "hybridstore serve" in text, text
    # the node audited what was done over the socket, as the local user
    r = httpx.get(f"{served.base}/api/v1/audit", headers={"Authorization": f"Bearer {TOKEN}"})
    assert any(e["action"] == "backup.create" and e["actor"].startswith("local:") for e in r.json()["entries"])
    assert served.stop() == 0


def test_a_dead_nodes_socket_is_ignored(served: Served) -> None:
    d = served.data
    assert cli(d, "set", "c", "k", "1")[0] == 0
    served.proc.kill()  # SIGKILL: the socket file stays behind
    served.proc.wait()
    assert (d / SOCKET_FILE).exists()
    code, record = cli(d, "get", "c", "k", "--json")  # nobody answers: the command opens the directory itself
    assert code == 0 and record["value"] == 1
    restarted = serve(d.parent)  # a new node replaces the stale socket
    try:
        code, status = cli(d, "status", "--json")
        assert code == 0 and status["data_dir"] == str(d)
    finally:
        assert restarted.stop() == 0


@pytest.mark.resilience
def test_health_sees_the_outage_of_a_running_serve(
    tmp_path: Path, proxy: Proxy, proxied_dsn: str, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    node = serve(tmp_path, proxied_dsn, pg_schema)
    try:
        d = node.data
        wait_for("a healthy node", lambda: cli(d, "health", "--json")[1]["overall"] == "healthy")
        code, _ = cli(d, "set", "orders", "before", "1")
        assert code == 0
        # serve's heartbeat writes its row on the primary as soon as the primary answers
        wait_for("the node's row", lambda: cli(d, "nodes", "--json")[1] != [])
        code, nodes = cli(d, "nodes", "--json")
        assert code == 0 and [n["stale"] for n in nodes] == [False] and nodes[0]["version"]
        proxy.cut()
        wait_for("the outage", lambda: cli(d, "health", "--json")[0] == 1)
        code, health = cli(d, "health", "--json")
        assert code == 1 and health["overall"] == "outage"
        code, status = cli(d, "status", "--json")
        assert status["primary"]["state"] == "down" and status["overall"] == "outage"
        code, wrote = cli(d, "set", "orders", "during", "2", "--json")
        assert code == 0 and wrote["queued"] is True  # the node queued it
        proxy.restore()
        wait_for("recovery", lambda: cli(d, "health", "--json")[0] == 0)
        code, report = cli(d, "sync", "--json")
        assert code == 0 and report["remaining"] == 0
        assert set(primary_rows(pg, pg_schema, "orders")) == {"before", "during"}
    finally:
        assert node.stop() == 0
    (state,) = pg.execute(f'SELECT state FROM "{pg_schema}".nodes').fetchone()
    assert state == "stopped"  # its last heartbeat said so


@pytest.mark.resilience
def test_an_application_serves_its_socket_and_health_sees_its_outage(
    tmp_path: Path, proxy: Proxy, proxied_dsn: str, pg_schema: str
) -> None:
    d = tmp_path / "app"
    store = hybridstore.open(
        proxied_dsn, data_dir=d, primary_schema=pg_schema, primary_timeout=0.5, backups=False
    )  # with its background work: the monitor is what sees the outage
    try:
        listener = serve_local_socket(store)
        assert stat.S_IMODE((d / SOCKET_FILE).lstat().st_mode) == 0o600
        store.set("c", "k", 1)
        code, record = cli(d, "get", "c", "k", "--json")
        assert code == 0 and record["value"] == 1
        wait_for("a healthy node", lambda: cli(d, "health", "--json")[1]["overall"] == "healthy")
        proxy.cut()
        wait_for("the outage", lambda: cli(d, "health", "--json")[0] == 1)
        code, status = cli(d, "status", "--json")
        assert status["overall"] == "outage" and status["node_id"] == store.node_id
        code, wrote = cli(d, "set", "c", "during", "2", "--json")  # the application's node writes it
        assert code == 0 and wrote["queued"] is True and store.get("c", "during").value == 2
        proxy.restore()
        wait_for("recovery", lambda: cli(d, "health", "--json")[0] == 0)
    finally:
        store.close()
    assert listener.stop() and not (d / SOCKET_FILE).exists()  # stopped with the store
    code, record = cli(d, "get", "c", "during", "--json")  # nobody serves: the command opens the store
    assert code == 0 and record["value"] == 2


def test_a_deep_data_directory_still_gets_its_socket(tmp_path: Path) -> None:
    """Unix socket addresses hold about 100 bytes: a deeper directory is reached through its descriptor."""
    deep = tmp_path.joinpath(*(["d" * 40] * 5))
    deep.mkdir(parents=True)
    assert len(str(local_socket.socket_path(deep))) > 200
    server = local_socket.bind(deep)
    try:
        server.listen(1)
        assert stat.S_IMODE(local_socket.socket_path(deep).stat().st_mode) == 0o600
        with local_socket.short_path(local_socket.socket_path(deep)) as address, socket.socket(socket.AF_UNIX) as c:
            c.connect(address)
            peer, _ = server.accept()
            c.sendall(b"ping")
            assert peer.recv(4) == b"ping"
            peer.close()
    finally:
        server.close()
        local_socket.remove(deep)
    assert not local_socket.socket_path(deep).exists()
