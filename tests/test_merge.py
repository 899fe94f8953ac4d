"""Properties of the conflict strategies: the 3-way merge, and last_wins determinism on the real primary."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridstore.merge import MISSING, merge3
from hybridstore.model import Op, new_op_id
from hybridstore.tiers.primary import PrimaryTier

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b", ""]), st.just(1.0))
values = st.recursive(scalars, lambda inner: st.dictionaries(st.sampled_from("xyz"), inner, max_size=3), max_leaves=6)
objects = st.dictionaries(st.sampled_from("abcdef"), values, max_size=6)


def edit(base: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """A side's version of ``base``: some fields changed, some removed, some added."""
    out = dict(base)
    for name in data.draw(st.lists(st.sampled_from("abcdefg"), max_size=4, unique=True)):
        if name in out and data.draw(st.booleans()):
            del out[name]
        else:
            out[name] = data.draw(values)
    return out


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and type(a) is type(b)


@given(objects, st.data(), st.booleans())
def test_merge_does_not_depend_on_which_side_is_local(base: dict[str, Any], data: st.DataObject, newer: bool) -> None:
    a, b = edit(base, data), edit(base, data)
    assert same(merge3(base, a, b, local_newer=newer), merge3(base, b, a, local_newer=not newer))


@given(objects, st.data(), st.booleans())
def test_merge_keeps_every_change_made_on_one_side_only(base: dict[str, Any], data: st.DataObject, newer: bool) -> None:
    local, remote = edit(base, data), edit(base, data)
    merged = merge3(base, local, remote, local_newer=newer)
    for name in set(base) | set(local) | set(remote):
        b, x, y = (d.get(name, MISSING) for d in (base, local, remote))
        changed_here = not same(x, b) if x is not MISSING and b is not MISSING else x is not b
        changed_there = not same(y, b) if y is not MISSING and b is not MISSING else y is not b
        if changed_here and not changed_there:
            if x is MISSING:
                assert name not in merged, f"{name} was removed on one side only"
            else:
                assert same(merged[name], x), f"{name} was changed on one side only"
        if not changed_here and not changed_there and b is not MISSING:
            assert same(merged[name], b)


@given(objects, st.data())
def test_merge_with_an_unchanged_side_is_the_other_side(base: dict[str, Any], data: st.DataObject) -> None:
    other = edit(base, data)
    assert same(merge3(base, base, other, local_newer=True), other)
    assert same(merge3(base, other, base, local_newer=False), other)


def test_merge_rules_by_example() -> None:
    base = {"qty": 1, "addr": {"city": "Paris", "zip": "75001"}, "tags": ["a"]}
    local = {"qty": 2, "addr": {"city": "Lyon", "zip": "75001"}, "tags": ["a"]}
    remote = {"qty": 3, "addr": {"city": "Paris", "zip": "69001"}, "tags": ["a", "b"], "gift": True}
    assert merge3(base, local, remote, local_newer=True) == {
        "qty": 2,  # both changed: the newer side
        "addr": {"city": "Lyon", "zip": "69001"},  # nested objects merge field by field
        "tags": ["a", "b"],  # arrays are values: changed on one side only
        "gift": True,
    }
    assert merge3(base, MISSING, remote, local_newer=True) == remote, "an edit wins over a concurrent delete"
    assert merge3(base, MISSING, base, local_newer=False) is MISSING, "a delete of an unchanged record stands"
    assert merge3({"n": 1}, {"n": True}, {"n": 1}, local_newer=False) == {"n": True}, "true is not 1"


@pytest.fixture
def primary(pg_dsn: str, pg_schema: str) -> Iterator[PrimaryTier]:
    tier = PrimaryTier(pg_dsn, schema=pg_schema)
    yield tier
    tier.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 50), min_size=2, max_size=5, unique=True), st.randoms(use_true_random=False))
def test_last_wins_picks_the_same_winner_in_any_order(primary: PrimaryTier, walls: list[int], rng: Any) -> None:
    key = new_op_id()
    # Same wall clock for two writers: the node id at the end of the HLC breaks the tie.
    ops = [
        Op(new_op_id(), "c", key, json.dumps(f"from-{i}"), f"{w // 2:012x}.000000.node{i}", f"node{i}")
        for i, w in enumerate(walls)
    ]
    expected = max(ops, key=lambda o: o.hlc).value_json
    order = list(ops)
    rng.shuffle(order)
    for op in order:  # each node pushes its own write, in any order
        primary.put_many([op])
    row = primary.get("c", key)
    assert row is not None and row.value_json == expected
    for op in itertools.islice(order, 2):  # replays change nothing
        assert primary.put_many([op])[0].outcome == "duplicate"
    again = primary.get("c", key)
    assert again is not None and (again.value_json, again.version) == (row.value_json, row.version)
