"""Bad input gets a ValidationError / ConfigError and writes nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import hybridstore
from hybridstore import ConfigError, ValidationError
from hybridstore.validation import encode_value

BAD_COLLECTIONS: list[Any] = ["", "has space", "1starts_with_digit", "x" * 65, None, 5, "semi;colon", "a/b"]
BAD_KEYS: list[Any] = ["", None, 7, "k" * 513, "nul\x00key", "\ud800lone-surrogate"]
BAD_VALUES: list[Any] = [
    {1, 2},
    object(),
    b"bytes",
    math.nan,
    {"x": math.inf},
    {"s": "nul \x00 inside"},
    "\udcff",
]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with hybridstore.open(data_dir=tmp_path / "d") as s:
        yield s


@pytest.mark.parametrize("collection", BAD_COLLECTIONS)
def test_bad_collection(store: Any, collection: Any) -> None:
    with pytest.raises(ValidationError, match="collection"):
        store.set(collection, "k", 1)
    with pytest.raises(ValidationError):
        store.get(collection, "k")
    assert store.health()["outbox"]["depth"] == 0


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_key(store: Any, key: Any) -> None:
    with pytest.raises(ValidationError, match="key"):
        store.set("c", key, 1)
    with pytest.raises(ValidationError):
        store.delete("c", key)
    assert store.health()["outbox"]["depth"] == 0


@pytest.mark.parametrize("key", ["k" * 512, "clé", "tab\tkey", "新しい", "a b"])
def test_unusual_keys_are_valid(store: Any, key: str) -> None:
    """Keys that miss the checks' fast path (not printable ASCII, or at the length limit) are checked in full."""
    store.set("c", key, 1)
    rec = store.get("c", key)
    assert rec is not None and rec.key == key and rec.value == 1


@pytest.mark.parametrize("value", BAD_VALUES, ids=lambda v: type(v).__name__)
def test_bad_value(store: Any, value: Any) -> None:
    store.set("c", "k", {"kept": True})
    with pytest.raises(ValidationError):
        store.set("c", "k", value)
    rec = store.get("c", "k")
    assert rec is not None and rec.value == {"kept": True}, "a rejected write changes nothing"
    assert store.health()["outbox"]["depth"] == 1


def test_oversized_value(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "d", max_value_bytes=1000) as store:
        store.set("c", "k", "x" * 990)
        with pytest.raises(ValidationError, match="limit is 1000"):
            store.set("c", "k", "x" * 1000)
        rec = store.get("c", "k")
        assert rec is not None and len(rec.value) == 990


def test_literal_backslash_u0000_text_is_allowed() -> None:
    assert encode_value("\\u0000") == '"\\\\u0000"'


def test_values_round_trip(store: Any) -> None:
    values: list[Any] = [None, True, 0, -1.5, "", "é€😀", [], {}, {"nested": {"list": [1, {"a": None}]}}]
    for i, value in enumerate(values):
        store.set("c", f"k{i}", value)
    for i, value in enumerate(values):
        rec = store.get("c", f"k{i}")
        assert rec is not None and rec.value == value


@pytest.mark.parametrize(
    "url",
    ["mysql://root@localhost/db", "postgresql://host:notaport/db", "host=x port=", "   "],
)
def test_malformed_primary_url(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError):
        hybridstore.open(url, data_dir=tmp_path / "d")
    # the data dir lock was released: the directory can be opened again
    hybridstore.open(data_dir=tmp_path / "d").close()


@pytest.mark.parametrize(
    "options",
    [
        {"write_mode": "sometimes"},
        {"read_policy": "x"},
        {"primary_timeout": 0},
        {"batch_size": 0},
        {"no_such_option": 1},
        {"synchronous": "MAYBE"},
    ],
)
def test_bad_options(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        hybridstore.open(data_dir=tmp_path / "d", **options)


def test_bad_node_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node id"):
        hybridstore.open(data_dir=tmp_path / "d", node_id="no spaces")


def test_data_dir_in_use(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "d"), pytest.raises(hybridstore.StoreLockedError):
        hybridstore.open(data_dir=tmp_path / "d")
