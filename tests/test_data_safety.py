"""Data safety: nothing acknowledged or kept aside is lost, and nothing is silently overwritten."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore import PrimaryRejectedError, WrongPassphraseError

from .backup_helpers import service
from .faults import refuse_poison, wait_for
from .fix_db import StoreFactory, primary_rows
from .fix_proxy import Proxy


def test_a_retried_dead_letter_that_is_refused_again_is_kept(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    """`deadletters retry` while the primary still refuses the value: the letter stays (the value exists nowhere
    else), the error says so; once the primary accepts it, the retry stores it and only then drops the letter."""
    offline = make_store("n", write_mode="local_first", background=False, sync_retry_attempts=1)
    offline.set("c", "warm", 0)
    offline.sync_now()
    refuse_poison(pg, pg_schema)
    offline.set("products", "p1", {"poison": True, "price": -1})
    offline.sync_now()
    (letter,) = offline.dead_letters()
    offline.close()

    node = make_store("n", background=False)  # write-through: the retry goes straight to the primary
    with pytest.raises(PrimaryRejectedError, match="poison value refused"):
        node.retry_dead_letter(letter["id"])
    assert [d["id"] for d in node.dead_letters()] == [letter["id"]], "still there: nothing was stored"
    assert node.get("products", "p1") is None
    pg.execute(f'DROP TRIGGER no_poison ON "{pg_schema}".records')
    result = node.retry_dead_letter(letter["id"], actor="alice")
    assert result.tier == "primary" and not result.queued
    assert node.dead_letters() == []
    assert primary_rows(pg, pg_schema, "products")["p1"][0] == {"poison": True, "price": -1}
    audit = pg.execute(f'SELECT actor, action, target FROM "{pg_schema}".audit_log ORDER BY id').fetchall()
    assert ("alice", "deadletter.retried", "products/p1") in audit


def test_embedded_dead_letter_ids_are_validated(tmp_path: Any) -> None:
    with hybridstore.open(data_dir=tmp_path / "e", background=False) as store:
        for bad in (0, -1, True, "1"):
            with pytest.raises(hybridstore.ValidationError):
                store.retry_dead_letter(bad)  # type: ignore[arg-type]
        with pytest.raises(hybridstore.ValidationError, match="no dead letter"):
            store.retry_dead_letter(7)


def test_a_wrong_passphrase_does_not_mark_a_good_backup_unverified(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "right one")
    store = make_store("n", background=False)
    for i in range(5):
        store.set("orders", f"o{i}", {"i": i})
    b = service(store)
    b.update_config(encrypt=True)
    info = b.create_manual_backup("before the typo")
    assert info.verified and info.encrypted
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "rigth one")
    with pytest.raises(WrongPassphraseError):
        b.verify_backup(info.id)
    assert b.get_backup(info.id).verified, "a typo is the user's mistake, not the file's"
    (on_primary,) = pg.execute(
        f'SELECT verified FROM "{pg_schema}".system_backups WHERE id = %s', (info.id,)
    ).fetchone()
    assert on_primary is True, "the node and the primary agree"
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "right one")
    assert b.verify_backup(info.id).records == 5


@pytest.mark.parametrize("background", [False, True])
def test_a_restore_reaches_the_primary_without_a_sync(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str, background: bool
) -> None:
    store = make_store("a", background=background)
    for i in range(20):
        store.set("orders", f"o{i:02d}", {"i": i})
    b = service(store)
    info = b.create_manual_backup()
    for i in range(10):
        store.delete("orders", f"o{i:02d}")
    store.set("orders", "o10", "damaged")
    report = b.restore_backup(info.id)
    assert report.written == 11
    expected = {f"o{i:02d}": {"i": i} for i in range(20)}

    def on_primary() -> dict[str, Any]:
        return {k: v for k, (v, _) in primary_rows(pg, pg_schema, "orders").items()}

    if background:
        wait_for(lambda: on_primary() == expected)  # the replayer's worker pushes them, as any queued write
    else:
        assert (report.pushed, report.still_queued) == (11, 0)
        assert on_primary() == expected, "pushed by the restore itself: no `sync` needed"


# -- backups by default, the same settings everywhere, failures alerted ------------------------------------------


def test_backups_run_by_default_with_background_work_and_not_for_an_empty_node(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "empty") as store:
        b = store.node.backups(start=False)
        wait_for(lambda: b.worker.rounds >= 1)
        assert b.list_backups() == [], "a new, empty node has nothing to back up"
    with hybridstore.open(data_dir=tmp_path / "full", background=False) as store:
        store.set("orders", "o1", {"n": 1})
    with hybridstore.open(data_dir=tmp_path / "full") as store:  # nobody touches store.backups
        wait_for(lambda: [x.kind for x in store.node.backups(start=False).list_backups()] == ["scheduled"])
        assert "hybridstore-backups" in [t.name for t in threading.enumerate()]
    with hybridstore.open(data_dir=tmp_path / "off", backups=False) as store:
        store.set("orders", "o1", {"n": 1})
        assert "hybridstore-backups" not in [t.name for t in threading.enumerate()]


def test_an_offline_node_uses_the_shared_backup_settings(
    make_store: StoreFactory, proxy: Proxy, proxied_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "shared secret")
    now = [1_800_000_000.0]
    a = make_store("a", background=False)
    b_store = make_store("b", primary=proxied_dsn, background=False, primary_timeout=1.0)
    b_store.set("orders", "o1", {"n": 1})
    a_backups = service(a, clock=lambda: now[0])
    b_backups = service(b_store, clock=lambda: now[0])
    assert not b_backups.get_config().encrypt
    now[0] += 1
    a_backups.update_config(encrypt=True)  # another node changes the shared setting
    now[0] += 61  # b reads the shared settings again within a minute, and keeps a local copy
    assert b_backups.get_config().encrypt
    proxy.cut()
    b_store.node.gateway.probe_now()  # b is offline now: the circuit opens, an emergency backup is requested
    assert not b_store.node.gateway.allow()
    taken = b_backups.tick()
    assert "emergency" in [x.kind for x in taken]
    assert all(x.encrypted and x.source == "local" for x in taken)
    fresh = service(b_store, clock=lambda: now[0])  # e.g. after a restart: only the local copy is reachable
    assert fresh.get_config().encrypt
    assert fresh.create_manual_backup("offline").encrypted
    proxy.restore()


def test_a_failing_automatic_backup_raises_an_alert_until_one_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "pw")
    now = [1_800_000_000.0]
    with hybridstore.open(data_dir=tmp_path / "n", background=False) as store:
        store.set("orders", "o1", {"n": 1})
        b = service(store, clock=lambda: now[0])
        b.update_config(encrypt=True)
        monkeypatch.delenv("HYBRIDSTORE_BACKUP_PASSPHRASE")
        assert b.tick() == []  # the scheduled backup cannot be encrypted: no passphrase
        (alert,) = [a for a in store.recovery.alerts(active=True) if a.kind == "backup_failed"]
        assert "passphrase" in alert.message.lower() and alert.severity == "critical"
        assert b.tick() == [], "backs off: not retried at every round"
        monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "pw")
        now[0] += 301
        assert [x.kind for x in b.tick()] == ["scheduled"]
        assert not store.recovery.book.is_active("backup_failed")
        kinds = [e.kind for e in store.node.events.since(0)]
        assert kinds.count("backup_failed") == 1 and kinds.count("backup_taken") == 1


def test_no_backup_is_taken_from_a_local_store_awaiting_its_rebuild(tmp_path: Path) -> None:
    with hybridstore.open(data_dir=tmp_path / "n", background=False) as store:
        store.set("orders", "o1", {"n": 1})
        b = service(store)
        store.node.slot.hold("integrity check failed (test)")
        with pytest.raises(hybridstore.BackupError, match="not usable"):
            b.create_manual_backup()
        assert b.list_backups() == []


# -- a write is acknowledged only once it is stored ----------------------------------------------------------------


def _future_stamp(node: str, days: int = 3) -> str:
    from hybridstore.clock import wall_ms

    return f"{wall_ms() + days * 86_400_000:012x}.000000.{node}"


def test_a_value_stamped_in_the_far_future_does_not_swallow_later_local_writes(tmp_path: Path) -> None:
    """A node whose clock runs days ahead wrote a key; our clock refuses to adopt that stamp (drift guard), yet
    every later local write to the key must be stored, read back, and ordered after it."""
    from hybridstore.model import StoredRow

    with hybridstore.open(data_dir=tmp_path / "n", background=False, read_policy="local_first") as store:
        local = store.node.slot.tier
        assert local is not None
        future = _future_stamp("skewed")
        local.store_synced(StoredRow("prices", "p1", '{"v":"from the future"}', 7, future, "skewed", 1.0, 1.0))
        store.node.clock.observe(future)  # refused: more than 24 h ahead
        result = store.set("prices", "p1", {"v": "mine"})
        assert result.queued and result.hlc > future
        rec = store.get("prices", "p1")
        assert rec is not None and rec.value == {"v": "mine"}, "acknowledged, so stored and read back"
        many = store.set_many("prices", [("p1", {"v": "bulk"})])
        assert many[0].hlc > result.hlc
        assert store.get("prices", "p1").value == {"v": "bulk"}  # type: ignore[union-attr]
        assert store.health()["outbox"]["depth"] == 1, "embedded: the key's newest op only"


def test_journal_replay_keeps_acknowledged_writes_and_lets_newer_ones_win(tmp_path: Path) -> None:
    """Replaying the journal: a journaled write older than a value another node wrote since loses under
    last-writer-wins (counted as superseded, not silently); one older than a far-future stamp is re-stamped."""
    from hybridstore.model import Op, StoredRow

    with hybridstore.open(data_dir=tmp_path / "n", background=False) as store:
        node = store.node
        local = node.slot.tier
        assert local is not None
        old = node.clock.now()
        newer = node.clock.now()
        local.store_synced(
            StoredRow("c", "legit", '"newer, from elsewhere"', 3, newer.replace(node.node_id, "zz"), "zz", 1.0, 1.0)
        )
        local.store_synced(StoredRow("c", "skewed", '"from the future"', 3, _future_stamp("zz"), "zz", 1.0, 1.0))
        node.journal.put(Op("j1", "c", "legit", '"journaled"', old, node.node_id, 0, 1.0))
        node.journal.put(Op("j2", "c", "skewed", '"journaled"', old, node.node_id, 0, 1.0))
        report = store.sync_now()
        assert report.journal_replayed == 1 and len(node.journal) == 0
        assert node.replayer.totals.superseded == 1
        assert store.get("c", "legit").value == "newer, from elsewhere"  # type: ignore[union-attr]
        assert store.get("c", "skewed").value == "journaled"  # type: ignore[union-attr]


# -- no call waits on the primary longer than primary_timeout ------------------------------------------------------


def test_first_writes_after_a_restart_never_wait_on_a_migration_lock(
    make_store: StoreFactory, pg_dsn: str, pg_schema: str
) -> None:
    """Another node holds the schema's migration lock (it is migrating, or stuck): a node restarting on a current
    schema writes through at once, and on a schema that needs migrating it queues within the timeout."""
    import time as _time

    first = make_store("a", background=False)
    first.set("c", "warm", 1)  # the schema exists and is current
    first.close()
    with psycopg.connect(pg_dsn, autocommit=True) as locker:
        locker.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"hybridstore:{pg_schema}",))
        store = make_store("b", background=False, primary_timeout=0.5)
        started = _time.monotonic()
        assert store.set("c", "k", 1).tier == "primary", "a current schema is recognised without the lock"
        assert _time.monotonic() - started < 0.5
        fresh = pg_schema + "_new"  # a schema that still needs its migrations, locked by "another node"
        locker.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"hybridstore:{fresh}",))
        late = make_store("c", background=False, primary_timeout=0.5, primary_schema=fresh)
        started = _time.monotonic()
        results = [late.set("c", f"q{i}", i) for i in range(5)]
        elapsed = _time.monotonic() - started
        assert all(r.queued for r in results), "the migration cannot take its lock: the writes are queued"
        assert elapsed < 0.5 * 2 + 0.3, f"bounded by primary_timeout, not the migration's budget: {elapsed:.2f}s"
        locker.execute("SELECT pg_advisory_unlock_all()")
    try:
        report = late.sync_now()
        assert report.remaining == 0 and report.pushed == 5
    finally:
        late.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE')


# -- an embedded store's disk use follows its records ----------------------------------------------------------


def test_an_embedded_store_keeps_one_queued_op_per_key_and_delivers_the_newest_later(
    tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]
) -> None:
    data = tmp_path / "terminal"
    keys, rounds = 200, 50
    with hybridstore.open(data_dir=data, background=False) as store:
        for r in range(rounds):
            store.set_many("stock", [(f"k{i:03d}", {"qty": r, "i": i}) for i in range(keys)])
            for i in range(0, keys, 7):
                store.set("stock", f"k{i:03d}", {"qty": r, "i": i, "single": True})
        store.delete("stock", "k001")
        assert store.health()["outbox"]["depth"] == keys, "one queued op per key, not one per write"
    size = sum(p.stat().st_size for p in data.glob("local.db*"))
    assert size < 2_000_000, f"disk use follows the records ({keys} keys), not the {rounds * keys} writes: {size}"
    with hybridstore.open(pg_dsn, data_dir=data, primary_schema=pg_schema, background=False) as store:
        report = store.sync_now()  # a primary attached later receives every key's newest value
        assert report.remaining == 0 and report.pushed == keys
    rows = primary_rows(pg, pg_schema, "stock")
    assert len(rows) == keys - 1 and "k001" not in rows
    last = rounds - 1
    assert all(rows[f"k{i:03d}"][0]["qty"] == last for i in range(keys) if i != 1)
    assert all(rows[f"k{i:03d}"][0].get("single") for i in range(0, keys, 7) if i != 1)


def test_the_recovery_history_is_bounded(tmp_path: Path) -> None:
    from hybridstore.recovery.alerts import Alert
    from hybridstore.recovery.history import RecoveryHistory, StrategyEvent

    history = RecoveryHistory(tmp_path / "recovery.db", keep=50)
    for i in range(300):
        history.save_event(StrategyEvent("sync_retry", float(i), f"event {i}", "succeeded", float(i) + 1))
        history.save_alert(Alert("low_storage", "warning", f"alert {i}", float(i), "n", {}, float(i) + 0.5))
    history.save_alert(Alert("primary_outage", "critical", "still active", 0.0, "n", {}))
    events, alerts = history.load_events(1000), history.load_alerts(1000)
    assert 50 <= len(events) <= 55 and events[-1].summary == "event 299", "the newest are kept"
    assert any(a.message == "still active" for a in alerts), "an active alert is never dropped"
    assert len([a for a in alerts if a.resolved_at is not None]) <= 55
    history.close()


def test_a_failing_journal_replay_backs_off(tmp_path: Path) -> None:
    """While SQLite stays full, the replayer does not re-read a growing journal every round: attempts double."""
    from hybridstore.node.timing import FakeClock

    from .faults import fill_sqlite, free_sqlite

    clock = FakeClock()
    with hybridstore.open(data_dir=tmp_path / "n", background=False, time=clock.source()) as store:
        store.set("c", "warm", 1)
        fill_sqlite(store)
        for i in range(30):
            assert store.set("c", f"big{i}", "x" * 5000).tier in ("local", "journal")
        replayer = store.node.replayer
        journal = store.node.journal
        assert len(journal) > 0
        attempts = 0
        inner = replayer.replay_journal_into

        def counted(local: Any) -> int:
            nonlocal attempts
            attempts += 1
            return inner(local)

        replayer.replay_journal_into = counted  # type: ignore[method-assign]
        for _ in range(60):  # a minute of rounds, one a second
            replayer.run_once()
            clock.advance(1.0)
        assert 5 <= attempts <= 8, f"1, 2, 4, 8, 16, 30 s apart, not 60 attempts: {attempts}"
        free_sqlite(store)
        store.sync_now()  # an explicit sync replays at once
        assert len(journal) == 0


def test_changing_an_unrelated_backup_setting_needs_no_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "pw")
    with hybridstore.open(data_dir=tmp_path / "n", background=False) as store:
        b = service(store)
        b.update_config(encrypt=True)
        monkeypatch.delenv("HYBRIDSTORE_BACKUP_PASSPHRASE")
        assert b.update_config(interval_hours=6).interval_hours == 6
        with pytest.raises(hybridstore.ConfigError, match="passphrase"):
            b.update_config(encrypt=True)


def test_a_restore_that_cannot_read_the_current_values_writes_nothing(tmp_path: Path) -> None:
    """`overwrite=False` must never overwrite: when the current values cannot be read (no usable local copy and
    no primary to ask), the restore stops with an error instead of taking every key for absent."""
    with hybridstore.open(data_dir=tmp_path / "n", background=False, read_policy="local_first") as store:
        store.set("orders", "o1", {"v": "original"})
        b = service(store)
        info = b.create_manual_backup()
        store.set("orders", "o1", {"v": "edited since"})
        local = store.node.slot.take()  # the local copy is unusable (as during a rebuild)
        try:
            with pytest.raises(hybridstore.LocalStoreError, match="current values"):
                b.restore_backup(info.id, overwrite=False, dry_run=True)
            with pytest.raises((hybridstore.LocalStoreError, hybridstore.BackupError)):  # no safety backup either
                b.restore_backup(info.id, overwrite=False)
        finally:
            assert local is not None
            store.node.slot.swap(local)
        assert store.get("orders", "o1").value == {"v": "edited since"}  # type: ignore[union-attr]
