"""The coalesced outbox: a write replaces its key's queued op while no push has read that op yet, so a key rewritten
many times during an outage is pushed once — with the merge base and base version of its first queued op — and
an op that may have reached the primary (read by a pusher, found at open, refused by the primary) is never
replaced."""

from __future__ import annotations

from typing import Any

import psycopg

from .faults import pull_until
from .fix_db import StoreFactory, primary_rows


def depth(store: Any) -> int:
    return int(store.health()["outbox"]["depth"])


def test_a_key_rewritten_during_an_outage_is_pushed_once(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    store = make_store("a", write_mode="local_first", background=False)
    store.set("c", "k", {"n": -1})
    store.sync_now()  # k is on the primary at version 1
    for i in range(1000):
        store.set("c", "k", {"n": i})
        store.set("c", f"other{i % 10}", i)
    assert depth(store) == 11, "one queued op per key"
    report = store.sync_now()
    assert report.pushed == 11 and report.remaining == 0
    rows = primary_rows(pg, pg_schema, "c")
    assert rows["k"] == ({"n": 999}, 2), "one write on top of version 1"
    assert rows["other3"] == (993, 1)


def test_coalesced_writes_keep_the_merge_base(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    merge = {"carts": "merge"}
    a = make_store("a", write_mode="local_first", background=False, conflict_strategies=merge)
    b = make_store("b", background=False, conflict_strategies=merge)
    a.set("carts", "c1", {"apples": 1, "pears": 1})
    a.sync_now()
    pull_until(b, "carts", "c1", 1)
    a.set("carts", "c1", {"apples": 2, "pears": 1})
    a.set("carts", "c1", {"apples": 3, "pears": 1, "plums": 1})  # replaces the op above, keeps its merge base
    assert depth(a) == 1
    b.set("carts", "c1", {"apples": 1, "pears": 5})
    b.sync_now()  # the primary moves on (pushed now if the write had to be queued)
    assert primary_rows(pg, pg_schema, "carts")["c1"] == ({"apples": 1, "pears": 5}, 2)
    a.sync_now()
    value, _ = primary_rows(pg, pg_schema, "carts")["c1"]
    assert value == {"apples": 3, "pears": 5, "plums": 1}, "three-way merge against the last agreed value"


def test_deletes_coalesce(make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    store = make_store("a", write_mode="local_first", background=False)
    store.set("c", "gone", 1)
    store.sync_now()
    store.set("c", "gone", 2)
    store.delete("c", "gone")
    store.set("c", "never", 1)
    store.delete("c", "never")
    store.set("c", "back", 1)
    store.delete("c", "back")
    store.set("c", "back", 3)
    assert depth(store) == 3
    assert store.get("c", "gone") is None and store.get("c", "never") is None
    assert store.sync_now().remaining == 0
    rows = pg.execute(f'SELECT key, value, version FROM "{pg_schema}".records ORDER BY key').fetchall()
    assert rows == [("back", 3, 1), ("gone", None, 2), ("never", None, 1)]


def test_an_op_read_by_the_pusher_is_never_replaced(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    store = make_store("a", write_mode="local_first", background=False)
    store.set("c", "k", 1)
    local = store.node.slot.tier
    assert local is not None
    sent = local.pending_ops(10)  # a push read it: it may reach the primary whatever happens next
    store.node.gateway.tier.put_many([op for _, op, _ in sent])  # type: ignore[union-attr]
    store.set("c", "k", 2)  # queued behind it
    store.set("c", "k", 3)  # replaces 2, which no pusher has read
    assert depth(store) == 2
    report = store.sync_now()
    assert report.duplicates == 1 and report.pushed == 1
    assert primary_rows(pg, pg_schema, "c")["k"] == (3, 2)


def test_ops_found_at_open_are_never_replaced(make_store: StoreFactory, tmp_path: Any) -> None:
    store = make_store("a", write_mode="local_first", background=False)
    store.set("c", "k", 1)
    store.close()
    again = make_store("a", write_mode="local_first", background=False)  # same data dir: a restart
    again.set("c", "k", 2)
    assert depth(again) == 2, "the first op may have been sent before the restart"
    again.set("c", "k", 3)
    assert depth(again) == 2


def test_a_refused_op_is_dead_lettered_and_the_next_write_still_lands(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    store = make_store("a", write_mode="local_first", background=False, sync_retry_attempts=2)
    store.node.gateway.tier.migrate()  # type: ignore[union-attr]
    q = f'"{pg_schema}"'
    pg.execute(
        f"CREATE FUNCTION {q}.no_negative() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF (NEW.value->>'price')::int < 0 THEN RAISE EXCEPTION 'price must not be negative'; END IF; "
        "RETURN NEW; END $$"
    )
    pg.execute(
        f"CREATE TRIGGER no_negative BEFORE INSERT OR UPDATE ON {q}.records FOR EACH ROW "
        f"EXECUTE FUNCTION {q}.no_negative()"
    )
    store.set("p", "x", {"price": -1})
    store.sync_now()  # refused once: it stays queued, and counts as sent
    store.sync_now()  # refused twice: dead-lettered
    assert [d["value"] for d in store.dead_letters()] == ['{"price":-1}'] and depth(store) == 0
    store.set("p", "y", {"price": -2})
    store.sync_now()  # refused once
    store.set("p", "y", {"price": 5})
    store.set("p", "y", {"price": 7})  # replaces 5 (never sent), not the refused op
    assert depth(store) == 2
    store.sync_now()  # pushed together, one write of the key's newest value: the refused value never lands
    assert depth(store) == 0 and len(store.dead_letters()) == 1
    store.set("p", "x", {"price": 1})
    store.sync_now()
    rows = primary_rows(pg, pg_schema, "p")
    assert rows["x"] == ({"price": 1}, 1) and rows["y"][0] == {"price": 7}


def test_coalescing_can_be_turned_off(make_store: StoreFactory) -> None:
    store = make_store("a", write_mode="local_first", background=False, coalesce=False)
    for i in range(5):
        store.set("c", "k", i)
    assert depth(store) == 5
