"""The backup service with real components: the PostgreSQL primary (source, catalogue, settings), scheduled
backups on an injected clock, an emergency backup when the primary is cut off, SIGKILL during a backup, and
flat memory measured in a child process."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore

from .backup_helpers import service
from .faults import wait_for
from .fix_db import StoreFactory
from .fix_proxy import Proxy

CHILD = Path(__file__).with_name("backup_child.py")
ROOT = Path(__file__).resolve().parent.parent


def bulk(store: hybridstore.HybridStore, n: int, size: int, collection: str = "orders") -> None:
    pad = "x" * size
    for start in range(0, n, 10_000):
        store.set_many(collection, ((f"k{i:07d}", {"i": i, "pad": pad}) for i in range(start, min(n, start + 10_000))))


def test_backup_from_the_primary_with_local_pending_and_catalogue(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    store = make_store("a", background=False)
    for i in range(30):
        store.set("products", f"p{i:02d}", {"i": i})
    other = make_store("b", background=False)  # another node's write: only the primary has it locally
    other.set("products", "from-b", "b")
    store.set_many("products", [("p00", "pending"), ("zz", "pending-new")])  # queued, not on the primary yet
    store.set_many("aa.only-local", [("k", 1)])  # a collection the primary has never seen
    store.node.config = dataclasses.replace(store.config, write_mode="local_first")
    store.delete("products", "p05")  # a pending delete of a record the primary still has
    b = service(store)
    info = b.create_manual_backup("from primary", "nightly")
    assert info.source == "primary" and info.pending_ops == 4
    assert info.collections == {"aa.only-local": 1, "products": 31}
    seen = [(name, line[0]) for kind, name, line in b.read_records(info.id) if kind == "collection"]
    assert seen == sorted(seen), "collections and keys in order"
    lines = {k: line for kind, _, line in b.read_records(info.id) if kind == "collection" for k in [line[0]]}
    assert lines["p00"][1] == "pending" and lines["zz"][1] == "pending-new" and lines["from-b"][1] == "b"
    assert "p05" not in lines and lines["p06"][1] == {"i": 6}
    row = pg.execute(
        f'SELECT kind, label, description, verified, manifest FROM "{pg_schema}".system_backups WHERE id = %s',
        (info.id,),
    ).fetchone()
    assert row is not None and row[:4] == ("manual", "from primary", "nightly", True)
    assert row[4]["node_id"] == store.node_id and row[4]["records"] == 32
    b.pin_backup(info.id)
    assert pg.execute(f'SELECT pinned FROM "{pg_schema}".system_backups WHERE id = %s', (info.id,)).fetchone() == (
        True,
    )
    b.delete_backup(info.id)
    assert pg.execute(f'SELECT count(*) FROM "{pg_schema}".system_backups').fetchone() == (0,)
    # settings live on the primary too: another node sees them
    b.update_config(max_backups=4, interval_hours=6)
    (settings,) = pg.execute(f"SELECT settings FROM \"{pg_schema}\".system_config WHERE key = 'backup'").fetchone()
    assert settings["max_backups"] == 4
    assert service(other).get_config().max_backups == 4


def test_scheduled_backups_with_an_injected_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_BACKUP_INTERVAL", "6")
    now = [1_000_000.0]
    with hybridstore.open(data_dir=tmp_path, background=False) as store:
        store.set("c", "k", 1)
        b = service(store, clock=lambda: now[0])
        assert [x.kind for x in b.tick()] == ["scheduled"], "no backup yet: one at once"
        assert b.tick() == []
        now[0] += 5 * 3600
        assert b.tick() == [] and b.seconds_until_due() == pytest.approx(3600)
        now[0] += 3600
        assert [x.kind for x in b.tick()] == ["scheduled"]
        now[0] += 10 * 86400  # the process was down for days: one catch-up backup, not forty
        assert len(b.tick()) == 1 and b.tick() == []
        assert [x.created_at for x in b.list_backups()] == [now[0], now[0] - 10 * 86400, now[0] - 10 * 86400 - 6 * 3600]
        b.update_config(max_backups=2)
        now[0] += 6 * 3600
        assert len(b.tick()) == 1
        assert len(b.list_backups()) == 2, "automatic pruning after a scheduled backup"
        b.update_config(automatic=False)
        now[0] += 100 * 3600
        assert b.tick() == []


def test_a_failing_scheduled_backup_backs_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    with hybridstore.open(data_dir=tmp_path, background=False) as store:
        store.set("c", "k", 1)
        b = service(store, clock=lambda: now[0])
        monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "p")
        b.update_config(encrypt=True)
        monkeypatch.delenv("HYBRIDSTORE_BACKUP_PASSPHRASE")  # every backup now fails
        assert b.tick() == [] and b.counts["failed"] == 1
        assert b.last_error is not None and "HYBRIDSTORE_BACKUP_PASSPHRASE" in b.last_error
        assert b.seconds_until_due() == pytest.approx(300)
        assert b.tick() == [] and b.counts["failed"] == 1, "no second attempt right away"
        monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "p")
        now[0] += 301
        assert [x.kind for x in b.tick()] == ["scheduled"] and b.last_error is None


def test_emergency_backup_when_the_primary_is_cut_off(make_store: StoreFactory, proxy: Proxy, proxied_dsn: str) -> None:
    # No replayer: what is queued stays in the outbox, so the test knows exactly what the backup must hold (every op:
    # no coalescing of the delete into its key's queued set).
    store = make_store(
        "a",
        primary=proxied_dsn,
        background=False,
        write_mode="local_first",
        circuit_failures=1,
        primary_timeout=1.0,
        coalesce=False,
    )
    queued = [store.set("orders", f"o{i:02d}", {"i": i}) for i in range(25)]
    store.delete("orders", "o00")
    b = service(store)
    assert [x.kind for x in b.tick()] == ["scheduled"], "the first scheduled backup, taken from the primary"
    b.start()
    try:
        proxy.cut()
        assert store.get("orders", "absent") is None  # this read meets the outage: circuit closed -> open
        assert store.node.gateway.circuit.state != "closed"
        wait_for(lambda: any(x.kind == "emergency" for x in b.list_backups()), timeout=30)
        (em,) = [x for x in b.list_backups() if x.kind == "emergency"]
        assert em.kind == "emergency" and em.source == "local" and em.verified
        assert em.records == 24 and em.pending_ops == 26
        outbox = [line for kind, name, line in b.read_records(em.id) if (kind, name) == ("pending", "outbox")]
        assert [op[0] for op in outbox[:25]] == [r.op_id for r in queued]
        assert outbox[25][2:4] == ["o00", None], "the pending delete is inside too"
        b.update_config(max_backups=1)
        assert b.prune(dry_run=True) == [], "emergency backups are exempt from automatic pruning"
    finally:
        proxy.restore()


def test_sigkill_during_a_backup_registers_no_half_backup(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    with hybridstore.open(data_dir=data_dir, background=False) as store:
        bulk(store, 60_000, 200)
    repo = data_dir / "backups"
    for n, delay in enumerate((0.0, 0.05, 0.15, 0.3, 0.6)):
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), "backup", str(data_dir)], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        wait_for(lambda: any(repo.glob(".tmp-*")), timeout=30)  # a backup is being written now
        time.sleep(delay)  # real time on purpose: the kill lands at a different point of the running backup
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with hybridstore.open(data_dir=data_dir, background=False) as store:
            b = service(store)
            assert not list(repo.glob(".tmp-*")), "leftovers removed at start"
            registered = b.list_backups()
            if n == 0:
                assert registered == [], "killed while writing its first backup: nothing registered"
            for info in registered:
                assert b.verify_backup(info.id).records == 60_000, "every registered backup is complete"
            record = store.get("orders", "k0000007")
            assert record is not None and record.value["i"] == 7


def test_memory_stays_flat(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    with hybridstore.open(data_dir=data_dir, background=False) as store:
        bulk(store, 60_000, 1000)  # about 65 MB of JSON, twice over: the records and their outbox rows
    out = subprocess.run(
        [sys.executable, str(CHILD), "memory", str(data_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=300,
        env={"HYBRIDSTORE_BACKUP_PASSPHRASE": "memory test", "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    before_kb, peak_kb, content = int(out[0]), int(out[1]), int(out[2])
    cap = 32 * 1024 * 1024
    assert content > 4 * cap, "the data set is several times the cap"
    assert (peak_kb - before_kb) * 1024 < cap, f"backup grew RSS by {(peak_kb - before_kb) / 1024:.0f} MiB"


def test_service_thread_takes_the_first_backup_and_stops_on_close(tmp_path: Path) -> None:
    # backups=False: not started at open, where its first round could see an empty node (and wait a minute)
    store = hybridstore.open(data_dir=tmp_path, background=True, backups=False)
    try:
        store.set("c", "k", {"v": 1})
        b = store.backups  # created on first use; the store runs background work, so its thread starts
        assert b is store.backups
        wait_for(lambda: [x.kind for x in b.list_backups()] == ["scheduled"], timeout=30)
        assert b.stats()["running"] and b.stats()["next_scheduled_in_s"] > 23 * 3600
    finally:
        store.close()
    assert b.worker.rounds >= 1 and not b.worker.running
    with pytest.raises(hybridstore.ClosedError):
        b.restore_backup(b.list_backups()[0].id)


def test_backup_falls_back_to_the_local_copy_when_the_primary_fails(
    make_store: StoreFactory, proxy: Proxy, proxied_dsn: str
) -> None:
    store = make_store("a", primary=proxied_dsn, background=False, primary_timeout=1.0)
    for i in range(3):
        assert store.set("orders", f"o{i}", i).tier == "primary"
    b = service(store)
    proxy.cut()  # the circuit is still closed: the backup finds out by itself
    info = b.create_manual_backup()
    assert info.source == "local" and info.collections == {"orders": 3} and info.verified
    assert not list(b.repo.dir.glob(".tmp-*"))
    b.update_config(source="primary")
    with pytest.raises(hybridstore.PrimaryUnavailableError):
        b.create_manual_backup()  # asked for the primary explicitly: no silent fallback
    assert len(b.list_backups()) == 1 and b.counts["failed"] == 1
    proxy.restore()


def test_started_during_an_outage_takes_an_emergency_backup(
    make_store: StoreFactory, proxy: Proxy, proxied_dsn: str
) -> None:
    proxy.cut()
    store = make_store("a", primary=proxied_dsn, background=False, primary_timeout=1.0)
    store.node.gateway.probe_now()  # what the replayer thread does first: finds the primary down
    assert store.node.gateway.circuit.state == "open"
    store.set("orders", "o1", {"queued": True})
    b = service(store)
    b.update_config(interval_hours=1000)
    b.start()
    wait_for(lambda: any(x.kind == "emergency" for x in b.list_backups()), timeout=30)
    (em,) = [x for x in b.list_backups() if x.kind == "emergency"]
    assert em.records == 1 and em.pending_ops == 1 and em.source == "local"
    proxy.restore()
