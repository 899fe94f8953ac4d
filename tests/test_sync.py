"""Sync engine against the real PostgreSQL: change feed, pull, conflicts and their strategies, dead letters."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore import ConflictError, HybridStore, ValidationError

from .faults import refuse_poison, wait_for, wall_clock_past
from .fix_db import StoreFactory, primary_rows
from .fix_proxy import Proxy


def local_value(store: HybridStore, collection: str, key: str) -> Any:
    assert store.node.slot.tier is not None
    row = store.node.slot.tier.get(collection, key)
    return None if row is None or row.value_json is None else row.to_record("local").value


def settle(*stores: HybridStore, rounds: int = 6, timeout: float = 20.0) -> None:
    """Push and pull on every node until nothing moves (the order nodes sync in is part of the test). A pull
    held back by a transaction still running elsewhere on the server (the feed never reads past it) is not
    "nothing moved": wait for it."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < rounds:
        moved = 0
        for store in stores:
            report = store.sync_now()
            moved += report.pushed + report.pulled + report.superseded + report.conflicts + report.remaining
        held = any(s.node.puller is not None and s.node.puller.held_back for s in stores)
        if not moved and not held:
            return
        quiet += 0 if held else 1
        if time.monotonic() > deadline:
            break
        if held:
            time.sleep(0.02)
    raise AssertionError("nodes did not settle")


# -- change feed -----------------------------------------------------------------------------------------------


def raw_write(conn: psycopg.Connection[Any], schema: str, key: str, n: int) -> None:
    conn.execute(
        f'INSERT INTO "{schema}".records AS r (collection, key, value, version, hlc, origin) '
        "VALUES ('feed', %s, %s::jsonb, 1, %s, 'writer') ON CONFLICT (collection, key) DO UPDATE "
        "SET value = EXCLUDED.value, version = r.version + 1, hlc = EXCLUDED.hlc, stamp = pg_current_xact_id()",
        (key, f'{{"n": {n}}}', f"{n:012x}.000000.writer"),
    )


def naive_changes(conn: psycopg.Connection[Any], schema: str, after: int) -> list[tuple[int, str, int]]:
    """What a plain sequence cursor reads: everything committed with a higher stamp, no snapshot bound."""
    return conn.execute(
        f'SELECT stamp::text::bigint, key, version FROM "{schema}".records WHERE stamp > %s::text::xid8 ORDER BY stamp',
        (str(after),),
    ).fetchall()


def test_feed_never_misses_late_commits(make_store: StoreFactory, pg_dsn: str, pg_schema: str) -> None:
    node = make_store("puller", pull_interval=0.05)
    node.set("feed", "seed", 0)  # creates the schema
    # Deterministic case: T1 takes its stamp first but commits after T2.
    with (
        psycopg.connect(pg_dsn) as t1,
        psycopg.connect(pg_dsn, autocommit=True) as t2,
        psycopg.connect(pg_dsn, autocommit=True) as reader,
    ):
        base = naive_changes(reader, pg_schema, 0)[-1][0]
        raw_write(t1, pg_schema, "late", 1)  # T1 open, holding the smaller stamp
        raw_write(t2, pg_schema, "early", 2)
        seen = naive_changes(reader, pg_schema, base)
        assert [k for _, k, _ in seen] == ["early"]
        naive_cursor = seen[-1][0]
        node.sync_now()
        assert local_value(node, "feed", "early") is None, "the feed must not read past a running transaction"
        t1.commit()
        assert naive_changes(reader, pg_schema, naive_cursor) == [], "a naive cursor skips the late commit"
        wait_for(lambda: local_value(node, "feed", "late") == {"n": 1} and local_value(node, "feed", "early"))

    # Many writers whose transactions commit out of stamp order, while the node pulls continuously and a naive
    # cursor reads alongside.
    stop = threading.Event()
    naive_seen: dict[str, int] = {}
    passes = [0]  # the naive reader's completed reads

    def naive_reader() -> None:
        cursor = 0
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            while not stop.is_set():
                for stamp, key, version in naive_changes(conn, pg_schema, cursor):
                    cursor = max(cursor, stamp)
                    if key.startswith("w"):
                        naive_seen[key] = max(naive_seen.get(key, 0), version)
                passes[0] += 1
                time.sleep(0.002)  # pacing: a reader polling alongside the writers

    def writer(w: int) -> None:
        rng = random.Random(w)
        with psycopg.connect(pg_dsn) as conn:
            for n in range(40):
                raw_write(conn, pg_schema, f"w{w}-{n % 10}", w * 1000 + n)
                time.sleep(rng.uniform(0, 0.03))  # hold the transaction open while others commit
                conn.commit()

    reader = threading.Thread(target=naive_reader)
    reader.start()
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    # Every write has committed: let the naive reader finish a read that started after that, so what it missed
    # is what a sequence cursor skips, not what it had no time to read.
    seen_at_join = passes[0]
    wait_for(lambda: passes[0] >= seen_at_join + 2)
    stop.set()
    reader.join()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        final = dict(
            conn.execute(
                f'SELECT key, version FROM "{pg_schema}".records WHERE collection = %s AND key LIKE %s', ("feed", "w%")
            ).fetchall()
        )
    assert len(final) == 80

    def node_has_all() -> bool:
        assert node.node.slot.tier is not None
        return all(
            (row := node.node.slot.tier.get("feed", k)) is not None and row.version == v for k, v in final.items()
        )

    wait_for(node_has_all, timeout=30)
    missed = {k for k, v in final.items() if naive_seen.get(k, 0) < v}
    assert missed, "the naive cursor should have missed some late commits (the test would not show anything)"


