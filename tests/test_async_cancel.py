"""Cancelling an awaited call does not cancel the operation: the worker thread runs it to the end, so a write may
be acknowledged after its caller stopped waiting (documented in `hybridstore.aio` and docs/async.md)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest

import hybridstore
from hybridstore.compose import LOCAL_DB

from .fix_proxy import Proxy


def test_a_cancelled_write_lands_once_sqlite_lets_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hybridstore.aio")
    data_dir = tmp_path / "a"

    async def scenario() -> None:
        async with hybridstore.open_async(data_dir=data_dir, background=False) as s:
            await s.set("c", "warm", 0)
            blocker = sqlite3.connect(data_dir / LOCAL_DB, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # the store's write waits for this lock (busy timeout 5 s)
            write = asyncio.create_task(s.set("c", "k", {"v": 1}))
            await asyncio.sleep(0.3)
            write.cancel()
            started = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await write
            assert time.monotonic() - started < 0.2, "the caller stops waiting at once"
            assert blocker.execute("SELECT count(*) FROM records WHERE key = 'k'").fetchone() == (0,)
            blocker.execute("ROLLBACK")  # the write underneath goes on ...
            blocker.close()
            rec = await s.get("c", "k")  # (the tier lock orders it after the write)
            assert rec is not None and rec.value == {"v": 1}, "... and lands after its caller was cancelled"
            assert rec.source == "local"

    asyncio.run(scenario())
    assert "AsyncHybridStore.set() finished after its caller stopped waiting" in caplog.text
    with hybridstore.open(data_dir=data_dir, background=False) as store:
        rec = store.get("c", "k")
        assert rec is not None and rec.value == {"v": 1}


@pytest.mark.resilience
def test_a_cancelled_write_to_a_stalled_primary_still_lands(
    tmp_path: Path, proxy: Proxy, proxied_dsn: str, pg_schema: str
) -> None:
    """The primary black-holes the write: the caller gives up (a timeout of its own); the thread waits out
    ``primary_timeout``, then queues the write locally, as the sync store would. aclose() waits for it."""
    data_dir = tmp_path / "a"

    async def scenario() -> None:
        s = await hybridstore.open_async(
            proxied_dsn, data_dir=data_dir, primary_schema=pg_schema, primary_timeout=1.0, background=False
        )
        assert (await s.set("c", "warm", 0)).tier == "primary"
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(s.set("c", "k", {"v": 1}), timeout=0.3)
        assert time.monotonic() - started < 0.9, "the caller stopped waiting before primary_timeout"
        await s.aclose()  # waits for the write still in its thread
        assert time.monotonic() - started >= 1.0

    asyncio.run(scenario())
    with hybridstore.open(data_dir=data_dir, background=False) as store:  # embedded: what this node holds
        rec = store.get("c", "k")
        assert rec is not None and rec.value == {"v": 1} and rec.source == "local"
        assert store.health()["outbox"]["depth"] == 1, "queued for the primary, like any write in an outage"
