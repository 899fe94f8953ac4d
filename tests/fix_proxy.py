"""The test suite's TCP proxy between the store and PostgreSQL: `hybridstore.resilience.proxy.FaultProxy`.

- ``cut()``: new connections are refused (the listener is closed) and open ones are reset.
- ``blackhole()``: connections are accepted and bytes are read, but nothing is ever forwarded or answered.
- ``restore()``: traffic flows again (open connections stay dead; clients reconnect).

It also offers latency, bandwidth, reset-after-N-bytes and slow close (see its docstring), and counts what it
injected (``proxy.counters``).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from hybridstore.resilience.proxy import FaultProxy

Proxy = FaultProxy


@pytest.fixture
def proxy(pg_dsn: str) -> Iterator[Proxy]:
    parts = urlsplit(pg_dsn)
    p = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield p
    p.close()


@pytest.fixture
def proxied_dsn(proxy: Proxy, pg_dsn: str) -> str:
    return proxy.url(pg_dsn)


__all__ = ["Proxy"]
