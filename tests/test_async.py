"""AsyncHybridStore offers the same API as HybridStore, with the same results, in a thread pool of its own."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore import AsyncHybridStore, HybridStore
from hybridstore.aio import AsyncBackups, AsyncMetrics, AsyncRecovery
from hybridstore.errors import ClosedError, ConfigError, StoreLockedError

from .fix_db import primary_rows

FACES = (AsyncHybridStore, AsyncBackups, AsyncRecovery, AsyncMetrics)


def public_members(cls: type) -> dict[str, Any]:
    return {name: member for name, member in inspect.getmembers(cls) if not name.startswith("_")}


def params(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def parity_problems(face: type, sync_cls: type) -> list[str]:
    """What ``face`` lacks to mirror ``sync_cls``: every public method is a coroutine (or an async iterator) with
    the same parameters, or a sync method listed in ``face.PLAIN``; every other public member exists; only what
    ``face.NOT_MIRRORED`` names is left out."""
    problems = []
    members = public_members(sync_cls)
    for name in sorted((face.PLAIN | face.NOT_MIRRORED) - members.keys()):  # type: ignore[attr-defined]
        problems.append(f"{name}: listed in PLAIN or NOT_MIRRORED but not a public member of {sync_cls.__name__}")
    for name, member in sorted(members.items()):
        if name in face.NOT_MIRRORED:  # type: ignore[attr-defined]
            continue
        counterpart = inspect.getattr_static(face, name, None)
        if counterpart is None:
            problems.append(f"{name}: no async counterpart")
        elif inspect.isfunction(member):
            if name in face.PLAIN:  # type: ignore[attr-defined]
                if inspect.iscoroutinefunction(counterpart) or not inspect.isfunction(counterpart):
                    problems.append(f"{name}: listed in PLAIN, so it must stay a sync method")
            elif not (inspect.iscoroutinefunction(counterpart) or inspect.isasyncgenfunction(counterpart)):
                problems.append(f"{name}: not a coroutine function (blocking methods must be awaitable)")
            if inspect.isfunction(counterpart) and params(counterpart) != params(member):
                problems.append(f"{name}: parameters {params(counterpart)} differ from {params(member)}")
        elif name in face.PLAIN:  # type: ignore[attr-defined]
            problems.append(f"{name}: listed in PLAIN but not a method")
    return problems


@pytest.mark.parametrize("face", FACES, ids=lambda f: f.__name__)
def test_every_public_member_has_an_async_counterpart(face: type) -> None:
    """Derived from inspect.getmembers, not a hand-kept list: a method added to the sync class fails this test
    until the async face has it (or says on purpose why not)."""
    assert parity_problems(face, face.MIRRORS) == []  # type: ignore[attr-defined]


def test_the_parity_check_notices_a_new_method() -> None:
    class Grown(HybridStore):
        def compact(self, *, level: int = 1) -> None: ...

        @property
        def size(self) -> int:
            return 0

    assert parity_problems(AsyncHybridStore, Grown) == ["compact: no async counterpart", "size: no async counterpart"]
    assert set(public_members(HybridStore)) >= {"set", "set_many", "get", "backups", "close"}


def test_open_async_takes_the_options_of_open_and_a_pool_size() -> None:
    sync_params = params(hybridstore.open)
    assert params(hybridstore.open_async) == [
        *sync_params[:-1],
        ("max_workers", inspect.Parameter.KEYWORD_ONLY, None),
        sync_params[-1],
    ]
    assert params(AsyncHybridStore.open) == params(hybridstore.open_async)


def test_async_parity(tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]) -> None:
    async def scenario() -> dict[str, Any]:
        async with hybridstore.open_async(pg_dsn, data_dir=tmp_path / "a", primary_schema=pg_schema) as s:
            results = await asyncio.gather(*(s.set("c", f"k{i}", {"i": i}) for i in range(20)))
            assert {r.tier for r in results} == {"primary"}
            rec = await s.get("c", "k3")
            assert rec is not None and rec.value == {"i": 3} and rec.source == "primary"
            await s.delete("c", "k0")
            page = await s.list("c", limit=5)
            assert [r.key for r in page] == ["k1", "k10", "k11", "k12", "k13"]
            bulk = await s.set_many("bulk", [("b1", 1), ("b2", 2)])
            assert [r.tier for r in bulk] == ["local", "local"]
            report = await s.sync_now()
            assert report.remaining == 0
            assert (await s.sync_status())["outbox"]["depth"] == 0
            assert await s.conflicts() == []
            assert await s.dead_letters() == []
            return await s.health()

    health = asyncio.run(scenario())
    assert health["primary"]["state"] == "healthy"
    assert len(primary_rows(pg, pg_schema)) == 21


def test_await_or_async_with(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await hybridstore.open_async(data_dir=tmp_path / "a", background=False)
        await store.set("c", "k", 1)
        await store.aclose()
        await store.aclose()  # idempotent
        async with hybridstore.open_async(data_dir=tmp_path / "a", background=False) as again:
            rec = await again.get("c", "k")
            assert rec is not None and rec.value == 1
        with pytest.raises(ClosedError):
            await again.get("c", "k")
        hybridstore.open(data_dir=tmp_path / "a", background=False).close()  # the data directory was released

    asyncio.run(scenario())


def test_async_errors_are_the_same(tmp_path: Path) -> None:
    async def scenario() -> None:
        s = await hybridstore.open_async(data_dir=tmp_path / "b")
        with pytest.raises(hybridstore.ValidationError):
            await s.set("bad name", "k", 1)
        with pytest.raises(hybridstore.ValidationError):
            await s.set_many("c", [("ok", 1), ("", 2)])
        await s.close()
        with pytest.raises(ClosedError):
            await s.get("c", "k")
        with pytest.raises(ClosedError):
            await s.backups.list_backups()
        with pytest.raises(ConfigError, match="max_workers"):
            hybridstore.open_async(data_dir=tmp_path / "c", max_workers=0)
        assert not (tmp_path / "c").exists(), "a bad pool size fails before the data directory is touched"

    asyncio.run(scenario())


class NoDefaultExecutor(ThreadPoolExecutor):
    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the event loop's default executor was used")


def threads_of(obj: Any, name: str, seen: list[str]) -> None:
    """Wrap ``obj.name`` (an instance attribute shadows the method) to record which thread runs it."""
    original = getattr(obj, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(*args, **kwargs)

    setattr(obj, name, recorded)


def test_own_bounded_named_pool_shut_down_on_aclose(tmp_path: Path) -> None:
    state = {"running": 0, "peak": 0}
    lock = threading.Lock()
    release = threading.Event()
    workers: set[threading.Thread] = set()

    def slow_health() -> dict[str, Any]:
        with lock:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
            workers.add(threading.current_thread())
        release.wait(10)
        with lock:
            state["running"] -= 1
        return {"slow": True}

    async def scenario() -> None:
        asyncio.get_running_loop().set_default_executor(NoDefaultExecutor())
        s = await hybridstore.open_async(data_dir=tmp_path / "a", background=False, max_workers=2)
        assert s.max_workers == 2
        s.sync_store.health = slow_health  # type: ignore[method-assign]
        calls = [asyncio.create_task(s.health()) for _ in range(5)]
        for _ in range(500):
            if state["running"] == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # time for a third call to start, were the pool not bounded
        assert state["running"] == 2
        other = asyncio.create_task(s.get("c", "k"))
        await asyncio.sleep(0.1)
        assert not other.done(), "the pool is full: further calls wait for a worker"
        release.set()
        assert await asyncio.gather(*calls) == [{"slow": True}] * 5
        assert await other is None
        assert state["peak"] == 2
        assert {t.name.rsplit("_", 1)[0] for t in workers} == {f"hybridstore-async-{s.node_id}"}
        assert threading.current_thread() not in workers
        await s.aclose()
        assert not any(t.is_alive() for t in workers), "aclose() shuts the pool down"
        with pytest.raises(ClosedError):
            await s.health()

    asyncio.run(scenario())


def test_services_run_in_the_pool(tmp_path: Path) -> None:
    """backups, recovery and metrics: their blocking methods are awaited, run in the store's threads; the
    in-memory views stay plain calls. No call uses the loop's default executor."""

    async def scenario() -> None:
        asyncio.get_running_loop().set_default_executor(NoDefaultExecutor())
        async with hybridstore.open_async(data_dir=tmp_path / "d", background=False) as s:
            seen: list[str] = []
            threads_of(s.sync_store.recovery, "check", seen)
            threads_of(s.sync_store.metrics, "prometheus_text", seen)
            await s.set("c", "k", 1)
            await s.set_many("c", [("k2", 2)])
            assert (await s.recovery.get_health_status(refresh=True))["overall"] == "healthy"
            assert s.recovery.last_status() is not None
            assert s.recovery.alerts(active=True) == []
            assert isinstance(s.recovery.events(), list)
            assert await s.recovery.sync_counts() == {"dead_letters": 0, "unresolved_conflicts": None}
            s.recovery.thresholds.conflicts_alert_at = 5
            assert s.sync_store.recovery.thresholds.conflicts_alert_at == 5
            text = await s.metrics.prometheus_text()
            assert 'hybridstore_op_seconds_count{op="set",tier="local"} 1.0' in text
            assert (await s.metrics.data())["records"] == {"c": 2}
            assert s.metrics.op_stats()[("set_many", "local")][0][-1] == 1

            info = await s.backups.create_manual_backup("async")
            assert [b.id for b in await s.backups.list_backups()] == [info.id]
            assert (await s.backups.verify_backup(info.id)).records == 2
            config = await s.backups.update_config(max_backups=3)
            assert config.max_backups == 3 and (await s.backups.get_config()).max_backups == 3
            records = [r async for r in s.backups.read_records(info.id) if r[0] == "collection"]
            assert sorted(r[2][0] for r in records) == ["k", "k2"]
            async for _ in s.backups.read_records(info.id):
                break  # stopping early closes the backup file (the pool shuts down cleanly below)
            assert (await s.backups.stats())["count"] == 1
            assert seen and all(name.startswith("hybridstore-async-") for name in seen), seen

    asyncio.run(scenario())


def test_cancelled_open_releases_the_data_directory(tmp_path: Path) -> None:
    async def scenario() -> None:
        opening = asyncio.create_task(hybridstore.open_async(data_dir=tmp_path / "a", background=False).__aenter__())
        await asyncio.sleep(0)  # the opening thread has started
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening

    asyncio.run(scenario())
    deadline = time.monotonic() + 10
    while True:  # the store opened for nobody is closed by itself
        try:
            hybridstore.open(data_dir=tmp_path / "a", background=False).close()
            break
        except StoreLockedError:
            assert time.monotonic() < deadline, "the abandoned store still holds the data directory"
            time.sleep(0.05)
