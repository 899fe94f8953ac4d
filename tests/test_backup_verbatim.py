"""A restore takes a value's text straight from its record line only when the validation pass proved it is the
text the store would write (`hybridstore.backup.lines.verbatim`); every other line is parsed and encoded. Both
ways give the same records, and a file changed between the two passes is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import hybridstore
from hybridstore.backup import restore
from hybridstore.backup.format import BackupReader
from hybridstore.backup.lines import cut_lines, parse, split, verbatim
from hybridstore.errors import BackupTamperedError
from hybridstore.validation import encode_value

from .backup_helpers import service
from .test_backup_lines import forge

HLC = "019ad0a1b2c3.000000.node-a"


def compact(key: str, value: Any, *, hlc: str = HLC, origin: str = "node-a", updated_at: Any = 1764500000.5) -> bytes:
    """A record line as a local backup writes it: every part in compact JSON."""
    line = json.dumps([key, value, 3, hlc, origin, updated_at], ensure_ascii=False, separators=(",", ":"))
    return line.encode() + b"\n"


PLAIN = [compact(f"k{i}", {"i": i, "name": f"n{i}", "price": i / 4, "tags": ["a", "b"]}) for i in range(20)]

# Lines a cut by position would get wrong, or whose text is not the store's canonical text.
TRICKY = {
    "quote in key": compact('a",b', {"v": 1}),
    "backslash in key": compact("a\\b", {"v": 1}),
    "comma in hlc": compact("k", {"v": 1}, hlc="019ad0a1b2c3.000000.a,b"),
    "comma in origin": compact("k", {"v": 1}, origin="x,y"),
    "text as updated_at": compact("k", {"v": 1}, updated_at="1,2,3"),
    "spaced value": b'["k",{"v": 1},3,"h","o",1.5]\n',
    "blank before value": b'["k", {"v":1},3,"h","o",1.5]\n',
    "blank after value": b'["k",{"v":1} ,3,"h","o",1.5]\n',
    "escaped character": b'["k","\\u00e9",3,"h","o",1.5]\n',
    "number spelt otherwise": b'["k",1.50,3,"h","o",1.5]\n',
    "exponent": b'["k",1E2,3,"h","o",1.5]\n',
    "large float": compact("k", 1e16),
    "duplicate member": b'["k",{"a":1,"a":2},3,"h","o",1.5]\n',
    "NUL": compact("k", "a\x00b"),
}


def cut(body: bytes, max_value_bytes: int = 1 << 20) -> bool:
    lines = split(body, "c")
    keys, texts = cut_lines(lines)
    return verbatim(parse(lines, "c"), keys, texts, max_value_bytes)


def test_compact_lines_are_taken_verbatim_and_cut_exactly() -> None:
    body = b"".join(PLAIN) + compact("é ü", {"text": "ünïcödé", "n": None, "ok": True})
    assert cut(body)
    keys, texts = cut_lines(split(body, "c"))
    assert keys[-1] == "é ü"
    for line, key, text in zip(body.decode().splitlines(), keys, texts, strict=True):
        rec = json.loads(line)
        assert key == rec[0] and text == encode_value(rec[1])


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_a_line_that_cannot_be_cut_verbatim_sends_its_chunk_the_long_way(name: str) -> None:
    assert not cut(b"".join(PLAIN) + TRICKY[name]), name


def test_values_over_the_limit_are_not_taken_verbatim() -> None:
    body = b"".join(PLAIN)
    size = max(len(encode_value(json.loads(line)[1]).encode()) for line in PLAIN)
    assert cut(body, max_value_bytes=20 * size)
    assert not cut(body, max_value_bytes=size)


@pytest.mark.parametrize("name", sorted(set(TRICKY) - {"NUL"}))
def test_both_ways_restore_the_same_records(tmp_path: Path, name: str) -> None:
    """A chunk with one tricky line (parsed and encoded) next to a compact one (cut): each record holds what
    its line says, stored as the store's canonical text."""
    bad = TRICKY[name]
    lines = [*PLAIN, bad]
    with hybridstore.open(None, data_dir=tmp_path / "node", background=False) as store:
        backups = service(store)
        tricky = backups.import_backup(forge(tmp_path / "tricky.hsb", lines))
        report = backups.restore_backup(tricky.id)
        assert report.written == len(lines)
        for line in lines:
            key, value = json.loads(line)[:2]
            assert store.get("products", key).value == value  # type: ignore[union-attr]
        bad_key, bad_value = json.loads(bad)[:2]
        local = store.node.slot.tier
        assert local is not None
        (row,) = local.get_many("products", [bad_key])
        assert row.value_json == encode_value(bad_value)


ALL = restore.Selection.of(None, None)
OTHER = [compact(f"k{i}", {"other": i}) for i in range(20)]  # the same keys as PLAIN, other values


def validate_file(path: Path) -> tuple[int, list[restore.ChunkCheck]]:
    with BackupReader(path, None) as reader:
        return restore.validate(reader, ALL, 1 << 20, None)


def apply_file(
    store: hybridstore.HybridStore,
    path: Path,
    checks: list[restore.ChunkCheck],
    report: restore.RestoreReport | None = None,
) -> restore.RestoreReport:
    """The apply pass over ``path`` with the checks of an earlier validation (of this or another file)."""
    report = report or restore.RestoreReport("x", False, True)
    with BackupReader(path, None) as reader:
        restore.apply(store.node, store.node.router, reader, ALL, report, diff_limit=10, progress=None, checks=checks)
    return report


def test_a_backup_changed_after_its_validation_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup larger than `restore.KEEP_BYTES`: the apply pass reads the file again, and a chunk whose bytes
    differ from the validated ones is refused before anything of it is written."""
    monkeypatch.setattr(restore, "KEEP_BYTES", 0)
    with hybridstore.open(None, data_dir=tmp_path / "node", background=False) as store:
        first, second = forge(tmp_path / "first.hsb", PLAIN), forge(tmp_path / "second.hsb", OTHER)
        count, checks = validate_file(first)
        assert count == len(PLAIN) and [c.verbatim for c in checks] == [True]
        report = restore.RestoreReport("x", False, True)
        with pytest.raises(BackupTamperedError, match="changed"):
            apply_file(store, second, checks, report)
        assert report.written == 0 and store.list("products").records == []
        assert apply_file(store, first, checks).written == len(PLAIN)
        assert store.get("products", "k3").value == json.loads(PLAIN[3])[1]  # type: ignore[union-attr]


def test_a_kept_backup_writes_what_was_validated(tmp_path: Path) -> None:
    """A backup within `restore.KEEP_BYTES`: the apply pass writes the records the validation pass cut and kept,
    whatever the file holds by then (it is not read again)."""
    with hybridstore.open(None, data_dir=tmp_path / "node", background=False) as store:
        first, second = forge(tmp_path / "first.hsb", PLAIN), forge(tmp_path / "second.hsb", OTHER)
        _, checks = validate_file(first)
        assert [type(c) for c in checks] == [restore.Validated]
        assert apply_file(store, second, checks).written == len(PLAIN)
        for line in PLAIN:
            key, value = json.loads(line)[:2]
            assert store.get("products", key).value == value  # type: ignore[union-attr]
