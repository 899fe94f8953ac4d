"""Record lines a restore refuses: a backup whose checksums are right (forged, unencrypted) but whose lines are
not one well-formed record each is refused before anything is written."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

import hybridstore
from hybridstore.backup.crypto import ChunkSealer
from hybridstore.backup.format import BodyWriter, assemble, check_written
from hybridstore.errors import BackupError, BackupTamperedError, ValidationError

from .backup_helpers import flip, service


def forge(path: Path, lines: list[bytes]) -> Path:
    """An unencrypted zstd backup of one collection ``products`` holding exactly ``lines`` (its manifest's
    counts and SHA-256 computed from them, so only the lines' content can be wrong)."""
    backup_id = "ab" * 16
    body = path.with_suffix(".body")
    with open(body, "wb") as out:
        writer = BodyWriter(out, backup_id=bytes.fromhex(backup_id), sealer=ChunkSealer(None), zstd_level=3)
        writer.add(("collection", "products"), b"".join(lines))
        stats = writer.finish()
    header = {
        "format": 1,
        "backup_id": backup_id,
        "kind": "manual",
        "label": "forged",
        "description": "",
        "created_at": time.time(),
        "node_id": "elsewhere",
        "source": "local",
        "compression": {"name": "zstd", "level": 3},
        "cipher": {"name": "none"},
        "manifest": stats.manifest(),
    }
    assemble(path, header, ChunkSealer(None), body)
    body.unlink()
    return path


def line(key: str, value: object) -> bytes:
    return json.dumps([key, value, 1, "0000000000001-0000-n", "n", 1.0]).encode() + b"\n"


GOOD = line("p0", {"price": 1})


@pytest.mark.parametrize(
    ("bad", "error", "why"),
    [
        (line("p1", 1)[:-1] + b"," + line("p2", 2), BackupTamperedError, "two records on one line"),
        (b'["p1",1,1,"h"]\n', BackupTamperedError, "wrong shape"),
        (b'["p1",1,"1","h","n",1.0]\n', BackupTamperedError, "version not an integer"),
        (b'["p1",{"a":\n', BackupTamperedError, "not JSON"),
        (b"\n", BackupTamperedError, "an empty line"),
        (b'["p1",' + b"[" * 100_000 + b"]" * 100_000 + b',1,"h","n",1.0]\n', BackupTamperedError, "nested too deeply"),
        (line("p1", 1)[:-1] + b" x\n", BackupTamperedError, "something after the record"),
        (line("p1", 1)[:-1] + b',["p2",\n2,1,"h","n",1.0]\n', BackupTamperedError, "a record across two lines"),
        (b'["p1",NaN,1,"h","n",1.0]\n', ValidationError, "NaN is not a value the store keeps"),
        (line("", 1), ValidationError, "empty key"),
    ],
)
def test_a_backup_with_a_bad_line_restores_nothing(
    tmp_path: Path, bad: bytes, error: type[Exception], why: str
) -> None:
    with hybridstore.open(None, data_dir=tmp_path / "node", background=False) as store:
        store.set("products", "p0", {"price": 99})
        backups = service(store)
        imported = backups.import_backup(forge(tmp_path / "forged.hsb", [GOOD, bad, GOOD.replace(b"p0", b"p3")]))
        with pytest.raises(error):
            backups.restore_backup(imported.id)
        assert store.get("products", "p0").value == {"price": 99}, why  # type: ignore[union-attr]
        assert store.get("products", "p3") is None, why
        assert store.list("products").records[0].key == "p0" and len(store.list("products").records) == 1


def test_a_forged_backup_of_good_lines_restores_every_record(tmp_path: Path) -> None:
    """The control for the cases above: the same forging with good lines restores, so the refusals are caused
    by the bad line alone. Values equal to the current ones (whatever the key order) are left unchanged."""
    lines = [line(f"p{i}", {"price": i, "name": f"n{i}"}) for i in range(2500)]
    with hybridstore.open(None, data_dir=tmp_path / "node", background=False) as store:
        store.set("products", "p1", {"name": "n1", "price": 1})  # same value, other key order
        store.set("products", "p2", {"price": 2.0, "name": "n2"})  # 2.0 is not 2: a different JSON value
        backups = service(store)
        imported = backups.import_backup(forge(tmp_path / "forged.hsb", lines))
        report = backups.restore_backup(imported.id)
        totals = report.to_dict()["totals"]
        assert totals == {"added": 2498, "overwritten": 1, "skipped": 0, "unchanged": 1}
        assert report.written == 2499
        assert store.get("products", "p2").value == {"price": 2, "name": "n2"}  # type: ignore[union-attr]
        assert store.get("products", "p2499").value == {"price": 2499, "name": "n2499"}  # type: ignore[union-attr]


def test_a_new_backup_is_read_back_before_it_is_published(tmp_path: Path) -> None:
    """`check_written` accepts the file as assembled and refuses one changed afterwards by one bit anywhere in
    the body (what the disk gives back is not what was written), or with another header."""
    body = tmp_path / "b.body"
    with open(body, "wb") as out:
        writer = BodyWriter(out, backup_id=b"\x01" * 16, sealer=ChunkSealer(None), zstd_level=3, threads=2)
        for i in range(40):
            writer.add(("collection", "c"), b"".join(line(f"k{i}-{j}", {"j": j}) for j in range(1000)))
        stats = writer.finish()
    assert stats.chunks > 2 and stats.body_bytes == body.stat().st_size
    header = {"format": 1, "backup_id": "01" * 16, "cipher": {"name": "none"}, "manifest": stats.manifest()}
    path = tmp_path / "b.hsb"
    size = assemble(path, header, ChunkSealer(None), body)
    check_written(path, header, stats)
    data = path.read_bytes()
    for offset in (size - stats.body_bytes, size - stats.body_bytes // 2, size - 1):
        path.write_bytes(flip(data, offset))
        with pytest.raises(BackupError, match="differs"):
            check_written(path, header, stats)
    path.write_bytes(data)
    with pytest.raises(BackupError, match="header"):
        check_written(path, {**header, "format": 2}, stats)


@pytest.mark.parametrize("big", [{"text": "x" * 300}, {"n": 1e300}])
def test_a_value_over_the_restoring_stores_limit_is_refused_before_anything_is_written(
    tmp_path: Path, big: object
) -> None:
    """The limit is the restoring store's (``max_value_bytes``), however small the chunk; a float written in
    plain decimal (1e300 → 301 digits) counts at its stored size."""
    lines = [line(f"p{i}", {"i": i}) for i in range(50)] + [line("big", big)]
    with hybridstore.open(None, data_dir=tmp_path / "node", background=False, max_value_bytes=256) as store:
        backups = service(store)
        imported = backups.import_backup(forge(tmp_path / "forged.hsb", lines))
        with pytest.raises(ValidationError, match="limit is 256"):
            backups.restore_backup(imported.id)
        assert len(store.list("products").records) == 0


def test_a_local_backup_holds_every_live_record_once_in_key_order(tmp_path: Path) -> None:
    """Lines are read from SQLite a batch at a time (joined by SQLite): across batch boundaries every live
    record appears once, in key order, deleted ones not at all, and each section's count is its lines'."""
    rng = random.Random(7)
    keys = [f"k{i:05d}" for i in range(2600)] + ['quote"d', "back\\slash", "é-accent", "new\nline", "日本"]
    rng.shuffle(keys)
    with hybridstore.open(None, data_dir=tmp_path / "node", background=False) as store:
        for start in range(0, len(keys), 500):
            store.set_many("orders", [(k, {"k": k, "n": i}) for i, k in enumerate(keys[start : start + 500])])
        gone = set(rng.sample(keys, 300))
        for k in gone:
            store.delete("orders", k)
        store.set("a.other", "x", [1, 2.5, None])
        backups = service(store)
        info = backups.create_manual_backup("ordered")
        seen = [(name, line[0]) for kind, name, line in backups.read_records(info.id) if kind == "collection"]
        live = sorted(k for k in keys if k not in gone)
        assert seen == [("a.other", "x"), *(("orders", k) for k in live)]
        assert info.collections == {"a.other": 1, "orders": len(live)}
        values = {line[0]: line[1] for kind, _, line in backups.read_records(info.id) if kind == "collection"}
        assert all(values[k] == store.get("orders", k).value for k in live)  # type: ignore[union-attr]