def test_notification_wakes_other_nodes(make_store: StoreFactory) -> None:
    a = make_store("a")
    b = make_store("b", pull_interval=60.0)  # polls only every minute: only a notification can be this fast
    a.set("c", "warm", 1)
    wait_for(lambda: b.node.puller is not None and b.node.puller.listening, timeout=10)
    lags = []
    for i in range(20):
        start = time.perf_counter()
        a.set("c", "k", i)
        while local_value(b, "c", "k") != i:
            assert time.perf_counter() - start < 5, "node b did not see the write"
            time.sleep(0.0005)  # the lag is what is measured: a fine poll, in real time
        lags.append(time.perf_counter() - start)
    assert sorted(lags)[10] < 1.0, f"median cross-node lag {sorted(lags)[10]:.3f}s"
    assert b.sync_status()["listening"] is True


def test_pulled_change_does_not_override_pending_local_write(make_store: StoreFactory) -> None:
    a = make_store("a")
    b = make_store("b", write_mode="local_first", background=False)  # b's writes wait in its outbox
    a.set("c", "k", "a1")
    settle(b)
    assert local_value(b, "c", "k") == "a1"
    offline = b.set("c", "k", "b-offline")
    assert offline.queued
    wall_clock_past(offline.hlc)
    assert a.set("c", "k", "a2").hlc > offline.hlc  # a later millisecond: a2's HLC is the newer one
    assert b.node.puller is not None
    assert b.node.puller.pull() == 0
    assert local_value(b, "c", "k") == "b-offline", "a pending local write is never overwritten by a pull"
    settle(b, a)
    assert local_value(b, "c", "k") == local_value(a, "c", "k") == "a2"  # written last: the newer HLC wins


