"""``hybridstore serve`` for real: a uvicorn subprocess on a free port, clients PUTting while the primary is cut and
restored through the fault proxy, then SIGTERM in the middle of the load. Every PUT the server acknowledged is on
the primary after a restart and a sync, exactly once (version 1: each key is written once)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import hybridstore

from .fix_db import primary_rows
from .fix_proxy import Proxy

TOKEN = "serve-test-token-" + "s" * 24
WRITERS = 4
SRC = Path(hybridstore.__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, url: str, schema: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRIDSTORE_", "SUPABASE_", "DATABASE_URL"))}
    env.update(HYBRIDSTORE_ADMIN_TOKEN=TOKEN, PYTHONPATH=str(SRC), HYBRIDSTORE_PRIMARY_SCHEMA=schema)
    cmd = [sys.executable, "-m", "hybridstore", "-d", str(data), "--primary-url", url, "--timeout", "0.5"]
    cmd += ["serve", "--port", str(port), "--no-access-log", "--graceful-timeout", "10"]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited during start-up"
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


@pytest.mark.slow
@pytest.mark.resilience
def test_acknowledged_puts_survive_an_outage_and_sigterm(
    tmp_path: Path, proxy: Proxy, proxied_dsn: str, pg_dsn: str, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data, log = tmp_path / "node", tmp_path / "serve.log"
    proc = start_server(data, proxied_dsn, pg_schema, port, log)
    try:
        wait_ready(base, proc)
        acked: dict[str, dict[str, Any]] = {}
        lock = threading.Lock()
        stop = threading.Event()
        failures: list[str] = []

        def writer(n: int) -> None:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
                i = 0
                while not stop.is_set():
                    key = f"w{n}-{i}"
                    i += 1
                    try:
                        r = client.put(f"/api/v1/collections/orders/items/{key}", json={"n": n, "i": i})
                    except httpx.HTTPError:
                        if proc.poll() is not None or stop.is_set():
                            return
                        continue  # shutting down: the connection went away (not acknowledged)
                    if r.status_code == 200:
                        with lock:
                            acked[key] = {**r.json(), "value": {"n": n, "i": i}}
                    elif r.status_code != 503:  # 503 = not saved (retry later); anything else is a bug
                        failures.append(f"{r.status_code} {r.text}")

        threads = [threading.Thread(target=writer, args=(n,), name=f"writer-{n}") for n in range(WRITERS)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        proxy.cut()
        time.sleep(1.5)
        proxy.restore()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # mid-load: the writers are still sending
        assert proc.wait(timeout=60) == 0, log.read_text()
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert "Traceback" not in output, output
    assert "stopped: the store is closed" in output
    assert not failures, failures[:5]
    tiers = {a["tier"] for a in acked.values()}
    assert "primary" in tiers and "local" in tiers, tiers  # both paths ran: write-through and queued in the outage
    assert len(acked) > 50
    print(f"acknowledged: {len(acked)}, by tier: { {t: sum(a['tier'] == t for a in acked.values()) for t in tiers} }")

    # restart (directly on the primary now) and sync: everything acknowledged reaches the primary, once
    with hybridstore.open(pg_dsn, data_dir=data, primary_schema=pg_schema, background=False) as store:
        for _ in range(20):
            report = store.sync_now()
            if report.remaining == 0 and not report.errors:
                break
        assert store.status(fresh=True).outbox["depth"] == 0
    rows = primary_rows(pg, pg_schema, "orders")
    missing = [k for k in acked if k not in rows]
    assert not missing, f"{len(missing)} acknowledged PUTs are not on the primary: {missing[:5]}"
    for key, ack in acked.items():
        assert rows[key] == (ack["value"], 1), (key, rows[key], ack)  # version 1: applied exactly once
    lost = pg.execute(f'SELECT count(*) FROM "{pg_schema}".settled_marks WHERE outcome <> %s', ("applied",)).fetchone()
    assert lost == (0,), "no acknowledged PUT lost on the primary"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the cryptography package (the backup extra's)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.slow
def test_serve_with_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRIDSTORE_", "SUPABASE_", "DATABASE_URL"))}
    env.update(HYBRIDSTORE_ADMIN_TOKEN=TOKEN, PYTHONPATH=str(SRC), HYBRIDSTORE_HTTP_PORT=str(port))
    cmd = [sys.executable, "-m", "hybridstore", "-d", str(tmp_path / "node"), "--max-value-bytes", "4096"]
    cmd += ["--conflict-strategy", "merge", "serve", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"https://127.0.0.1:{port}"
        trust = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                r = httpx.get(f"{base}/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}, verify=trust)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["node_id"]
        # the global options reach the served node, as they reach every other command
        cfg = httpx.get(f"{base}/api/v1/config", headers={"Authorization": f"Bearer {TOKEN}"}, verify=trust).json()
        assert cfg["store"]["max_value_bytes"] == 4096 and cfg["store"]["conflict_strategy"] == "merge", cfg
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)  # plain HTTP is not spoken
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "serving on https://127.0.0.1:" in log.read_text()
