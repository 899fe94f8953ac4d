"""REST PUT and GET throughput: the hybridstore HTTP service vs a bare FastAPI endpoint doing the same SQLite work.

    python bench/bench_web.py [--requests 3000] [--concurrency 8] [--rounds 4]

Two servers run side by side, each in a subprocess of its own under uvicorn (same options: h11, no access log):

- **hybridstore**: `hybridstore.web.create_app` over an embedded store (no primary: a PUT is the local durable
  write, record + outbox row in one SQLite transaction; a GET is a local point read), with its API-key check,
  problem details and thread offloading — what ``hybridstore serve`` runs.
- **bare FastAPI**: ``PUT /items/{key}`` reads the JSON body and does the same SQLite work by hand (WAL,
  ``synchronous=NORMAL``, ``BEGIN IMMEDIATE``; upsert into a records table + an outbox row; ``COMMIT``) in
  Starlette's thread pool; ``GET /items/{key}`` selects the row and answers its JSON. No authentication.

The client is one process of httpx ``AsyncClient`` (HTTP/1.1 keep-alive) with ``--concurrency`` requests in
flight; it alternates between the servers round by round (median of the rounds). Target: hybridstore >= 0.5 x bare.
On a 2-core machine the client, the server and SQLite share the cores: compare the ratio, not the absolute rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool

from _common import fmt_rate, header, print_table, small_value, temp_dir, verdict

TOKEN = "bench-web-token-" + "b" * 32
COLLECTION = "products"
RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    collection TEXT NOT NULL, key TEXT NOT NULL, value TEXT, updated_at REAL NOT NULL, synced_at REAL,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, collection TEXT NOT NULL, key TEXT NOT NULL, value TEXT, created_at REAL NOT NULL
);
"""
RAW_UPSERT = (
    "INSERT INTO records (collection, key, value, updated_at, synced_at) VALUES (?, ?, ?, ?, NULL) "
    "ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
    "synced_at = NULL"
)
RAW_OUTBOX = "INSERT INTO outbox (collection, key, value, created_at) VALUES (?, ?, ?, ?)"
RAW_SELECT = "SELECT value FROM records WHERE collection = ? AND key = ?"


# -- the servers (run as subprocesses of this script) -------------------------------------------------------------


def bare_app(path: Path) -> Any:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(RAW_SCHEMA)
    lock = threading.Lock()
    app = FastAPI()

    def write(key: str, text: str) -> None:
        now = time.time()
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(RAW_UPSERT, (COLLECTION, key, text, now))
            conn.execute(RAW_OUTBOX, (COLLECTION, key, text, now))
            conn.execute("COMMIT")

    def read(key: str) -> Any:
        with lock:
            row = conn.execute(RAW_SELECT, (COLLECTION, key)).fetchone()
        return None if row is None else json.loads(row[0])

    @app.put("/items/{key}")
    async def put(key: str, request: Request) -> Response:
        value = json.loads(await request.body())
        await run_in_threadpool(write, key, json.dumps(value, ensure_ascii=False, separators=(",", ":")))
        return Response(json.dumps({"key": key, "queued": True}), media_type="application/json")

    @app.get("/items/{key}")
    async def get(key: str) -> Response:
        value = await run_in_threadpool(read, key)
        if value is None:
            return Response(status_code=404)
        return Response(json.dumps({"key": key, "value": value}), media_type="application/json")

    return app


def serve(kind: str, port: int, directory: Path) -> None:
    import uvicorn

    store = None
    if kind == "hybridstore":
        import hybridstore
        from hybridstore.web import create_app

        store = hybridstore.open(None, data_dir=directory, backups=False)
        app = create_app(store, admin_token=TOKEN, docs_ui=False)
    else:
        app = bare_app(directory / "bare.db")
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="h11")
    finally:
        if store is not None:
            store.close()


