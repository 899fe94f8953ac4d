"""AsyncHybridStore offers the same API as HybridStore, with the same results."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore import AsyncHybridStore, HybridStore

from .fix_db import primary_rows

PUBLIC = (
    "set",
    "get",
    "delete",
    "list",
    "sync_now",
    "health",
    "close",
    "sync_status",
    "conflicts",
    "get_conflict",
    "resolve_conflict",
    "dead_letters",
    "retry_dead_letter",
    "discard_dead_letter",
)


def test_same_methods_and_signatures() -> None:
    for name in PUBLIC:
        sync_sig = inspect.signature(getattr(HybridStore, name))
        async_fn = getattr(AsyncHybridStore, name)
        assert inspect.iscoroutinefunction(async_fn), name
        assert list(inspect.signature(async_fn).parameters) == list(sync_sig.parameters), name
    assert list(inspect.signature(hybridstore.open_async).parameters) == list(
        inspect.signature(hybridstore.open).parameters
    )


def test_async_parity(tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]) -> None:
    async def scenario() -> dict[str, Any]:
        async with await hybridstore.open_async(pg_dsn, data_dir=tmp_path / "a", primary_schema=pg_schema) as s:
            results = await asyncio.gather(*(s.set("c", f"k{i}", {"i": i}) for i in range(20)))
            assert {r.tier for r in results} == {"primary"}
            rec = await s.get("c", "k3")
            assert rec is not None and rec.value == {"i": 3} and rec.source == "primary"
            await s.delete("c", "k0")
            page = await s.list("c", limit=5)
            assert [r.key for r in page] == ["k1", "k10", "k11", "k12", "k13"]
            report = await s.sync_now()
            assert report.remaining == 0
            return await s.health()

    health = asyncio.run(scenario())
    assert health["primary"]["state"] == "healthy"
    assert len(primary_rows(pg, pg_schema)) == 19


def test_async_errors_are_the_same(tmp_path: Path) -> None:
    async def scenario() -> None:
        s = await hybridstore.open_async(data_dir=tmp_path / "b")
        with pytest.raises(hybridstore.ValidationError):
            await s.set("bad name", "k", 1)
        await s.close()
        with pytest.raises(hybridstore.ClosedError):
            await s.get("c", "k")

    asyncio.run(scenario())
