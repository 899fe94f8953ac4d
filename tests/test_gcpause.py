"""`paused_gc`: no cycle collection inside, the collector's state restored after, across threads and errors."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from hybridstore.gcpause import paused_gc

from .fix_db import StoreFactory


@pytest.fixture(autouse=True)
def collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_no_collection_inside_and_enabled_again_after() -> None:
    before = gc.get_stats()[0]["collections"]
    with paused_gc():
        assert not gc.isenabled()
        junk = [(i, str(i)) for i in range(50_000)]  # would trigger dozens of young collections
        del junk
        assert gc.get_stats()[0]["collections"] == before
    assert gc.isenabled()


def test_an_error_inside_still_enables_it() -> None:
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_the_application_turned_off_stays_off() -> None:
    gc.disable()
    with paused_gc():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_overlapping_pauses_of_two_threads_end_with_the_last() -> None:
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        with paused_gc():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with paused_gc():
        thread.start()
        assert inside.wait(10)
    assert not gc.isenabled(), "the other thread's pause is still on"
    release.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_drain_leaves_the_collector_as_it_found_it(make_store: StoreFactory) -> None:
    store = make_store("a", write_mode="local_first", background=False)
    for i in range(3000):
        store.set("c", f"k{i}", i)
    young = gc.get_stats()[0]["collections"]
    report = store.node.replayer.drain()
    assert (report.pushed, report.remaining) == (3000, 0)
    assert gc.isenabled()
    # Unpaused, this drain runs about 21 young collections (measured); paused, about 7 (between its batches).
    assert gc.get_stats()[0]["collections"] - young < 12