def test_full_resync_rebuilds_local_and_keeps_pending(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    node = make_store("n", write_mode="local_first", background=False)
    for i in range(50):
        node.set("c", f"k{i:02d}", i)
    settle(node)
    pg.execute(f"DELETE FROM \"{pg_schema}\".records WHERE key IN ('k00', 'k01')")  # gone behind our back
    pg.execute(f"UPDATE \"{pg_schema}\".records SET value = '\"admin\"', version = version + 1 WHERE key = 'k02'")
    node.set("c", "k03", "pending")  # queued, not pushed yet (no background thread)
    node.set("c", "k00", "pending-too")
    assert node.node.slot.tier is not None
    calls: list[tuple[int, int | None]] = []
    report = node.node.replayer.drain(max_batches=0)  # nothing pushed: the resync must keep the pending ops
    assert report.remaining == 2
    assert node.node.puller is not None
    node.node.puller.pull(full=True, progress=lambda done, total: calls.append((done, total)))
    assert local_value(node, "c", "k01") is None, "a row gone from the primary is dropped locally"
    assert local_value(node, "c", "k02") == "admin"
    assert local_value(node, "c", "k03") == "pending" and local_value(node, "c", "k00") == "pending-too"
    assert calls and calls[-1] == (48, 48)
    report = node.sync_now(full=True)
    assert report.pushed == 2 and report.remaining == 0
    assert primary_rows(pg, pg_schema)["k03"][0] == "pending"


# -- conflicts ---------------------------------------------------------------------------------------------------


@pytest.fixture
def three(make_store: StoreFactory, pg_dsn: str) -> Iterator[tuple[list[HybridStore], list[Proxy]]]:
    proxies = [Proxy("127.0.0.1", 5432) for _ in range(3)]
    strategies = {"lw": "last_wins", "carts": "merge", "orders": "manual"}
    stores = [
        make_store(
            name,
            primary=p.url(pg_dsn),
            primary_timeout=0.5,
            background=False,
            conflict_strategies=strategies,
        )
        for name, p in zip("abc", proxies, strict=True)
    ]
    yield stores, proxies
    for p in proxies:
        p.close()


def test_three_nodes_converge_under_every_strategy(
    three: tuple[list[HybridStore], list[Proxy]], pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    stores, proxies = three
    a, b, c = stores
    a.set("carts", "cart1", {"items": {"apple": 1}, "note": "", "owner": "x"})
    a.set("orders", "o1", {"status": "new"})
    a.set("lw", "k", "start")
    settle(a, b, c)
    assert all(local_value(s, "carts", "cart1") == {"items": {"apple": 1}, "note": "", "owner": "x"} for s in stores)

    for p in proxies:
        p.cut()
    acked: dict[str, dict[str, Any]] = {}
    for i, (store, name) in enumerate(zip(stores, "abc", strict=True)):
        if acked:
            wall_clock_past(max(r.hlc for written in acked.values() for r in written.values()))  # c writes last
        acked[name] = {
            "lw": store.set("lw", "k", f"from-{name}"),
            "cart": store.set(
                "carts",
                "cart1",
                {"items": {"apple": 1, f"item-{name}": i + 1}, "note": f"by {name}", "owner": "x"},
            ),
            "order": store.set("orders", "o1", {"status": f"set by {name}"}),
            "own": store.set("lw", f"only-{name}", name),
        }
        assert all(r.queued for r in acked[name].values())
    for p in proxies:
        p.restore()
    # Sync in an order that is not the write order.
    settle(b, c, a)
    settle(a, b, c)

    # last_wins: the newest HLC, whatever the push order.
    winner = max(acked.values(), key=lambda r: r["lw"].hlc)
    expected_lw = "from-" + next(n for n, r in acked.items() if r is winner)
    # merge: every side's own item survives; the field all three changed goes to the newest HLC (c).
    expected_cart = {"items": {"apple": 1, "item-a": 1, "item-b": 2, "item-c": 3}, "note": "by c", "owner": "x"}
    rows = primary_rows(pg, pg_schema)
    assert rows["k"][0] == expected_lw and expected_lw == "from-c"
    assert rows["cart1"][0] == expected_cart
    for s in stores:
        assert local_value(s, "lw", "k") == expected_lw
        assert local_value(s, "carts", "cart1") == expected_cart
        for name in "abc":
            assert local_value(s, "lw", f"only-{name}") == name, "nothing acknowledged is lost"

    # manual: the first push (b) applied; a's and c's writes wait in the queue, once each.
    order_now = rows["o1"][0]
    assert order_now == {"status": "set by b"}
    open_conflicts = b.conflicts(status="open")
    assert sorted(k.local["status"] for k in open_conflicts) == ["set by a", "set by c"]
    assert all(k.key == "o1" and k.strategy == "manual" and k.base == {"status": "new"} for k in open_conflicts)
    assert all(k.remote == {"status": "set by b"} for k in open_conflicts)
    assert all(local_value(s, "orders", "o1") == {"status": "set by b"} for s in stores), "keeps the primary's"
    settle(a, b, c)
    assert len(a.conflicts(status="open")) == 2, "no conflict is recorded twice"

    by_origin = {k.local["status"]: k for k in open_conflicts}
    result = c.resolve_conflict(by_origin["set by c"].id, choice="local", actor="alice")
    assert result is not None and result.tier == "primary"
    assert a.resolve_conflict(by_origin["set by a"].id, choice="remote", actor="bob") is None
    with pytest.raises(ConflictError):
        a.resolve_conflict(by_origin["set by a"].id, choice="local")
    with pytest.raises(ValidationError):
        a.resolve_conflict(by_origin["set by a"].id, choice="mine")  # type: ignore[arg-type]
    settle(a, b, c)
    assert primary_rows(pg, pg_schema)["o1"][0] == {"status": "set by c"}
    assert all(local_value(s, "orders", "o1") == {"status": "set by c"} for s in stores)
    assert a.conflicts(status="open") == []

    # Every resolution is audited: who, when, what.
    audit = pg.execute(f'SELECT actor, action, target FROM "{pg_schema}".audit_log ORDER BY id').fetchall()
    assert ("alice", "conflict.resolved", "orders/o1") in audit and ("bob", "conflict.resolved", "orders/o1") in audit
    assert ("system:merge", "conflict.resolved", "carts/cart1") in audit
    assert ("system:last_wins", "conflict.resolved", "lw/k") in audit
    status = a.sync_status(refresh=True)
    assert status["conflicts"]["manual"] == {"resolved": 2}
    assert status["conflicts"]["last_wins"]["resolved"] == 2
    assert status["conflicts"]["merge"]["resolved"] == 2


def test_custom_resolver_and_merge_of_deletes(make_store: StoreFactory, proxy: Proxy, pg_dsn: str) -> None:
    def add_counts(base: Any, local: Any, remote: Any) -> Any:
        b = (base or {}).get("n", 0)
        return {"n": (local or {}).get("n", 0) + (remote or {}).get("n", 0) - b}

    opts: dict[str, Any] = {"conflict_strategies": {"counters": add_counts, "carts": "merge"}, "background": False}
    a = make_store("a", **opts)
    b = make_store("b", primary=proxy.url(pg_dsn), primary_timeout=0.5, **opts)
    a.set("counters", "hits", {"n": 10})
    a.set("carts", "gone", {"x": 1})
    a.set("carts", "kept", {"x": 1})
    settle(a, b)
    proxy.cut()
    b.set("counters", "hits", {"n": 13})  # +3 offline
    b.delete("carts", "gone")
    b.delete("carts", "kept")
    a.set("counters", "hits", {"n": 15})  # +5 meanwhile
    a.set("carts", "kept", {"x": 2})  # edited while b deleted it
    proxy.restore()
    settle(b, a)
    assert local_value(a, "counters", "hits") == local_value(b, "counters", "hits") == {"n": 18}
    assert local_value(b, "carts", "gone") is None, "a delete of an unchanged record stands"
    assert local_value(b, "carts", "kept") == {"x": 2}, "an edit wins over a concurrent delete"


def test_poison_op_goes_to_dead_letters_without_blocking(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    node = make_store("n", write_mode="local_first", background=False, sync_retry_attempts=3)
    node.set("c", "before", 0)
    node.sync_now()
    refuse_poison(pg, pg_schema)
    node.set("c", "p", {"poison": True})
    for i in range(30):
        node.set("c", f"k{i}", i)
    first = node.sync_now()
    rows = primary_rows(pg, pg_schema)
    assert all(rows[f"k{i}"][0] == i for i in range(30)), "other keys are not blocked"
    assert "p" not in rows and first.failed >= 1 and first.pushed == 30
    assert node.dead_letters() == []
    assert local_value(node, "c", "p") == {"poison": True}, "still pending, still readable"
    node.sync_now()
    assert node.dead_letters() == []
    node.sync_now()  # third rejection
    letters = node.dead_letters()
    assert len(letters) == 1 and letters[0]["key"] == "p" and '"poison"' in letters[0]["value"]
    assert "poison value refused" in letters[0]["error"] and letters[0]["attempts"] == 3
    assert local_value(node, "c", "p") is None, "the key is back to what the primary holds (nothing)"
    status = node.sync_status()
    assert status["dead_letters"] == 1 and status["outbox"]["depth"] == 0 and status["state"] == "error"
    node.set("c", "p", {"fine": 1})
    node.sync_now()
    assert primary_rows(pg, pg_schema)["p"][0] == {"fine": 1}

    # retry: a new write of the same value; still refused -> dead again after three more pushes
    node.retry_dead_letter(letters[0]["id"])
    for _ in range(3):
        node.sync_now()
    again = node.dead_letters()
    assert len(again) == 1 and again[0]["id"] != letters[0]["id"]
    pg.execute(f'DROP TRIGGER no_poison ON "{pg_schema}".records')
    node.retry_dead_letter(again[0]["id"])
    node.sync_now()
    assert primary_rows(pg, pg_schema)["p"][0] == {"poison": True}
    node.set("c", "p2", {"poison": 2})
    assert node.dead_letters() == []
    with pytest.raises(ValidationError):
        node.discard_dead_letter(12345)


def test_outage_in_the_middle_of_a_push_batch(
    make_store: StoreFactory, proxy: Proxy, pg_dsn: str, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    node = make_store(
        "n",
        primary=proxy.url(pg_dsn),
        write_mode="local_first",
        background=False,
        primary_timeout=1.0,
        batch_size=500,
        coalesce=False,
    )
    node.set("c", "warm", 0)
    node.sync_now()
    writes: dict[str, int] = {}
    final: dict[str, int] = {}
    for i in range(12_000):
        key = f"k{i % 3000:04d}"
        node.set("c", key, i)
        writes[key] = writes.get(key, 0) + 1
        final[key] = i
    done = threading.Event()

    def cut_mid_drain() -> None:
        ledger = f'SELECT coalesce(sum(version), 0) FROM "{pg_schema}".records'

        def applied() -> int:
            row = pg.execute(ledger).fetchone()
            return 0 if row is None else int(row[0])

        while not done.is_set():
            if applied() > 1500:
                proxy.cut()
                try:  # the outage lasts until it has hit the batch in flight (or the drain is over: the test fails)
                    wait_for(lambda: node.node.replayer.totals.failed > 0 or done.is_set())
                finally:
                    proxy.restore()
                return
            time.sleep(0.001)  # a tight poll of the ledger: the cut must land while a batch is in flight

    cutter = threading.Thread(target=cut_mid_drain)
    cutter.start()
    node.sync_now()
    done.set()
    cutter.join()
    wait_for(lambda: node.sync_now().remaining == 0, timeout=60)  # each try probes the primary at once
    assert node.sync_status()["outbox"]["depth"] == 0
    rows = primary_rows(pg, pg_schema, "c")
    assert {k: v for k, (v, _) in rows.items() if k != "warm"} == final, "no loss"
    # Each op was applied once: batched ops of one key count as one version each... exactly once.
    versions = pg.execute(f'SELECT sum(version) FROM "{pg_schema}".records').fetchone()
    assert versions is not None and versions[0] == 12_001, "no op applied twice, none missing"
    assert node.node.replayer.totals.failed > 0, "the outage really hit a batch in flight"


def test_sync_status_is_plain_data(make_store: StoreFactory) -> None:
    node = make_store("n", write_mode="local_first", background=False)
    node.set("c", "k", 1)
    status = node.sync_status()
    assert status["state"] == "idle" and status["outbox"]["depth"] == 1
    node.sync_now()
    status = node.sync_status()
    assert status["outbox"] == {"depth": 0, "oldest_pending_age_s": None}
    assert status["counts"]["pushed"] == 1 and status["last_push_at"] is not None
    assert any(e["kind"] == "push" for e in status["history"])
    import json

    json.dumps(status)  # plain data, all of it


def test_embedded_store_sync_status(tmp_path: Path) -> None:
    with hybridstore.open(None, data_dir=tmp_path / "e") as store:
        store.set("c", "k", 1)
        status = store.sync_status()
        assert status["state"] == "local_only" and status["outbox"]["depth"] == 1 and status["conflicts"] is None
        with pytest.raises(hybridstore.PrimaryUnavailableError):
            store.conflicts()


@pytest.mark.parametrize("odd_key", [False, True])
def test_a_batch_arrives_whole_whichever_way_its_columns_travel(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str, odd_key: bool, monkeypatch: Any
) -> None:
    """A batch's columns travel as separated texts, or as arrays when a key holds the separator: either way every
    key arrives as written — deletes, a key written twice in the batch, values holding the separator (escaped
    in JSON) — and the node's copy ends synced at the primary's versions."""
    from hybridstore.tiers.push import PushStatements

    used: list[bool] = []
    choose = PushStatements._batch_statement

    def spy(self: PushStatements, params: tuple[Any, ...]) -> tuple[bytes, tuple[Any, ...]]:
        statement, args = choose(self, params)
        used.append(statement == self.batch_joined)
        return statement, args

    monkeypatch.setattr(PushStatements, "_batch_statement", spy)
    node = make_store("n", write_mode="local_first", background=False, coalesce=False)
    for i in range(5):
        node.set("c", f"gone{i}", i)
    node.sync_now()
    used.clear()
    odd = "odd\x1fkey" if odd_key else "plain-key"
    node.set("c", odd, {"text": "a\x1fb"})
    node.set("c", "twice", 1)
    node.set("c", "twice", 2)
    node.delete("c", "gone1")
    node.delete("c", "gone3")
    node.set("c", "gone4", "again")
    report = node.sync_now()
    assert used == [not odd_key], "the batch took the other way"
    assert report.pushed == 6 and report.remaining == 0 and report.failed == 0
    assert node.node.replayer.batch_durations[-1][0] == 6, "the batch was not applied whole (pushed op by op)"
    rows = primary_rows(pg, pg_schema, "c")
    assert rows[odd] == ({"text": "a\x1fb"}, 1)
    assert rows["twice"] == (2, 2)
    assert rows["gone4"] == ("again", 2)
    assert {"gone0", "gone2"} <= rows.keys() and not {"gone1", "gone3"} & rows.keys()
    tombstones = pg.execute(
        f'SELECT key, version FROM "{pg_schema}".records WHERE value IS NULL ORDER BY key'
    ).fetchall()
    assert tombstones == [("gone1", 2), ("gone3", 2)]
    local = node.node.slot.tier
    assert local is not None
    for key, version in ((odd, 1), ("twice", 2), ("gone4", 2), ("gone1", 2)):
        row = local.get("c", key)
        assert row is not None and row.version == version and row.synced_at is not None, key


def test_batch_size_grows_while_pushes_succeed_and_shrinks_on_timeouts(
    make_store: StoreFactory, proxy: Proxy, pg_dsn: str
) -> None:
    node = make_store(
        "n", primary=proxy.url(pg_dsn), write_mode="local_first", background=False, batch_size=50, primary_timeout=0.5
    )
    for i in range(3000):
        node.set("c", f"k{i}", i)
    node.sync_now()
    grown = node.node.replayer.batch_size
    assert grown >= 400, f"full batches kept succeeding; batch size is still {grown}"
    sizes = [b["ops"] for b in node.sync_status()["batch_durations_ms"]]
    assert sizes[0] == 50 and sizes == sorted(sizes[:-1]) + sizes[-1:] and max(sizes) >= 400
    for i in range(3000):
        node.set("c", f"k{i}", -i)
    proxy.blackhole()
    report = node.sync_now()
    assert report.failed > 0 and report.remaining == 3000
    assert node.node.replayer.batch_size == grown // 2, "a timed-out batch halves the next one"
    proxy.restore()
    node.sync_now()
    assert node.sync_status()["outbox"]["depth"] == 0


def test_write_through_logs_the_conflict_it_settles(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    a = make_store("a", pull=False)  # a does not learn about b's write: its next write is based on version 1
    b = make_store("b", pull=False)
    assert a.set("c", "k", "a1").version == 1
    rec = b.get("c", "k")  # b reads version 1 from the primary: its write is based on it
    assert rec is not None and rec.version == 1
    b2 = b.set("c", "k", "b2")
    assert b2.version == 2
    wall_clock_past(b2.hlc)
    r = a.set("c", "k", "a3")  # based on version 1, newer HLC: wins, and the conflict is logged
    assert r.hlc > b2.hlc
    assert r.tier == "primary" and r.version == 3
    assert a.set("c", "k", "a4").version == 4, "a follow-up write is no conflict"
    rows = pg.execute(
        f'SELECT strategy, status, local, remote, resolution, resolved_by FROM "{pg_schema}".conflicts'
    ).fetchall()
    assert rows == [("last_wins", "resolved", "a3", "b2", {"winner": "local"}, "system:last_wins")]
    audit = pg.execute(f'SELECT actor, action, target FROM "{pg_schema}".audit_log').fetchall()
    assert audit == [("system:last_wins", "conflict.resolved", "c/k")]
    assert a.sync_status(refresh=True)["conflicts"] == {"last_wins": {"resolved": 1}}


# -- convergence (items 12 and 13 of the data-safety issue) ----------------------------------------------------


def caught_up(store: HybridStore) -> None:
    """Pull until the feed holds nothing back: a transaction running elsewhere on the server (another test
    process) holds committed rows back for its duration."""
    puller = store.node.puller
    assert puller is not None
    wait_for(lambda: puller.pull() >= 0 and not puller.held_back, timeout=30)


def test_sync_now_waits_a_moment_for_changes_held_back_by_a_running_transaction(
    make_store: StoreFactory, pg_dsn: str
) -> None:
    """A transaction running elsewhere on the server holds the change feed back (it never reads past one): an
    explicit ``sync_now`` waits for it a moment (``HELD_PATIENCE``) instead of returning without a change committed
    before the call; a pull that would wait longer returns, bounded, and says the rows are still held back."""
    a = make_store("a", background=False)
    b = make_store("b", background=False)
    b.set("k", "seed", 0)
    a.sync_now()
    with psycopg.connect(pg_dsn) as other:  # an unrelated transaction, with an id, left open
        other.execute("SELECT pg_current_xact_id()")
        b.set("k", "x", 1)
        timer = threading.Timer(0.3, other.commit)
        timer.start()
        started = time.monotonic()
        report = a.sync_now()
        timer.join()
    assert report.pulled == 1 and local_value(a, "k", "x") == 1
    assert 0.25 < time.monotonic() - started < 10

    puller = a.node.puller
    assert puller is not None
    with psycopg.connect(pg_dsn) as other:
        other.execute("SELECT pg_current_xact_id()")
        b.set("k", "y", 2)
        slept: list[float] = []
        puller._sleep = slept.append  # no real waiting: the patience is counted in sleeps asked for
        assert puller.pull_now(patience=0.5) == 0 and puller.held_back
        assert slept and sum(slept) >= 0.5 and sum(slept[:-1]) < 0.5
    puller._sleep = time.sleep
    assert a.sync_now().pulled == 1 and local_value(a, "k", "y") == 2 and not puller.held_back


def converge(*stores: HybridStore, timeout: float = 30.0) -> None:
    """Push and pull on every node until a whole round moves nothing, fails nothing and nothing is held back."""
    deadline = time.monotonic() + timeout
    while True:
        moved = 0
        quiet = True
        for store in stores:
            report = store.sync_now()
            moved += report.pushed + report.pulled + report.superseded + report.conflicts + report.remaining
            puller = store.node.puller
            quiet = quiet and not report.errors and not report.failed and not (puller and puller.held_back)
        if not moved and quiet:
            return
        assert time.monotonic() < deadline, "nodes did not settle"
        time.sleep(0.01)  # something is held back or failing: let it pass


def test_an_older_queued_write_never_beats_a_newer_acknowledged_one(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    """last_wins: the greatest HLC wins, whatever the push order and batching. A second queued write is not a
    follow-up of the version its node learned when its first write lost."""
    # two queued writes of one key (coalescing off: as when the first was sent already)
    a = make_store("a", write_mode="local_first", background=False, batch_size=1, coalesce=False)
    b = make_store("b", background=False)
    a1 = a.set("reg", "k", {"v": "a1"})
    a2 = a.set("reg", "k", {"v": "a2"})
    wall_clock_past(a2.hlc)
    acked_b = b.set("reg", "k", {"v": "b"})
    assert a1.queued and a2.queued and acked_b.tier == "primary" and acked_b.hlc > a2.hlc
    converge(a, b)
    assert primary_rows(pg, pg_schema)["k"][0] == {"v": "b"}, "an older write overwrote a newer acknowledged one"
    assert local_value(a, "reg", "k") == local_value(b, "reg", "k") == {"v": "b"}
    # Both of a's writes lost, each logged as a resolved last_wins conflict.
    lost = pg.execute(
        f'SELECT local::text, resolution::text FROM "{pg_schema}".conflicts WHERE key = %s ORDER BY id', ("k",)
    ).fetchall()
    assert lost == [('{"v": "a1"}', '{"winner": "remote"}'), ('{"v": "a2"}', '{"winner": "remote"}')]


def test_a_newer_queued_write_still_wins_after_an_older_one_lost(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    """The other side of the rule: a1 < b < a2 by HLC, pushed one op per batch or both in one batch."""
    for batch_size, key in ((1, "one-per-batch"), (1000, "one-batch")):
        a = make_store(f"a-{key}", write_mode="local_first", background=False, batch_size=batch_size)
        b = make_store(f"b-{key}", background=False)
        a.set("reg", key, {"v": "a1"})
        wall_clock_past(a.node.clock.now())
        b_ack = b.set("reg", key, {"v": "b"})
        wall_clock_past(b_ack.hlc)
        a2 = a.set("reg", key, {"v": "a2"})
        assert a2.hlc > b_ack.hlc
        converge(a, b)
        assert primary_rows(pg, pg_schema)[key][0] == {"v": "a2"}
        assert local_value(a, "reg", key) == local_value(b, "reg", key) == {"v": "a2"}


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_a_write_queued_behind_a_merged_one_is_merged_too(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str, batch_size: int
) -> None:
    """merge: a's two queued writes (the second made on top of the first) meet b's change. The first is merged
    with it; the second, written on top of the first and not of the merge, is merged as well (its base is the first
    write), so b's field survives — pushed one op per batch (the next batch read before the first settled) or both
    in one batch. Found by the resilience tester's sync_conflicts scenario. The merged value goes out with b's stamp,
    newer than a's second write: that write is re-stamped after it, else the primary takes it for a replay of the
    merge and drops it (it failed that way whenever b's write fell in a later millisecond)."""
    opts: dict[str, Any] = {"conflict_strategies": {"carts": "merge"}, "background": False}
    a = make_store(f"a{batch_size}", write_mode="local_first", batch_size=batch_size, coalesce=False, **opts)
    b = make_store(f"b{batch_size}", **opts)
    b.set("carts", "c", {"apples": 0, "pears": 0})
    a.sync_now()
    assert local_value(a, "carts", "c") == {"apples": 0, "pears": 0}
    a.set("carts", "c", {"apples": 1, "pears": 0})
    a2 = a.set("carts", "c", {"apples": 1, "pears": 0, "plums": 2})  # made on top of the first
    wall_clock_past(a2.hlc)  # b's write is stamped after both of a's: the merged value carries b's stamp
    b.set("carts", "c", {"apples": 0, "pears": 5})  # meanwhile on the primary
    converge(a, b)
    want = {"apples": 1, "pears": 5, "plums": 2}
    assert primary_rows(pg, pg_schema)["c"][0] == want, "a write queued behind a merged one was lost or undid it"
    assert local_value(a, "carts", "c") == local_value(b, "carts", "c") == want


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_a_write_queued_behind_a_replayed_one_does_not_follow_a_newer_row(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str, batch_size: int
) -> None:
    """a's first write reached the primary but a never learned it (a push that timed out), then b wrote on top of
    it. When a pushes again, its first write is a duplicate whose row is b's now; its second write, made on top of
    its first, is not a follow-up of b's row (it would overwrite b's field): it is merged with it. Found by the
    resilience tester's sync_conflicts scenario (pushes cut mid-way, replayed)."""
    opts: dict[str, Any] = {"conflict_strategies": {"carts": "merge"}, "background": False}
    a = make_store(f"a{batch_size}", write_mode="local_first", batch_size=batch_size, coalesce=False, **opts)
    b = make_store(f"b{batch_size}", **opts)
    b.set("carts", "c", {"apples": 0, "pears": 0})
    a.sync_now()
    a.set("carts", "c", {"apples": 1, "pears": 0})
    local = a.node.slot.tier
    assert local is not None
    sent = [op for _, op, _ in local.pending_ops(10)]
    a.node.gateway.tier.put_many(sent, strategies=["merge"])  # type: ignore[union-attr]  # a never hears back
    b.sync_now()  # b pulls a's first write, then writes on top of it
    assert b.set("carts", "c", {"apples": 1, "pears": 5}).tier == "primary"
    a.set("carts", "c", {"apples": 1, "pears": 0, "plums": 2})  # made on top of a's first write
    converge(a, b)
    want = {"apples": 1, "pears": 5, "plums": 2}
    assert primary_rows(pg, pg_schema)["c"][0] == want, "a write queued behind a replayed one overwrote b's"
    assert local_value(a, "carts", "c") == local_value(b, "carts", "c") == want


def test_a_merge_that_did_not_apply_leaves_no_trace(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    """A merged value is pushed against the version it was merged with; when someone wrote in between it does not
    apply, and it must leave nothing behind: a replay mark for it would cover the conflicting op itself (still
    queued, stamped before the merge), which would then be taken for a replay and dropped. Found by the resilience
    tester's sync_conflicts scenario (three nodes merging the same keys)."""
    opts: dict[str, Any] = {"conflict_strategies": {"carts": "merge"}, "background": False}
    a = make_store("a", write_mode="local_first", **opts)
    b = make_store("b", **opts)
    b.set("carts", "c", {"x": 1})
    a.sync_now()
    a.set("carts", "c", {"x": 1, "a": 1})  # queued on top of version 1
    b.set("carts", "c", {"x": 2})
    local, tier = a.node.slot.tier, a.node.gateway.tier
    assert local is not None and tier is not None
    ((_, op, base),) = local.pending_ops(10)
    seen = tier.get("carts", "c")  # a merges with version 2 ...
    b.set("carts", "c", {"x": 3})  # ... while b writes version 3
    assert seen is not None and seen.version == 2
    merged = op._replace(op_id=str(uuid.uuid4()), value_json='{"x": 2, "a": 1}', hlc=max(op.hlc, seen.hlc))
    merged = merged._replace(base_version=seen.version)
    out = tier.push_resolution(merged, "merge", base=base, local=op.value_json, remote=seen, actor="test")
    assert out.outcome == "conflict" and out.current is not None and out.current.version == 3
    marks = pg.execute(f'SELECT count(*) FROM "{pg_schema}".settled_marks WHERE origin = %s', (a.node_id,))
    assert marks.fetchone() == (0,), "a merge that did not apply left a replay mark"
    a.sync_now()  # the queued op conflicts with version 3 and is merged with it
    assert primary_rows(pg, pg_schema)["c"][0] == {"x": 3, "a": 1}


def test_a_row_pulled_while_the_key_is_pending_is_not_lost(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exact interleaving, by hand: A's push commits v2; B writes v3; A's puller pulls v3 while the key is
    still pending (skipped, cursor moves on); only then does A settle its batch (v2). A must end at v3."""
    a = make_store("a", write_mode="local_first", background=False)
    b = make_store("b", background=False)
    a.set("c", "k", "v1")
    a.set("c", "other", 0)
    converge(a, b)
    pushed = a.set("c", "k", "v2")
    replayer = a.node.replayer
    push = replayer._put
    raced: list[str] = []

    def push_then_race(ops: Any) -> Any:
        outcomes = push(ops)  # the primary has committed v2; A has not settled it yet
        if not raced:
            wall_clock_past(pushed.hlc)
            raced.append(b.set("c", "k", "v3").hlc)
            b.set("c", "other", 1)
            caught_up(a)  # k is pending: skipped; "other" is applied and the cursor moves past both
            assert local_value(a, "c", "other") == 1 and local_value(a, "c", "k") == "v2"
        return outcomes

    monkeypatch.setattr(replayer, "_put", push_then_race)
    a.sync_now()
    assert raced, "the race ran"
    converge(a, b)
    assert primary_rows(pg, pg_schema)["k"] == ("v3", 3)
    assert local_value(a, "c", "k") == "v3", "A kept its own older value"
    assert a.node.slot.tier is not None
    row = a.node.slot.tier.get("c", "k")
    assert row is not None and row.version == 3 and row.synced_at is not None and row.hlc == raced[0]


def test_a_dead_letter_gives_way_to_a_row_pulled_while_it_was_pending(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    """A refused op ends in the dead letters and its key goes back to the primary's row: the newest one the
    node has seen, even if the feed delivered it while the key was pending (and the cursor moved past it)."""
    a = make_store("a", write_mode="local_first", background=False, sync_retry_attempts=2)
    b = make_store("b", background=False)
    a.set("c", "k", {"n": 1})
    converge(a, b)
    refuse_poison(pg, pg_schema)
    a.set("c", "k", {"poison": 1})
    b.set("c", "k", {"n": 2})
    caught_up(a)  # k is pending: the row is not adopted, the cursor moves past it
    assert local_value(a, "c", "k") == {"poison": 1}
    a.sync_now()
    a.sync_now()  # second refusal: dead letter
    assert len(a.dead_letters()) == 1
    assert local_value(a, "c", "k") == {"n": 2}, "back to a stale value"
    converge(a, b)
    assert primary_rows(pg, pg_schema)["k"][0] == local_value(a, "c", "k") == {"n": 2}


def test_a_queued_write_after_one_in_manual_conflict_waits_for_the_admin_too(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    """manual: a key's second queued write is not a follow-up of the remote value its first write conflicted
    with; it is queued for the admin as well, and the primary keeps its value."""
    opts: dict[str, Any] = {"background": False, "conflict_strategies": {"orders": "manual"}}
    # one op per batch; two queued writes of one key (coalescing off: as when the first was sent already)
    a = make_store("a", write_mode="local_first", batch_size=1, coalesce=False, **opts)
    b = make_store("b", **opts)
    b.set("orders", "o", {"s": "new"})
    caught_up(a)  # a learns version 1 (a pull: no push, so the batch size stays at 1)
    assert local_value(a, "orders", "o") == {"s": "new"}
    a.set("orders", "o", {"s": "a1"})
    a.set("orders", "o", {"s": "a2"})
    b.set("orders", "o", {"s": "b"})
    converge(a, b)
    assert primary_rows(pg, pg_schema)["o"][0] == {"s": "b"}, "a write in conflict overwrote the primary's value"
    assert local_value(a, "orders", "o") == {"s": "b"}
    assert sorted(k.local["s"] for k in a.conflicts(status="open")) == ["a1", "a2"]


def test_rows_pulled_by_the_puller_thread_during_a_push_are_not_lost(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race under the real threads: A's replayer pushes 20 keys; before its answer is back (a slow
    link), B rewrites them and A's puller thread pulls B's rows — skipped, since the keys are still pending.
    After the push settles, every key must end at B's value on A too."""
    a = make_store("a", write_mode="local_first", pull_interval=0.05)
    b = make_store("b", background=False)
    keys = [f"k{i:02d}" for i in range(20)]
    a.set_many("c", [(k, "a0") for k in keys])
    wait_for(lambda: a.sync_status()["outbox"]["depth"] == 0)
    converge(b)
    replayer = a.node.replayer
    push = replayer._put
    raced: list[int] = []

    def slow_answer(ops: Any) -> Any:
        outcomes = push(ops)  # committed on the primary; the answer is "on its way back"
        if not raced and len(ops) == len(keys):
            wall_clock_past(max(op.hlc for op in ops))
            for k in keys:
                b.set("c", k, "b")
            b.set("c", "sentinel", "b")
            # A's own puller thread pulls B's rows (the keys are pending: skipped) and moves its cursor past them.
            wait_for(lambda: local_value(a, "c", "sentinel") == "b")
            raced.append(1)
        return outcomes

    monkeypatch.setattr(replayer, "_put", slow_answer)
    a.set_many("c", [(k, "a1") for k in keys])  # one transaction, one wake-up: one batch
    wait_for(lambda: bool(raced) and a.sync_status()["outbox"]["depth"] == 0)
    converge(a, b)
    stale = [k for k in keys if local_value(a, "c", k) != "b"]
    assert stale == [], f"A kept its own older value for {len(stale)} key(s)"
    rows = primary_rows(pg, pg_schema, "c")
    assert all(rows[k][0] == "b" for k in keys)
