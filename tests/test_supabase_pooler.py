"""Through a transaction-mode PgBouncer on a port that says nothing (not 6543): the pooler is recognised from how
the server behaves, no prepared-statement error reaches a caller, server-side limits hold per transaction, a
killed or frozen pooler loses nothing, migrations from many processes do not race, and a session URL keeps LISTEN
working."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import hybridstore
from hybridstore import HybridStore
from hybridstore.migrations import latest_version
from hybridstore.tiers.connection import pooling_from_url, split_pooled_param
from hybridstore.tiers.primary import PrimaryTier

from .faults import wait_for
from .fix_db import StoreFactory, primary_rows
from .fix_pgbouncer import PgBouncer
from .fix_proxy import Proxy
from .test_sync import local_value

ROOT = Path(__file__).resolve().parent.parent


def ready(store: HybridStore) -> HybridStore:
    """One probe (and with it the schema check and the pooler check), as the prober's first tick does."""
    store.node.gateway.tick()
    assert store.node.gateway.snapshot()["state"] == "healthy", store.node.gateway.snapshot()
    return store


# -- what the URL says --------------------------------------------------------------------------------------------


def test_the_url_says_transaction_pooler_session_pooler_or_nothing() -> None:
    assert pooling_from_url(conninfo_to_dict("postgresql://u@aws-0-eu.pooler.supabase.com:6543/postgres")) is True
    assert pooling_from_url(conninfo_to_dict("postgresql://u@aws-0-eu.pooler.supabase.com:5432/postgres")) is False
    assert pooling_from_url(conninfo_to_dict("postgresql://u@aws-0-eu.pooler.supabase.com/postgres")) is False
    assert pooling_from_url(conninfo_to_dict("postgresql://u@db.abc.supabase.co:5432/postgres")) is None
    assert pooling_from_url(conninfo_to_dict("postgresql://u@10.0.0.5:6432/app")) is None  # PgBouncer: ask it
    assert split_pooled_param("postgresql://u@h:6432/db?pgbouncer=true&sslmode=require") == (
        "postgresql://u@h:6432/db?sslmode=require",
        True,
    )
    assert split_pooled_param("host=h port=6543 hybridstore_pooled=false") == ("host=h port=6543", False)
    with pytest.raises(hybridstore.ConfigError, match="pgbouncer"):
        split_pooled_param("postgresql://u@h/db?pgbouncer=perhaps")
    forced = PrimaryTier("postgresql://u@127.0.0.1:6543/x?hybridstore_pooled=false", timeout=1.0)
    session = PrimaryTier("postgresql://u@x.pooler.supabase.com:5432/x", timeout=1.0)
    try:
        assert not forced.pooled and "statement_timeout=1000" in forced._conninfo
        assert not session.pooled and session.can_listen, "Supabase's session pooler keeps LISTEN"
    finally:
        forced.close()
        session.close()


# -- detection by behaviour --------------------------------------------------------------------------------------


def test_a_pooler_on_any_port_is_recognised_by_its_behaviour(
    make_store: StoreFactory, pg_dsn: str, pgbouncer: PgBouncer, proxy: Proxy, proxied_dsn: str
) -> None:
    pooled = ready(make_store("pooled", primary=pgbouncer.url(pg_dsn), background=False))
    tier = pooled.node.gateway.tier
    assert tier.pooled and "changes between transactions" in tier.pooled_reason
    assert "statement_timeout" not in tier._conninfo and not tier.can_listen
    facts = pooled.health()["primary"]["connection"]  # what status, health and the API show
    assert facts["pooled"] is True and facts["limits"] == "per transaction (SET LOCAL)"
    assert facts["listen"] == "off: polling" and "changes between transactions" in facts["pooled_because"]
    direct = ready(make_store("direct", background=False))
    assert not direct.node.gateway.tier.pooled and direct.node.gateway.tier.can_listen
    tcp = ready(make_store("tcp", primary=proxied_dsn, background=False))
    assert not tcp.node.gateway.tier.pooled, "a plain TCP hop is not a pooler"
    assert pooled.set("c", "k", {"v": 1}).tier == "primary"
    assert direct.get("c", "k").value == {"v": 1}  # type: ignore[union-attr]


