"""The fault proxy, in front of the real PostgreSQL: each fault does what it says, per direction, is switched at run
time, and is counted."""

from __future__ import annotations

import socket
import time
from typing import Any

import psycopg
import pytest

from .fix_proxy import Proxy

pytestmark = pytest.mark.resilience


def connect(proxy: Proxy, pg_dsn: str, timeout: int = 2) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.url(pg_dsn), connect_timeout=timeout, autocommit=True)


def round_trip(conn: psycopg.Connection[Any]) -> float:
    start = time.monotonic()
    conn.execute("SELECT 1").fetchone()
    return time.monotonic() - start


def test_down_refuses_and_resets_then_restore(proxy: Proxy, pg_dsn: str) -> None:
    conn = connect(proxy, pg_dsn)
    assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    proxy.down()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
    assert proxy.counters["reset"] >= 1 and proxy.counters["down"] == 1
    proxy.restore()
    with connect(proxy, pg_dsn) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)
    conn.close()


def test_blackhole_answers_nothing(proxy: Proxy, pg_dsn: str) -> None:
    proxy.blackhole()
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        connect(proxy, pg_dsn, timeout=1)
    assert time.monotonic() - start >= 0.9, "the connection was accepted and then never answered"
    assert proxy.counters["blackholed_connections"] >= 1 and proxy.counters["blackholed_bytes"] > 0
    proxy.restore()
    with connect(proxy, pg_dsn) as conn:
        assert round_trip(conn) < 1


def test_latency_with_jitter_per_direction(pg_dsn: str) -> None:
    with Proxy("127.0.0.1", 5432, seed=7) as proxy, connect(proxy, pg_dsn) as conn:
        base = min(round_trip(conn) for _ in range(3))
        proxy.latency(200, 50, direction="downstream")
        slow = sorted(round_trip(conn) for _ in range(5))
        assert slow[0] >= 0.15 and slow[2] <= 0.25 + base + 0.1, slow  # 200 ± 50 ms a chunk
        proxy.latency(0, direction="downstream")
        proxy.latency(100, direction="upstream")
        assert 0.1 <= round_trip(conn) < 0.3
        assert proxy.counters["delayed_chunks"] >= 6
        proxy.restore()
        assert round_trip(conn) < 0.1


def test_bandwidth_limit(proxy: Proxy, pg_dsn: str) -> None:
    with connect(proxy, pg_dsn) as conn:
        proxy.bandwidth(200_000)
        start = time.monotonic()
        (text,) = conn.execute("SELECT repeat('x', 100000)").fetchone()  # type: ignore[misc]
        took = time.monotonic() - start
        assert len(text) == 100_000 and 0.4 <= took < 2.0, took
        assert proxy.counters["throttled_bytes"] >= 90_000  # counted once written, as the client reads


def test_reset_after_n_bytes(proxy: Proxy, pg_dsn: str) -> None:
    with connect(proxy, pg_dsn) as conn:
        proxy.reset_after(5000, direction="downstream")
        conn.execute("SELECT 1").fetchone()  # a few bytes: still under the limit
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT repeat('x', 20000)").fetchone()
    assert proxy.counters["reset_after_bytes"] == 1
    proxy.restore()
    with connect(proxy, pg_dsn) as conn:
        assert conn.execute("SELECT repeat('x', 20000)").fetchone() is not None


def test_slow_close(proxy: Proxy, pg_dsn: str) -> None:
    proxy.slow_close(0.3)
    conn = connect(proxy, pg_dsn)
    conn.close()  # the client's end closes; the proxy holds the server's end open a while
    deadline = time.monotonic() + 5
    while proxy.counters["slow_closes"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.counters["slow_closes"] >= 1
