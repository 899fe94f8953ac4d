"""Backups off the node: files stored on the primary (migration 0005) as well as in the node's directory, so
losing a node's disk loses no backup and any node can list, verify, download and restore any backup. Tampering
on the primary and interrupted uploads, retention per target, deleting from every target."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore.backup import BackupService, primary_store
from hybridstore.backup.policy import kept_on
from hybridstore.backup.settings import BackupSettings

from .backup_helpers import dump, service
from .faults import wait_for
from .fix_db import StoreFactory, primary_rows
from .fix_proxy import Proxy

SMALL_BLOCK = 1024  # bytes per stored chunk in these tests, so a small backup spans many chunks


def fill(store: hybridstore.HybridStore, n: int = 200, collection: str = "orders") -> dict[str, Any]:
    rows = {f"o{i:04d}": {"i": i, "note": hashlib.sha256(str(i).encode()).hexdigest()} for i in range(n)}
    store.set_many(collection, rows.items())
    store.sync_now()
    return rows


def stored(pg: psycopg.Connection[Any], schema: str, backup_id: str) -> tuple[Any, ...] | None:
    """(stored_chunks, stored_bytes, chunk rows of the backup, bytes in them) when a complete copy is on the
    primary, else None (whatever chunk rows an interrupted upload left)."""
    row = pg.execute(
        f'SELECT stored_chunks, stored_bytes FROM "{schema}".system_backups WHERE id = %s AND upload_id IS NOT NULL',
        (backup_id,),
    ).fetchone()
    if row is None:
        return None
    chunks = pg.execute(
        f'SELECT count(*), coalesce(sum(length(data)), 0) FROM "{schema}".backup_chunks WHERE backup_id = %s',
        (backup_id,),
    ).fetchone()
    assert chunks is not None
    return (*row, *chunks)


def chunk_rows(pg: psycopg.Connection[Any], schema: str, backup_id: str) -> int:
    found = pg.execute(f'SELECT count(*) FROM "{schema}".backup_chunks WHERE backup_id = %s', (backup_id,)).fetchone()
    assert found is not None
    return int(found[0])


def small_blocks(b: BackupService) -> BackupService:
    b.locations.primary.block_size = SMALL_BLOCK
    return b


# -- pure decisions and settings --------------------------------------------------------------------------------


def test_targets_setting_is_validated_and_resolved() -> None:
    assert BackupSettings().targets == "both"
    assert BackupSettings.from_dict({"targets": "primary"}).targets == "primary"
    with pytest.raises(hybridstore.ConfigError, match="targets"):
        BackupSettings.from_dict({"targets": "s3"})
    with pytest.raises(hybridstore.ConfigError):
        BackupSettings.from_dict({"targets": ["local"]})
    assert kept_on("both", True) == ("local", "primary")
    assert kept_on("primary", True) == ("primary",)
    assert kept_on("local", True) == ("local",)
    assert kept_on("both", False) == kept_on("primary", False) == ("local",), "no primary: the directory"


def test_an_embedded_node_keeps_backups_locally(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path, background=False) as store:
        store.set("c", "k", 1)
        b = service(store)
        assert b.stats()["targets"] == ["local"]
        with pytest.raises(hybridstore.ConfigError, match="needs a primary"):
            b.update_config(targets="primary")
        info = b.create_manual_backup()
        assert info.locations == ["local"] and b.stats()["pending_upload"] == 0


# -- any node can use any node's backups --------------------------------------------------------------------------


def test_losing_a_nodes_disk_loses_no_backup(
    make_store: StoreFactory, tmp_path: Path, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    a = make_store("a", background=False)
    rows = fill(a)
    ba = small_blocks(service(a))
    assert ba.stats()["targets"] == ["local", "primary"], "the default with a primary: both"
    info = ba.create_manual_backup("before the disk dies")
    assert info.locations == ["local", "primary"]
    original = Path(info.path).read_bytes()
    chunks, size, rows_stored, bytes_stored = stored(pg, pg_schema, info.id) or (0, 0, 0, 0)
    assert size == bytes_stored == len(original) and chunks == rows_stored == -(-len(original) // SMALL_BLOCK) > 3
    pinned = ba.create_manual_backup("pinned one")
    ba.pin_backup(pinned.id)
    for key in list(rows)[:150]:  # the data is lost after the backup: deleted everywhere
        a.delete("orders", key)
    a.sync_now()
    a.close()
    shutil.rmtree(tmp_path / "a")  # the node's disk is gone, and every file it held with it

    b = make_store("b", background=False)
    assert len(dump(b, ["orders"])["orders"]) == 50
    bb = service(b)
    listed = {x.id: x for x in bb.list_backups()}
    assert set(listed) == {info.id, pinned.id}
    assert listed[info.id].locations == ["primary"] and listed[info.id].node_id == a.node_id
    assert listed[info.id].records == 200 and listed[info.id].path == ""
    assert listed[pinned.id].pinned
    assert bb.get_backup(info.id[:20]).id == info.id, "a prefix names a backup only the primary holds"

    report = bb.verify_backup(info.id)
    assert report.records == 200 and report.size_bytes == len(original)
    assert bb.repo.path(info.id).read_bytes() == original, "fetched into B's directory, byte for byte"
    assert bb.get_backup(info.id).locations == ["local", "primary"] and bb.get_backup(info.id).verified

    restored = bb.restore_backup(pinned.id)  # not fetched yet: restore fetches it first
    assert restored.total("added") == 150
    assert dump(b, ["orders"]) == {"orders": rows}, "the data is back on B"
    b.sync_now()
    on_primary = primary_rows(pg, pg_schema, "orders")
    assert {k: v for k, (v, _) in on_primary.items()} == rows, "and on the primary"
    assert bb.get_backup(pinned.id).pinned, "the pin came along with the file"

    exported = bb.export_backup(info.id, tmp_path / "out.hsb")
    assert exported.read_bytes() == original


def test_targets_primary_keeps_no_file_on_the_node(
    make_store: StoreFactory, tmp_path: Path, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    store = make_store("a", background=False)
    rows = fill(store, 50)
    b = small_blocks(service(store))
    b.update_config(targets="primary")
    info = b.create_manual_backup()
    assert info.locations == ["primary"] and info.path == ""
    assert b.repo.ids() == [] and stored(pg, pg_schema, info.id) is not None
    assert [x.locations for x in b.list_backups()] == [["primary"]]
    b.pin_backup(info.id)
    assert b.get_backup(info.id).pinned
    assert b.verify_backup(info.id).records == 50
    for key in rows:
        store.delete("orders", key)
    report = b.restore_backup(info.id)  # read from a temporary download; the pre-restore backup goes up too
    assert report.total("added") == 50 and dump(store, ["orders"]) == {"orders": rows}
    assert b.repo.ids() == [] and not list(b.repo.dir.glob(".tmp-*")), "nothing left in the directory"
    assert report.pre_restore_backup is not None
    assert b.get_backup(report.pre_restore_backup).locations == ["primary"]
    assert sum(1 for kind, _, _ in b.read_records(info.id) if kind == "collection") == 50
    assert not list(b.repo.dir.glob(".tmp-*"))


def test_targets_local_stores_nothing_on_the_primary(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    store = make_store("a", background=False)
    fill(store, 10)
    b = service(store)
    b.update_config(targets="local")
    info = b.create_manual_backup()
    assert info.locations == ["local"] and stored(pg, pg_schema, info.id) is None
    assert chunk_rows(pg, pg_schema, info.id) == 0
    b.update_config(targets="both")  # the backups already taken belong on the primary now, too
    b.tick()
    assert stored(pg, pg_schema, info.id) is not None and b.get_backup(info.id).locations == ["local", "primary"]


# -- damage and interruptions -------------------------------------------------------------------------------------


def test_tampering_on_the_primary_is_detected(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    a = make_store("a", background=False)
    fill(a, 300)
    info = small_blocks(service(a)).create_manual_backup()
    b = make_store("b", background=False)
    bb = service(b)
    before = dump(b, ["orders"])
    # a byte of a stored chunk flipped, the recorded checksum left alone
    pg.execute(
        f'UPDATE "{pg_schema}".backup_chunks SET data = set_byte(data, 100, get_byte(data, 100) # 1) '
        "WHERE backup_id = %s AND idx = 1",
        (info.id,),
    )
    with pytest.raises(hybridstore.BackupTamperedError):
        bb.verify_backup(info.id)
    with pytest.raises(hybridstore.BackupTamperedError):
        bb.restore_backup(info.id)
    assert bb.repo.ids() == [] and not list(bb.repo.dir.glob(".tmp-*")), "nothing registered locally"
    assert dump(b, ["orders"]) == before

    # a forger who also rewrites the recorded checksum: the file's own chunk tags still catch it
    data = b"".join(
        bytes(r[0])
        for r in pg.execute(
            f'SELECT data FROM "{pg_schema}".backup_chunks WHERE backup_id = %s ORDER BY idx', (info.id,)
        )
    )
    pg.execute(
        f'UPDATE "{pg_schema}".system_backups SET stored_sha256 = %s WHERE id = %s',
        (hashlib.sha256(data).hexdigest(), info.id),
    )
    with pytest.raises(hybridstore.BackupTamperedError) as caught:
        bb.verify_backup(info.id)
    assert "checksum recorded" not in str(caught.value), "caught by the file's own checks"
    assert bb.repo.ids() == []
    flags = pg.execute(f'SELECT verified FROM "{pg_schema}".system_backups WHERE id = %s', (info.id,)).fetchone()
    assert flags == (False,), "marked unverified on the primary"
    with pytest.raises(hybridstore.BackupTamperedError):
        bb.export_backup(info.id, bb.repo.dir.parent / "out.hsb")


def test_an_interrupted_upload_leaves_no_half_backup_and_is_retried(
    make_store: StoreFactory,
    proxy: Proxy,
    proxied_dsn: str,
    pg: psycopg.Connection[Any],
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make_store("a", primary=proxied_dsn, background=False, primary_timeout=1.0)
    fill(store, 200)
    b = small_blocks(service(store))
    real_blocks = primary_store.read_blocks
    sent = [0]

    def cut_after_three_blocks(f: Any, size: int) -> Any:
        for block in real_blocks(f, size):
            yield block
            sent[0] += 1
            if sent[0] == 3:
                proxy.cut()  # the connection dies in the middle of the upload

    monkeypatch.setattr(primary_store, "read_blocks", cut_after_three_blocks)
    info = b.create_manual_backup()  # the backup itself is fine: it is kept here and its upload is pending
    assert sent[0] >= 3 and info.locations == ["local"] and info.verified
    assert stored(pg, pg_schema, info.id) is None, "no copy on the primary"
    assert chunk_rows(pg, pg_schema, info.id) == 0, "the interrupted upload's blocks were rolled back"
    other = service(make_store("b", background=False))
    assert other.list_backups() == [], "another node sees no half backup"
    assert b.stats()["pending_upload"] == 1 and "not stored on the primary" in str(b.stats()["last_upload_error"])
    monkeypatch.setattr(primary_store, "read_blocks", real_blocks)

    b.start()  # the service's thread: the gateway's circuit_closed wakes it (its idle wait is a minute)
    try:
        proxy.restore()
        wait_for(lambda: store.node.gateway.probe_now(), timeout=20)
        wait_for(lambda: stored(pg, pg_schema, info.id) is not None, timeout=20)
    finally:
        b.stop()
    chunks, size, rows_stored, _ = stored(pg, pg_schema, info.id) or (0, 0, 0, 0)
    assert size == Path(info.path).stat().st_size and chunks == rows_stored, "the leftovers were cleaned up"
    assert b.stats()["pending_upload"] == 0 and b.stats()["last_upload_error"] is None
    assert other.verify_backup(info.id).records == 200


def test_delete_removes_every_copy_but_not_while_the_primary_is_away(
    make_store: StoreFactory, proxy: Proxy, proxied_dsn: str, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    store = make_store("a", primary=proxied_dsn, background=False, primary_timeout=1.0, circuit_failures=1)
    fill(store, 20)
    b = service(store)
    first, second = b.create_manual_backup(), b.create_manual_backup()
    proxy.cut()
    store.node.gateway.probe_now()
    assert not store.node.gateway.allow()
    assert {x.id: x.locations for x in b.list_backups()} == {
        first.id: ["local", "primary"],
        second.id: ["local", "primary"],
    }, "as last known here"
    with pytest.raises(hybridstore.PrimaryUnavailableError, match="nothing deleted"):
        b.delete_backup(first.id)
    assert b.repo.path(first.id).exists()
    proxy.restore()
    wait_for(lambda: store.node.gateway.probe_now(), timeout=20)
    b.delete_backup(first.id)
    assert not b.repo.path(first.id).exists() and chunk_rows(pg, pg_schema, first.id) == 0
    assert pg.execute(f'SELECT count(*) FROM "{pg_schema}".system_backups WHERE id = %s', (first.id,)).fetchone() == (
        0,
    )
    assert [x.id for x in b.list_backups()] == [second.id]


# -- retention per target -----------------------------------------------------------------------------------------


def test_prune_applies_retention_to_each_target(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    a = make_store("a", background=False)
    fill(a, 10)
    ba = service(a)
    ba.update_config(max_backups=10, automatic=False)  # no scheduled backup in the way
    m1, m2, m3 = (ba.create_manual_backup(f"m{i}") for i in range(1, 4))
    emergency = ba._create("emergency", "Emergency backup", "")
    ba.tick()  # the worker's round stores it on the primary
    assert ba.get_backup(emergency.id).locations == ["local", "primary"]
    b = make_store("b", background=False)
    fill(b, 5, collection="other")
    bb = service(b)
    theirs = bb.create_manual_backup("b's own")
    ba.repo.delete(m3.id)  # the directory lost its newest manual backup; the primary still has it

    ba.update_config(max_backups=2)
    plan = {x.id: x.extra["pruned_from"] for x in ba.prune(dry_run=True)}
    assert plan == {m1.id: ["primary"]}, "the directory holds 2 (m1, m2): within the limit; the primary holds 3"
    assert stored(pg, pg_schema, m1.id) is not None, "a dry run removes nothing"
    ba.prune()
    assert stored(pg, pg_schema, m1.id) is None and chunk_rows(pg, pg_schema, m1.id) == 0
    assert ba.get_backup(m1.id).locations == ["local"], "kept in the directory"
    assert stored(pg, pg_schema, emergency.id) is not None, "emergency backups are exempt"
    assert stored(pg, pg_schema, theirs.id) is not None, "another node's uploads are its own to prune"

    ba.update_config(max_backups=1)
    plan = {x.id: x.extra["pruned_from"] for x in ba.prune(dry_run=True)}
    assert plan == {m1.id: ["local"], m2.id: ["primary"]}, "each target keeps its newest (and the emergency one)"
    ba.prune()
    assert {x.id: x.locations for x in ba.list_backups()} == {
        m2.id: ["local"],
        m3.id: ["primary"],
        emergency.id: ["local", "primary"],
        theirs.id: ["primary"],
    }
    assert [x.id for x in bb.list_backups() if x.node_id == b.node_id] == [theirs.id]


def test_a_new_passphrase_reaches_the_primarys_copies(make_store: StoreFactory, tmp_path: Path) -> None:
    a = make_store("a", background=False)
    fill(a, 30)
    ba = service(a, passphrase="old secret")
    ba.update_config(encrypt=True)
    info = ba.create_manual_backup()
    assert info.encrypted and info.locations == ["local", "primary"]
    assert ba.rotate_passphrase("new secret") == [info.id]
    b = make_store("b", background=False)
    with pytest.raises(hybridstore.WrongPassphraseError):
        service(b, passphrase="old secret", directory=tmp_path / "old").verify_backup(info.id)
    assert service(b, passphrase="new secret", directory=tmp_path / "new").verify_backup(info.id).records == 30