def test_a_pooler_that_refuses_startup_options_is_used_without_them(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str, pgbouncer_strict: PgBouncer
) -> None:
    store = ready(make_store(primary=pgbouncer_strict.url(pg_dsn), background=False))
    tier = store.node.gateway.tier
    assert tier.pooled and not tier.startup_options and tier.per_transaction_limits
    assert "options" not in tier._conninfo
    assert store.set("c", "k", 1).tier == "primary" and not store.set("c", "k2", 2).queued
    assert primary_rows(pg, pg_schema) == {"k": (1, 1), "k2": (2, 1)}


def test_a_session_pooler_that_refuses_startup_options_keeps_listen(
    make_store: StoreFactory, pg_dsn: str, pg_schema: str
) -> None:
    """Session mode: one server connection per client, so not a transaction pooler (LISTEN and prepared statements
    work), but no ``options`` either: the limits go per transaction."""
    bouncer = PgBouncer(pg_dsn, ignore_options=False, pool_mode="session")
    try:
        url = bouncer.url(pg_dsn)
        writer = ready(make_store("w", primary=url, background=False))
        tier = writer.node.gateway.tier
        assert not tier.pooled, tier.pooled_reason
        assert not tier.startup_options and tier.per_transaction_limits and tier.can_listen
        reader = make_store("r", primary=url, pull_interval=30.0)
        wait_for(lambda: reader.sync_status()["listening"], timeout=10)
        writer.set("c", "k", 1)
        wait_for(lambda: local_value(reader, "c", "k") == 1, timeout=5)  # a notification, not a 30 s poll
    finally:
        bouncer.close()


def test_no_prepared_statement_error_reaches_a_caller(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str, pgbouncer: PgBouncer
) -> None:
    """Even told the wrong thing (``primary_pooled=False``), 1000 ops from 8 threads: 0 errors, every write
    stored. The server's behaviour is checked before the first call whatever the setting says (a prepared statement
    run by another client's server connection fails with any error, not only a prepared-statement one); should the
    check miss it by chance, the first prepared-statement error switches the tier to pooled mode and the call is
    retried."""
    store = ready(make_store(primary=pgbouncer.url(pg_dsn), primary_pooled=False, background=False))
    errors: list[BaseException] = []
    written: list[str] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(125):
            key = f"t{t}-{i % 25}"
            try:
                if i % 2:
                    store.get("c", key)
                else:
                    store.set("c", key, {"t": t, "i": i})
                    with lock:
                        written.append(key)
            except BaseException as exc:  # every error is the test's finding
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert errors == []
    tier = store.node.gateway.tier
    assert tier.pooled and tier.pooled_reason.startswith(
        (
            "a client's server connection changes between transactions",  # the check before the first call
            "prepared statements fail",  # or, should the check have missed it by chance, the first such error
        )
    ), tier.pooled_reason
    store.node.gateway.tick()
    wait_for(lambda: store.sync_now().remaining == 0, timeout=30)
    assert set(primary_rows(pg, pg_schema)) == set(written)


# -- limits per transaction --------------------------------------------------------------------------------------


def test_a_lock_held_longer_than_the_timeout_leaves_no_server_connection_waiting(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str, pgbouncer: PgBouncer
) -> None:
    store = ready(make_store(primary=pgbouncer.url(pg_dsn), primary_timeout=0.5, background=False))
    assert store.set("c", "hot", 0).tier == "primary"
    tier = store.node.gateway.tier
    app = tier.application_name
    limits = "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
    assert tier.query(limits) == [("500ms", "500ms")], "set per transaction, through the pooler"

    def waiting() -> int:
        row = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'", (app,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(pg_dsn) as holder:  # blocks every write to the table for the whole block (3 s+)
        holder.execute(f'LOCK TABLE "{pg_schema}".records IN EXCLUSIVE MODE')
        started = time.monotonic()
        results = []
        for i in range(4):
            store.node.gateway.circuit.record_success()  # let each write try the primary (a timeout opens it)
            results.append(store.set("c", f"k{i}", i))
        assert all(r.queued for r in results), "each write waited at most the timeout, then was queued"
        assert time.monotonic() - started < 4 * 0.5 + 3.0
        # The server cut each abandoned wait by itself (SET LOCAL lock_timeout), while the lock is still held: a
        # backend blocked on a lock does not notice that its client (the pooler) went away, so without it each
        # abandoned call would keep a server connection waiting until the lock is released.
        wait_for(lambda: waiting() == 0, timeout=2.0)
        time.sleep(0.5)
        assert waiting() == 0
    wait_for(lambda: store.node.gateway.probe_now() and store.sync_now().remaining == 0, timeout=10)
    assert set(primary_rows(pg, pg_schema)) == {"hot", "k0", "k1", "k2", "k3"}


