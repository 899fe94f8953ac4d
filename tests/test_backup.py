"""Backups on an embedded store: round trips (hypothesis), selective restores, tamper detection, passphrases,
retention, settings."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hybridstore
from hybridstore.backup.policy import choose_prunable, seconds_until_due
from hybridstore.backup.settings import BackupSettings, env_defaults
from hybridstore.errors import (
    BackupError,
    BackupNotFoundError,
    BackupTamperedError,
    ConfigError,
    NotABackupError,
    WrongPassphraseError,
)

from .backup_helpers import dump, flip, frames, service

PASS = "correct horse battery staple"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8),
            inner,
            max_size=4,
        )
    ),
    max_leaves=10,
)
keys = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12)
datasets = st.dictionaries(
    st.sampled_from(["products", "orders", "carts", "Settings.v2"]),
    st.dictionaries(keys, json_values, min_size=1, max_size=15),
    min_size=1,
    max_size=3,
)


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", PASS)
    return PASS


def fill(store: hybridstore.HybridStore, data: dict[str, dict[str, Any]]) -> None:
    for c, rows in data.items():
        for k, v in rows.items():
            store.set(c, k, v)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=datasets, encrypt=st.booleans(), compress=st.booleans())
def test_round_trip_into_a_fresh_store(
    passphrase: str, data: dict[str, dict[str, Any]], encrypt: bool, compress: bool
) -> None:
    with tempfile.TemporaryDirectory() as d:
        with hybridstore.open(data_dir=Path(d) / "a", background=False) as a:
            fill(a, data)
            b = service(a)
            b.chunk_target = 512  # several chunks even for small data
            b.update_config(encrypt=encrypt, compress=compress)
            info = b.create_manual_backup("round trip")
            assert info.records == sum(len(r) for r in data.values())
            assert info.collections == {c: len(r) for c, r in data.items()}
            exported = b.export_backup(info.id, Path(d) / "copy.hsb")
        with hybridstore.open(data_dir=Path(d) / "b", background=False) as fresh:
            fb = service(fresh)
            imported = fb.import_backup(exported)
            assert imported.id == info.id and imported.verified
            report = fb.restore_backup(info.id)
            assert report.total("added") == info.records and report.written == info.records
            assert dump(fresh, list(data)) == data


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=datasets, pick=st.data())
def test_selective_restore_touches_only_the_selection(data: dict[str, dict[str, Any]], pick: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d, hybridstore.open(data_dir=Path(d), background=False) as store:
        fill(store, data)
        b = service(store)
        info = b.create_manual_backup()
        changed = {c: dict.fromkeys(rows, "changed") for c, rows in data.items()}
        fill(store, changed)
        chosen_c = pick.draw(st.sampled_from(sorted(data)))
        chosen_k = pick.draw(st.sets(st.sampled_from(sorted(data[chosen_c]))))
        report = b.restore_backup(info.id, collections=[chosen_c], keys=chosen_k)
        after = dump(store, list(data))
        for c, rows in data.items():
            for k, v in rows.items():
                want = v if (c == chosen_c and k in chosen_k) else "changed"
                assert after[c][k] == want, (c, k)
        assert report.total("overwritten") + report.total("unchanged") == len(chosen_k)


def test_overwrite_false_keeps_existing_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path, background=False) as store:
        fill(store, {"products": {"a": 1, "b": 2, "c": 3}})
        b = service(store)
        info = b.create_manual_backup()
        store.set("products", "a", "new")
        store.delete("products", "b")
        depth = store.health()["outbox"]["depth"]
        dry = b.restore_backup(info.id, dry_run=True)
        assert dry.collections == {"products": {"added": 1, "overwritten": 1, "skipped": 0, "unchanged": 1}}
        assert sorted((x["action"], x["key"]) for x in dry.diff) == [("added", "b"), ("overwritten", "a")]
        assert store.health()["outbox"]["depth"] == depth and dry.pre_restore_backup is None
        assert len(b.list_backups()) == 1
        keep = b.restore_backup(info.id, overwrite=False)
        assert keep.collections["products"] == {"added": 1, "overwritten": 0, "skipped": 1, "unchanged": 1}
        assert dump(store, ["products"]) == {"products": {"a": "new", "b": 2, "c": 3}}
        assert keep.pre_restore_backup is not None
        pre = b.get_backup(keep.pre_restore_backup)
        assert pre.kind == "pre_restore" and pre.collections == {"products": 2}


def _backup_file(tmp_path: Path, *, encrypt: bool) -> tuple[hybridstore.HybridStore, Any, Path]:
    store = hybridstore.open(data_dir=tmp_path / "node", background=False)
    for i in range(24):
        store.set("products" if i % 2 else "orders", f"k{i:03d}", {"i": i, "text": "x" * (i % 7)})
    store.delete("orders", "k000")
    b = service(store)
    b.chunk_target = 300
    b.update_config(encrypt=encrypt)
    info = b.create_manual_backup()
    return store, b, Path(info.path)


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_every_single_byte_flip_is_detected(tmp_path: Path, passphrase: str, encrypt: bool) -> None:
    store, b, path = _backup_file(tmp_path, encrypt=encrypt)
    try:
        data = path.read_bytes()
        assert len(frames(path)) >= 6, "several chunks"
        bad = tmp_path / "bad.hsb"
        undetected = []
        for i in range(len(data)):
            bad.write_bytes(flip(data, i, 0x01 if i % 2 else 0x80))
            try:
                b.check_file(bad)
            except BackupTamperedError:
                continue
            undetected.append(i)
        assert undetected == [], f"flips not detected at offsets {undetected[:10]}"
    finally:
        store.close()


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_truncation_append_swap_and_splice_are_detected(tmp_path: Path, passphrase: str, encrypt: bool) -> None:
    store, b, path = _backup_file(tmp_path, encrypt=encrypt)
    try:
        data = path.read_bytes()
        bad = tmp_path / "bad.hsb"
        for n in range(1, len(data)):
            bad.write_bytes(data[:n])
            with pytest.raises(BackupTamperedError):
                b.check_file(bad)
        fr = frames(path)
        for extra in (b"\x00", data[fr[1][0] : fr[1][0] + fr[1][1]], data[fr[-1][0] :]):
            bad.write_bytes(data + extra)
            with pytest.raises(BackupTamperedError):
                b.check_file(bad)
        (o1, l1), (o2, l2) = fr[1], fr[2]
        swapped = data[:o1] + data[o2 : o2 + l2] + data[o1 : o1 + l1] + data[o2 + l2 :]
        bad.write_bytes(swapped)
        with pytest.raises(BackupTamperedError, match="chunk 1"):
            b.check_file(bad)
        dropped = data[:o1] + data[o1 + l1 :]
        bad.write_bytes(dropped)
        with pytest.raises(BackupTamperedError):
            b.check_file(bad)
        # a chunk of another backup at the same position (same passphrase, same layout)
        other = Path(b.create_manual_backup().path).read_bytes()
        ofr = frames(Path(b.get_backup(b.list_backups()[0].id).path))
        spliced = data[:o1] + other[ofr[1][0] : ofr[1][0] + ofr[1][1]] + data[o1 + l1 :]
        bad.write_bytes(spliced)
        with pytest.raises(BackupTamperedError):
            b.check_file(bad)
        b.check_file(path)  # the original is still good
    finally:
        store.close()


def test_failed_restore_changes_nothing(tmp_path: Path, passphrase: str) -> None:
    store, b, path = _backup_file(tmp_path, encrypt=True)
    try:
        for i in range(24):
            store.set("products" if i % 2 else "orders", f"k{i:03d}", "current")
        before = dump(store, ["products", "orders"])
        depth = store.health()["outbox"]["depth"]
        backups = [x.id for x in b.list_backups()]
        data = path.read_bytes()
        last = frames(path)[-2]  # damage the last data chunk: only found at the very end of a read
        path.write_bytes(flip(data, last[0] + last[1] - 3))
        with pytest.raises(BackupTamperedError):
            b.restore_backup(backups[0])
        assert dump(store, ["products", "orders"]) == before
        assert store.health()["outbox"]["depth"] == depth
        assert [x.id for x in b.list_backups()] == backups, "no pre-restore backup either"
        with pytest.raises(BackupTamperedError):
            b.verify_backup(backups[0])
        assert b.get_backup(backups[0]).verified is False
    finally:
        store.close()


def test_tampered_file_is_not_imported(tmp_path: Path, passphrase: str) -> None:
    store, _, path = _backup_file(tmp_path, encrypt=True)
    try:
        data = path.read_bytes()
        fr = frames(path)
        with hybridstore.open(data_dir=tmp_path / "other", background=False) as other:
            ob = service(other)
            for i in (20, fr[0][0] + 3, fr[2][0] + 10, len(data) - 1):
                bad = tmp_path / "bad.hsb"
                bad.write_bytes(flip(data, i))
                with pytest.raises(BackupTamperedError):
                    ob.import_backup(bad)
            assert ob.list_backups() == [] and not list(ob.repo.dir.glob(".tmp-*"))
            assert ob.import_backup(path).verified, "the intact file imports"
    finally:
        store.close()


def test_passphrases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passphrase: str) -> None:
    store, b, path = _backup_file(tmp_path, encrypt=True)
    try:
        bid = b.list_backups()[0].id
        assert b.get_backup(bid).encrypted
        assert b"k001" not in path.read_bytes(), "records are not readable in the file"
        monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "wrong")
        with pytest.raises(WrongPassphraseError):
            b.verify_backup(bid)
        with pytest.raises(WrongPassphraseError):
            b.restore_backup(bid)
        monkeypatch.delenv("HYBRIDSTORE_BACKUP_PASSPHRASE")
        with pytest.raises(WrongPassphraseError, match="HYBRIDSTORE_BACKUP_PASSPHRASE"):
            b.verify_backup(bid)
        with pytest.raises(ConfigError):
            b.create_manual_backup()  # encrypt is on, no passphrase: refused, nothing half-written
        assert len(b.list_backups()) == 1 and not list(b.repo.dir.glob(".tmp-*"))
        # rotation: re-wrap under a new passphrase; the old one stops working
        assert b.rotate_passphrase("new secret", old_passphrase=PASS) == [bid]
        monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "new secret")
        assert b.verify_backup(bid).records == 23
        monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", PASS)
        with pytest.raises(WrongPassphraseError):
            b.verify_backup(bid)
    finally:
        store.close()


def test_not_a_backup(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "n", background=False) as store:
        b = service(store)
        for content in (b"", b"hello world, this is not a backup\n" * 10, json.dumps({"a": 1}).encode()):
            f = tmp_path / "x.hsb"
            f.write_bytes(content)
            with pytest.raises(NotABackupError, match="not a hybridstore backup"):
                b.import_backup(f)
        with pytest.raises(BackupError, match="cannot read"):
            b.import_backup(tmp_path / "missing.hsb")
        with pytest.raises(BackupNotFoundError):
            b.get_backup("0123456789")
        assert b.list_backups() == [] and not list(b.repo.dir.glob(".tmp-*"))


class B:
    def __init__(self, id: str, kind: str, created_at: float, verified: bool = True, pinned: bool = False) -> None:
        self.id, self.kind, self.created_at, self.verified, self.pinned = id, kind, created_at, verified, pinned


def test_retention_policy() -> None:
    bs = [B(f"m{i}", "manual" if i % 2 else "scheduled", float(i)) for i in range(10)]
    bs += [B("e", "emergency", 0.5), B("p", "pre_restore", 0.6), B("pin", "manual", 0.7, pinned=True)]
    gone = {b.id for b in choose_prunable(bs, 3)}
    assert gone == {f"m{i}" for i in range(7)}, "the 3 newest manual/scheduled stay; exempt ones never go"
    # the newest verified backup is never pruned, even beyond the limit
    for b in bs:
        b.verified = False
    bs[2].verified = True
    gone = {b.id for b in choose_prunable(bs, 3)}
    assert "m2" not in gone and gone == {f"m{i}" for i in range(7)} - {"m2"}
    assert choose_prunable(bs, 100) == []


def test_prune_in_the_repository(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path, background=False) as store:
        store.set("c", "k", 1)
        b = service(store)
        b.update_config(max_backups=30)
        emergency = b._create("emergency", "Emergency backup", "").id
        made = [b.create_manual_backup(f"m{i}").id for i in range(5)]
        pinned = b.pin_backup(made[0]).id
        b.repo.set_meta(made[4], verified=False)
        b.repo.set_meta(made[3], verified=False)
        b.update_config(max_backups=1)
        plan = b.prune(dry_run=True)
        assert {x.id for x in plan} == {made[1], made[3]}, "keeps m4 (newest) and m2 (newest verified)"
        assert len(b.list_backups()) == 6
        gone = b.prune()
        assert {x.id for x in gone} == {made[1], made[3]}
        assert {x.id for x in b.list_backups()} == {pinned, made[2], made[4], emergency}
        assert b.delete_backup(pinned).id == pinned
        assert {x.id for x in b.list_backups()} == {made[2], made[4], emergency}
        damaged = Path(b.get_backup(made[2]).path)
        damaged.write_bytes(flip(damaged.read_bytes(), 20))
        assert b.get_backup(made[4]).kind == "manual"
        assert [x.kind for x in b.list_backups() if x.id == made[2]] == ["unknown"]
        assert b.prune() == [], "an unreadable file is kept for inspection"
        assert len(b.list_backups()) == 3


def test_settings_validation_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_defaults({}) == BackupSettings()
    assert env_defaults({"VITE_STORAGE_BACKUP_INTERVAL": "6", "STORAGE_MAX_BACKUPS": "5"}) == BackupSettings(
        interval_hours=6.0, max_backups=5
    )
    with pytest.raises(ConfigError, match="STORAGE_MAX_BACKUPS"):
        env_defaults({"STORAGE_MAX_BACKUPS": "many"})
    monkeypatch.setenv("STORAGE_BACKUP_INTERVAL", "12")
    with hybridstore.open(data_dir=tmp_path, background=False) as store:
        b = service(store)
        assert b.get_config().interval_hours == 12.0
        for bad in (
            {"max_backups": 0},
            {"interval_hours": -1},
            {"encrypt": "yes"},
            {"colour": "red"},
            {"source": "cloud"},
            {"maxBackups": 1.5},
        ):
            with pytest.raises(ConfigError):
                b.update_config(**bad)
        cfg = b.update_config(maxBackups=7, intervalHours=2, compress=False)
        assert (cfg.max_backups, cfg.interval_hours, cfg.compress) == (7, 2.0, False)
    with hybridstore.open(data_dir=tmp_path, background=False) as store:
        assert service(store).get_config().max_backups == 7, "persisted in the repository's config.json"
    config = tmp_path / "backups" / "config.json"
    saved = json.loads(config.read_text())
    config.write_text(json.dumps(saved | {"future_option": 1}))
    with hybridstore.open(data_dir=tmp_path, background=False) as store:
        assert service(store).get_config().max_backups == 7, "names from a newer version are ignored"
    config.write_text(json.dumps(saved | {"max_backups": -3}))
    with hybridstore.open(data_dir=tmp_path, background=False) as store:
        assert service(store).get_config().max_backups == 30, "a damaged copy is ignored, not fatal"


def test_seconds_until_due() -> None:
    assert seconds_until_due(None, 100.0, 3600) == 0
    assert seconds_until_due(100.0, 200.0, 3600) == 3500
    assert seconds_until_due(100.0, 100.0 + 5 * 86400, 3600) == 0
