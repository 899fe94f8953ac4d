"""Nodes sharing a primary: each writes a heartbeat row (migration 0006), any of them lists all of them
(`store.nodes()`, ``GET /api/v1/nodes``, ``hybridstore nodes``), a silent one is called stale, a stopped one says so.
No thread is started: the tests write the heartbeats themselves (`Heartbeat.beat` / `run_once`)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

import hybridstore
from hybridstore.cli import app as cli_app
from hybridstore.errors import PrimaryUnavailableError
from hybridstore.node.heartbeat import FIELDS, FIRST_BEAT_RETRY, is_stale, node_view
from hybridstore.node.timing import FakeClock

from . import test_web_api as base
from .fix_db import StoreFactory

make_web = base.make_web  # the fixture
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


def epoch(iso: str | None) -> float:
    assert iso is not None
    return datetime.fromisoformat(iso).timestamp()


def test_node_view_has_exactly_the_contract_fields_and_staleness_is_three_intervals() -> None:
    row = ("n1", "host-a", "1.2.3", 1000.0, 15.0, "healthy", 7, 990.5, None)
    view = node_view(row, now=1045.0)
    assert tuple(view) == FIELDS
    assert view["last_heartbeat"] == "1970-01-01T00:16:40+00:00" and view["last_push"] is not None
    assert view["last_pull"] is None and view["outbox_depth"] == 7 and view["stale"] is False
    assert node_view(row, now=1045.01)["stale"] is True  # silent for more than 3 intervals of 15 s
    assert not is_stale(1000.0, 15.0, 5000.0, "stopped")  # a node that said it stopped is stopped, not stale


def test_every_node_lists_every_node(make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    a = make_store("a", background=False, backups=False, heartbeat_interval=15.0)
    b = make_store("b", background=False, backups=False, heartbeat_interval=15.0, write_mode="local_first")
    for i in range(3):
        b.set("orders", f"o{i}", {"n": i})  # queued: b's outbox holds 3
    a.set("orders", "x", 1)  # written through: a's last push stays unset, it has pushed nothing
    for store in (a, b):
        store.recovery.check()
        assert store.node.heartbeat.beat()
    seen_by_a, seen_by_b = a.nodes(), b.nodes()
    assert seen_by_a == seen_by_b
    by_id = {n["node_id"]: n for n in seen_by_a}
    assert set(by_id) == {a.node_id, b.node_id}
    assert all(tuple(n) == FIELDS for n in seen_by_a)
    assert by_id[b.node_id]["outbox_depth"] == 3 and by_id[a.node_id]["outbox_depth"] == 0
    assert by_id[a.node_id]["state"] == "healthy" and not by_id[a.node_id]["stale"]
    assert by_id[a.node_id]["version"] and by_id[a.node_id]["host"]
    b.sync_now()
    b.node.heartbeat.beat()
    after = {n["node_id"]: n for n in a.nodes()}[b.node_id]
    assert after["outbox_depth"] == 0 and after["last_push"] is not None
    assert epoch(after["last_heartbeat"]) >= epoch(by_id[b.node_id]["last_heartbeat"])

    # silent for 100 s with a 15 s interval: stale (the primary's clock decides, for every reader alike)
    pg.execute(
        f"UPDATE \"{pg_schema}\".nodes SET last_heartbeat = now() - interval '100 seconds' WHERE node_id = %s",
        (b.node_id,),
    )
    assert {n["node_id"]: n["stale"] for n in a.nodes()} == {a.node_id: False, b.node_id: True}


def test_heartbeats_skip_an_open_circuit_and_the_list_survives_it(make_store: StoreFactory) -> None:
    a = make_store("a", background=False, backups=False)
    b = make_store("b", background=False, backups=False)
    for store in (a, b):
        store.node.heartbeat.beat()
    before = a.nodes()
    hb = a.node.heartbeat
    a.node.gateway.circuit.trip()  # the primary is known to be down: nothing may wait on it
    beats = hb.beats
    assert hb.run_once() == hb.interval
    assert hb.beats == beats and hb.skipped == 1
    during = {n["node_id"]: n for n in a.nodes()}  # the rows last read, this node's own as it is now
    assert set(during) == {n["node_id"] for n in before}
    assert during[b.node_id] == {n["node_id"]: n for n in before}[b.node_id]
    fresh = make_store("c", background=False, backups=False)
    fresh.node.gateway.circuit.trip()
    with pytest.raises(PrimaryUnavailableError):
        fresh.nodes()  # nothing read yet: say so rather than pretend it is alone
    # A node whose first beat has not reached the primary tries again soon, not after a whole interval.
    first = fresh.node.heartbeat
    assert first.run_once() == FIRST_BEAT_RETRY < first.interval and first.beats == 0
    fresh.node.gateway.circuit.record_success()  # the primary answers again
    assert first.run_once() == first.interval and first.beats == 1


def test_staleness_goes_on_while_the_primary_cannot_be_asked(make_store: StoreFactory) -> None:
    clock = FakeClock()
    a = make_store("a", background=False, backups=False, time=clock.source())
    b = make_store("b", background=False, backups=False)
    for store in (a, b):
        store.node.heartbeat.beat()
    assert not {n["node_id"]: n for n in a.nodes()}[b.node_id]["stale"]
    a.node.gateway.circuit.trip()
    clock.advance(40.0)  # < 3 intervals of 15 s since the rows were read
    assert not {n["node_id"]: n for n in a.nodes()}[b.node_id]["stale"]
    clock.advance(10.0)  # > 45 s: b has not been heard of for too long, as far as a can tell
    during = {n["node_id"]: n for n in a.nodes()}
    assert during[b.node_id]["stale"] and not during[a.node_id]["stale"]  # a is alive: it answers


def test_a_node_that_stops_says_so(make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str) -> None:
    store = make_store("a", background=False, backups=False, heartbeat_interval=3600.0)
    node_id = store.node_id
    store.node.gateway.tick()  # what the prober does first at start: the schema is brought up to date
    store.node.heartbeat.start()  # its first round writes the row at once
    table = f'"{pg_schema}".nodes'
    deadline = time.monotonic() + 10
    while not pg.execute(f"SELECT 1 FROM {table} WHERE node_id = %s", (node_id,)).fetchall():
        assert time.monotonic() < deadline, "no heartbeat row"
        time.sleep(0.02)
    store.close()
    assert pg.execute(f"SELECT state FROM {table} WHERE node_id = %s", (node_id,)).fetchone() == ("stopped",)


def test_a_command_that_never_beat_writes_no_row(
    make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    store = make_store("a", background=False, backups=False)
    store.node.gateway.tick()
    store.close()  # e.g. a CLI command on a snapshot copy sharing a running node's id: it must not say "stopped"
    assert pg.execute(f'SELECT count(*) FROM "{pg_schema}".nodes').fetchone() == (0,)


def test_embedded_node_lists_itself(make_store: StoreFactory) -> None:
    store = make_store("solo", primary=False, background=False, backups=False)
    store.recovery.check()
    (me,) = store.nodes()
    assert me["node_id"] == store.node_id and me["state"] == "healthy" and me["stale"] is False


def test_nodes_over_http_and_the_cli(make_web: base.WebFactory, tmp_path: Path) -> None:
    web = make_web("a")
    web.store.node.heartbeat.beat()
    r = web.get("/api/v1/nodes")
    assert r.status_code == 200, r.text
    assert [n["node_id"] for n in r.json()["nodes"]] == [web.store.node_id]
    assert web.client.get("/api/v1/nodes").status_code == 401

    d = tmp_path / "cli"
    with hybridstore.open(data_dir=d, background=False) as store:
        node_id = store.node_id
    result = CliRunner().invoke(cli_app, ["-d", str(d), "nodes", "--json"])
    assert result.exit_code == 0, result.output
    (me,) = json.loads(result.stdout)
    assert me["node_id"] == node_id and tuple(me) == FIELDS


def test_an_admin_forgets_a_node_taken_out_of_service(
    make_web: base.WebFactory, make_store: StoreFactory, pg: psycopg.Connection[Any], pg_schema: str
) -> None:
    web = make_web("a")
    gone = make_store("gone", background=False, backups=False)
    for node in (web.store.node, gone.node):
        node.heartbeat.beat()
    url = f"/api/v1/nodes/{gone.node_id}"
    admin = web.auth("admin")
    assert web.client.delete(url, headers=web.auth("read")).status_code == 403
    refused = web.client.delete(url, headers=admin)
    assert refused.status_code == 422 and refused.json()["type"].endswith("confirmation-required")
    alive = web.client.delete(url, headers=admin, params={"confirm": gone.node_id})
    assert alive.status_code == 409 and "alive" in alive.json()["detail"]  # it would write its row again
    itself = f"/api/v1/nodes/{web.store.node_id}"
    assert web.client.delete(itself, headers=admin, params={"confirm": web.store.node_id}).status_code == 409
    pg.execute(
        f"UPDATE \"{pg_schema}\".nodes SET last_heartbeat = now() - interval '1 hour' WHERE node_id = %s",
        (gone.node_id,),
    )
    done = web.client.delete(url, headers=admin, params={"confirm": gone.node_id})
    assert done.status_code == 200 and done.json()["forgotten"]["stale"] is True
    assert [n["node_id"] for n in web.get("/api/v1/nodes").json()["nodes"]] == [web.store.node_id]
    unknown = web.client.delete(url, headers=admin, params={"confirm": gone.node_id})
    assert unknown.status_code == 422
    entries = web.get("/api/v1/audit", scope="admin").json()["entries"]
    outcomes = [e["outcome"] for e in entries if e["action"] == "node.forget"]
    assert outcomes.count("ok") == 1 and "failed: conflict" in outcomes