# -- the client ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, kind: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRIDSTORE_", "SUPABASE_", "DATABASE_URL"))}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(self.port), "--dir", str(directory)], env=env
        )
        self.base = f"http://127.0.0.1:{self.port}"
        if kind == "hybridstore":
            self.put_path = self.get_path = f"/api/v1/collections/{COLLECTION}/items/"
            self.headers = {"Authorization": f"Bearer {TOKEN}"}
        else:
            self.put_path = self.get_path = "/items/"
            self.headers = {}

    def wait_ready(self) -> None:
        path = "/healthz" if self.kind == "hybridstore" else "/docs"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.kind} server exited")
            try:
                if httpx.get(self.base + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"the {self.kind} server did not start")

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (all its threads), from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def load(server: Server, method: str, keys: list[str], concurrency: int) -> tuple[float, float]:
    """Send one request per key, ``concurrency`` at a time over keep-alive connections; returns requests/s and the
    server's CPU seconds per request (the connections are opened by a short warm-up first, not timed)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=server.base, headers=server.headers, limits=limits, timeout=30) as client:

        async def run(batch: list[str]) -> None:
            queue = iter(enumerate(batch))

            async def worker() -> None:
                for i, key in queue:
                    if method == "PUT":
                        r = await client.put(server.put_path + key, json=small_value(i))
                    else:
                        r = await client.get(server.get_path + key)
                    if r.status_code != 200:
                        errors.append(f"{method} {key}: {r.status_code} {r.text[:200]}")

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await run([f"warm-{k}" if method == "PUT" else k for k in keys[: 20 * concurrency]])
        cpu0, start = server.cpu_seconds(), time.perf_counter()
        await run(keys)
        elapsed, cpu = time.perf_counter() - start, server.cpu_seconds() - cpu0
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return len(keys) / elapsed, cpu / len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per round and per server")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--serve", choices=("hybridstore", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.dir)
        return
    header("bench_web")
    with temp_dir() as tmp:
        servers = [Server("hybridstore", tmp / "hybridstore"), Server("bare", tmp / "bare")]
        try:
            for s in servers:
                s.wait_ready()
            rates: dict[tuple[str, str], list[float]] = {}
            cpu: dict[tuple[str, str], list[float]] = {}
            for method in ("PUT", "GET"):
                for r in range(args.rounds):
                    keys = [f"k{r:02d}-{i:07d}" for i in range(args.requests)]
                    order = servers if r % 2 == 0 else list(reversed(servers))
                    for s in order:
                        rate, per_request = asyncio.run(load(s, method, keys, args.concurrency))
                        rates.setdefault((method, s.kind), []).append(rate)
                        cpu.setdefault((method, s.kind), []).append(per_request)
        finally:
            for s in servers:
                s.stop()
    rows = []
    for method in ("PUT", "GET"):
        ours = statistics.median(rates[(method, "hybridstore")])
        bare = statistics.median(rates[(method, "bare")])
        ours_cpu = statistics.median(cpu[(method, "hybridstore")]) * 1e6
        bare_cpu = statistics.median(cpu[(method, "bare")]) * 1e6
        ratio = ours / bare
        rows.append(
            [
                method,
                fmt_rate(ours),
                fmt_rate(bare),
                f"{ratio:.2f}",
                f"{ours_cpu:,.0f}",
                f"{bare_cpu:,.0f}",
                f"{bare_cpu / ours_cpu:.2f}",
                ">= 0.50",
                verdict(ratio, 0.5),
            ]
        )
    print_table(
        f"REST throughput ({args.requests} requests x {args.rounds} rounds, {args.concurrency} in flight)",
        [
            "request",
            "hybridstore req/s",
            "bare req/s",
            "ratio",
            "hybridstore server CPU us/req",
            "bare server CPU us/req",
            "CPU ratio (bare/ours)",
            "target (req/s ratio)",
            "",
        ],
        rows,
    )
    print(
        "The client (one Python process) and both servers share the machine's cores: when the client is the "
        "bottleneck the req/s ratio tends to 1; the server CPU per request shows each server's own cost."
    )


if __name__ == "__main__":
    main()
