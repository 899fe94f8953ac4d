"""The local tier's cache of hot rows: a read of a hot key is a dict lookup, and no read ever returns a row older
than the file's — local writes, pushes settled, pulls, resyncs and rebuilds all go through the tier that owns the
cache."""

from __future__ import annotations

from pathlib import Path

import hybridstore
from hybridstore.model import StoredRow
from hybridstore.tiers.local import LocalTier
from hybridstore.tiers.local.cache import ENTRY_OVERHEAD, RowCache

from .faults import pull_until
from .fix_db import StoreFactory


def row(key: str, value: str | None, version: int = 1) -> StoredRow:
    return StoredRow("c", key, value, version, f"{version:012x}.000000.n", "n", 1.0, 1.0)


def test_cache_is_bounded_by_bytes_and_drops_the_oldest() -> None:
    cache = RowCache(max_bytes=100 * (ENTRY_OVERHEAD + 20))
    for i in range(1000):
        cache.put(("c", f"k{i:04d}"), row(f"k{i:04d}", '"' + "x" * 10 + '"'))
        assert cache.size <= cache.max_bytes
    assert 0 < len(cache) <= 100
    assert cache.lookup(("c", "k0999"))[0] and not cache.lookup(("c", "k0000"))[0], "the oldest went first"
    cache.put(("c", "huge"), row("huge", '"' + "y" * cache.max_bytes + '"'))
    assert not cache.lookup(("c", "huge"))[0], "a value bigger than a quarter of the budget is not cached"
    size = cache.size
    cache.discard(("c", "k0999"))
    assert cache.size < size and not cache.lookup(("c", "k0999"))[0]
    cache.clear()
    assert len(cache) == 0 and cache.size == 0


def test_local_reads_hit_the_cache_and_writes_invalidate_it(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "n", background=False, read_policy="local_first") as store:
        local = store.node.slot.tier
        assert isinstance(local, LocalTier)
        store.set("c", "k", {"v": 1})
        assert store.get("c", "absent") is None
        assert store.get("c", "k") is not None  # cached now
        hits = local.cache.hits
        for _ in range(10):
            got = store.get("c", "k")
            assert got is not None and got.value == {"v": 1}
            assert store.get("c", "absent") is None
        assert local.cache.hits - hits == 20
        got = store.get("c", "k")
        assert got is not None
        got.value["v"] = "changed by the caller"  # each read decodes its own copy
        assert store.get("c", "k").value == {"v": 1}  # type: ignore[union-attr]
        store.set("c", "k", {"v": 2})
        store.set("c", "absent", "now here")
        assert store.get("c", "k").value == {"v": 2}  # type: ignore[union-attr]
        assert store.get("c", "absent").value == "now here"  # type: ignore[union-attr]
        store.set_many("c", [("k", {"v": 3})])
        assert store.get("c", "k").value == {"v": 3}  # type: ignore[union-attr]
        store.delete("c", "k")
        assert store.get("c", "k") is None
        local.store_synced(row("s", '"synced"', 5))
        assert store.get("c", "s").value == "synced"  # type: ignore[union-attr]
        local.store_synced_many([row("s", '"bulk"', 6)])  # no key list: the whole cache goes
        assert store.get("c", "s").value == "bulk"  # type: ignore[union-attr]


def test_pushes_and_pulls_invalidate_the_cache(make_store: StoreFactory) -> None:
    a = make_store("a", write_mode="local_first", background=False, read_policy="local_first")
    b = make_store("b", background=False, read_policy="local_first")
    a.set("c", "k", 1)
    before = a.get("c", "k")
    assert before is not None and before.pending
    a.sync_now()  # the push settles: the row is synced now, with the primary's version
    after = a.get("c", "k")
    assert after is not None and not after.pending and after.version == 1
    pull_until(b, "c", "k", 1)
    assert b.get("c", "k").value == 1  # type: ignore[union-attr]
    a.set("c", "k", 2)
    a.sync_now()
    pull_until(b, "c", "k", 2)
    got = b.get("c", "k")
    assert got is not None and (got.value, got.version) == (2, 2)
    b.sync_now(full=True)  # a full resync: begin/end clear the cache
    assert b.get("c", "k").value == 2  # type: ignore[union-attr]


def test_a_local_write_caches_exactly_the_row_it_stored(tmp_path: Path) -> None:
    """A fresh write puts the row it wrote in the cache (the next read needs no SELECT); that row is the one in
    the file, column for column — the version of a key the node held already included."""
    with hybridstore.open(data_dir=tmp_path / "n", background=False, read_policy="local_first") as store:
        local = store.node.slot.tier
        assert isinstance(local, LocalTier)
        local.store_synced(row("held", '"from the primary"', 7))
        store.set("c", "new", {"v": 1})
        store.set("c", "held", {"v": 2})
        store.set("c", "new", {"v": 3})  # a rewrite of a pending key keeps its version too
        misses = local.cache.misses
        for key, value, version in (("new", {"v": 3}, 0), ("held", {"v": 2}, 7)):
            cached = local.cache.rows[("c", key)]
            local.cache.discard(("c", key))
            assert cached == local.get("c", key), "the cached row is the stored one"
            assert cached is not None and cached.version == version and cached.synced_at is None
            got = store.get("c", key)
            assert got is not None and (got.value, got.version, got.pending) == (value, version, True)
        assert local.cache.misses - misses == 2, "only the two reads after the discards went to SQLite"