# -- a killed and a frozen pooler --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_a_killed_or_frozen_pooler_loses_nothing(
    fault: str, make_store: StoreFactory, pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str, pgbouncer: PgBouncer
) -> None:
    store = ready(make_store(primary=pgbouncer.url(pg_dsn), primary_timeout=0.5, background=False))
    assert store.set("c", "before", 0).tier == "primary"
    if fault == "kill":
        pgbouncer.kill()
    else:
        pgbouncer.freeze()
    started = time.monotonic()
    results = [store.set("c", f"k{i}", i) for i in range(50)]
    assert all(r.queued for r in results) and time.monotonic() - started < 5.0
    if fault == "kill":
        pgbouncer.start()
    else:
        pgbouncer.thaw()
    wait_for(lambda: store.node.gateway.probe_now() and store.sync_now().remaining == 0, timeout=20)
    assert set(primary_rows(pg, pg_schema)) == {"before"} | {f"k{i}" for i in range(50)}
    assert store.set("c", "after", 1).tier == "primary"


# -- migrations from many processes ------------------------------------------------------------------------------

_MIGRATE = """
import sys
from hybridstore.tiers.primary import PrimaryTier
tier = PrimaryTier(sys.argv[1], schema=sys.argv[2], timeout=5.0)
try:
    print(",".join(map(str, tier.migrate())))
finally:
    tier.close()
"""


def test_migrations_from_many_processes_through_the_pooler_do_not_race(
    pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str, pgbouncer: PgBouncer
) -> None:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE, pgbouncer.url(pg_dsn), pg_schema],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(err[-1500:] for _, err in outs)
    applied = [out.strip() for out, _ in outs if out.strip()]
    every = ",".join(str(v) for v in range(1, latest_version("primary") + 1))
    assert applied == [every], "one process applied every migration, the others found them done"
    rows = pg.execute(f'SELECT version, count(*) FROM "{pg_schema}".hs_migrations GROUP BY 1 ORDER BY 1').fetchall()
    assert rows == [(v, 1) for v in range(1, latest_version("primary") + 1)]


# -- sync between nodes, and LISTEN through the session URL ------------------------------------------------------


def test_two_nodes_sync_through_the_pooler_and_listen_on_the_session_url(
    make_store: StoreFactory, pg_dsn: str, pgbouncer: PgBouncer
) -> None:
    url = pgbouncer.url(pg_dsn)
    writer = ready(make_store("w", primary=url, background=False))
    # A poll interval far longer than the deadline below: only a notification can make the change visible.
    polling = make_store("p", primary=url, pull_interval=30.0)
    listening = make_store("l", primary=url, primary_session_url=pg_dsn, pull_interval=30.0)
    wait_for(lambda: listening.sync_status()["listening"], timeout=10)
    assert listening.node.gateway.tier.pooled and not polling.sync_status()["listening"]
    facts = listening.health()["primary"]["connection"]
    assert facts["listen"] == "session URL" and facts["session_url"] == pg_dsn
    for i in range(5):
        start = time.monotonic()
        writer.set("c", f"k{i}", i)
        wait_for(lambda i=i: local_value(listening, "c", f"k{i}") == i, timeout=5, step=0.001)
        assert time.monotonic() - start < 5
    wait_for(lambda: local_value(polling, "c", "k4") == 4, timeout=5)  # polling: at most every second
