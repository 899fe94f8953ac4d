"""Convergence under faults: three nodes write an overlapping set of keys while their links are cut, black-holed,
slowed down and restored, and one of them is killed (SIGKILL) and opened again. Each time everything has healed
and sync has settled: (a) no acknowledged write is lost, (b) every node holds the primary's row for every key,
(c) under last_wins the primary holds the acknowledged write with the greatest HLC.

- A: this process, direct link, ``local_first`` with one op per push (a key's queued writes reach the primary one
  by one: a second queued write follows one that lost), closed and opened again midway.
- B: this process, behind a link that is cut, black-holed and restored; write-through (queued while down).
- C: this process first; then, three times, a process of its own with its real threads (replayer, puller) behind
  a slow link (answers 0-300 ms late: its pushes are answered late while the others keep writing the same keys),
  killed with SIGKILL (once at a random point of a write, twice once it has stopped writing and settled), and
  each time opened in this process again from what the kill left on disk.

Everything this process does follows one seeded RNG (``HYBRIDSTORE_CONVERGENCE_SEED`` picks another history); the
child's timing is real time (it is the point). Keys are drawn with a skew (a few hot keys), as real traffic is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import psycopg
import pytest

import hybridstore
from hybridstore import HybridStore, WriteResult

from .faults import wait_for
from .fix_db import StoreFactory
from .fix_proxy import Proxy
from .test_sync import converge

pytestmark = [pytest.mark.resilience, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
COLLECTION = "reg"
KEYS = [f"k{i:02d}" for i in range(20)]
HOT = KEYS[:4]
SEED = int(os.environ.get("HYBRIDSTORE_CONVERGENCE_SEED", "20261130"))


def pick_key(rng: Random) -> str:
    return rng.choice(HOT) if rng.random() < 0.4 else rng.choice(KEYS)


Link = Proxy  # its cut() closes the listener for real: restore() listens on the same port again


class SlowLink(Proxy):
    """A proxy whose answers from the server can be made late (``latency``: each chunk waits a random time)."""

    def __init__(self, target_host: str, target_port: int, *, seed: int) -> None:
        super().__init__(target_host, target_port, seed=seed)


@dataclass
class History:
    """Every acknowledged write per key: (HLC, value or None for a delete, node); and the writes a killed child
    tried but never acknowledged (it may have made them durable all the same)."""

    acked: dict[str, list[tuple[str, Any, str]]] = field(default_factory=dict)
    unacked: dict[str, list[Any]] = field(default_factory=dict)

    def record(self, key: str, value: Any, result: WriteResult, node: str) -> None:
        self.acked.setdefault(key, []).append((result.hlc, value, node))


# -- the child node ------------------------------------------------------------------------------------------------


def child_main(argv: list[str]) -> None:
    """Node C in a process of its own: random sets and deletes with its real threads. Prints ``try key value``
    before each write and ``ack key value hlc`` once it is acknowledged (value: JSON, ``-`` for a delete). A line
    ``stop`` on stdin ends the writes; it prints ``idle`` once its outbox is empty, and waits to be killed. It
    exits when stdin closes."""
    url, data_dir, schema, seed, run = argv
    rng = Random(int(seed))
    store = hybridstore.open(
        url,
        data_dir=data_dir,
        primary_schema=schema,
        node_id="C",
        write_mode="local_first",
        pull_interval=0.05,
        backups=False,
    )
    stop = threading.Event()

    def commands() -> None:
        if sys.stdin.readline():
            stop.set()
            sys.stdin.readline()
        os._exit(1)  # stdin closed: the test is gone, and so is this node

    threading.Thread(target=commands, daemon=True).start()
    store.sync_now()  # connected (through the slow link: a few round trips) and caught up before writing
    print("ready", flush=True)
    n = 0
    while not stop.is_set():
        key = pick_key(rng)
        value = None if rng.random() < 0.2 else f"C{run}-{n}"
        text = "-" if value is None else json.dumps(value)
        print("try", key, text, flush=True)
        result = store.delete(COLLECTION, key) if value is None else store.set(COLLECTION, key, value)
        print("ack", key, text, result.hlc, flush=True)
        n += 1
        time.sleep(rng.uniform(0.0, 0.03))
    while store.sync_status()["outbox"]["depth"]:
        time.sleep(0.01)
    print("idle", flush=True)
    threading.Event().wait()


class Child:
    """Node C running `child_main` in a process of its own."""

    def __init__(self, url: str, data_dir: Path, schema: str, seed: int, run: int) -> None:
        code = "import sys; from tests.test_convergence import child_main; child_main(sys.argv[1:])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, url, str(data_dir), schema, str(seed), str(run)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", "the child node did not start"
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="child-reader")
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout or []:
            self.lines.append(line.rstrip("\n"))

    def stop_writing(self) -> None:
        """Stop the writes and wait until the child has pushed them all (its threads keep running)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        wait_for(lambda: "idle" in self.lines[-1:], timeout=20)

    def close(self) -> None:
        """Make sure the process is gone (a failed test must not leave it writing)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def kill(self, history: History) -> int:
        """SIGKILL (at whatever point it is); record its acknowledged writes; returns how many."""
        self.proc.send_signal(signal.SIGKILL)
        self.close()
        tried: dict[str, Any] = {}
        acked = 0
        for line in self.lines:
            parts = line.split(" ")
            if parts[0] == "try" and len(parts) == 3:
                tried[parts[1]] = None if parts[2] == "-" else json.loads(parts[2])
            elif parts[0] == "ack" and len(parts) == 4:  # a line cut by the kill was not seen: not acknowledged
                value = None if parts[2] == "-" else json.loads(parts[2])
                history.acked.setdefault(parts[1], []).append((parts[3], value, "C"))
                tried.pop(parts[1], None)
                acked += 1
        for key, value in tried.items():
            history.unacked.setdefault(key, []).append(value)
        return acked


# -- the checks ----------------------------------------------------------------------------------------------------


def primary_state(pg: psycopg.Connection[Any], schema: str) -> tuple[dict[str, tuple[str, Any]], dict[str, str]]:
    """The primary's (HLC, value) per key, and the node that wrote each."""
    rows = pg.execute(
        f'SELECT key, hlc, value, origin FROM "{schema}".records WHERE collection = %s AND version > 0', (COLLECTION,)
    ).fetchall()
    return {k: (h, v) for k, h, v, _ in rows}, {k: o for k, _, _, o in rows}


def local_state(store: HybridStore) -> dict[str, tuple[str, Any]]:
    tier = store.node.slot.tier
    assert tier is not None
    rows = tier.get_many(COLLECTION, KEYS)
    return {r.key: (r.hlc, None if r.value_json is None else json.loads(r.value_json)) for r in rows}


def check(
    history: History, primary: dict[str, tuple[str, Any]], origins: dict[str, str], nodes: dict[str, HybridStore]
) -> None:
    lost, wrong_winner, diverged = [], [], []
    for key, writes in sorted(history.acked.items()):
        hlc, value, node = max(writes)
        if key not in primary or primary[key][0] < hlc:
            lost.append(f"{key}: acknowledged {value!r} by {node} at {hlc}, primary has {primary.get(key)}")
        elif primary[key] != (hlc, value) and not (
            # Only a write the killed child made durable without acknowledging it may be newer still.
            primary[key][0] > hlc and origins[key] == "C" and primary[key][1] in history.unacked.get(key, [])
        ):
            wrong_winner.append(f"{key}: newest acknowledged {value!r} by {node} at {hlc}, primary has {primary[key]}")
    for name, store in nodes.items():
        local = local_state(store)
        diverged += [
            f"{name}/{k}: {local.get(k)} != primary {primary.get(k)}" for k in KEYS if local.get(k) != primary.get(k)
        ]
    assert not lost, f"(a) acknowledged writes lost: {lost}"
    assert not wrong_winner, f"(c) last_wins did not keep the greatest HLC: {wrong_winner}"
    assert not diverged, f"(b) nodes differ from the primary: {diverged}"


# -- the test ------------------------------------------------------------------------------------------------------


def test_three_nodes_converge_under_faults_and_a_kill(
    make_store: StoreFactory, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = Random(SEED)
    history = History()
    link_b = Link("127.0.0.1", 5432)
    link_c = SlowLink("127.0.0.1", 5432, seed=rng.randrange(1 << 30))
    links = {"B": link_b, "C": link_c}
    nodes: dict[str, HybridStore] = {}
    children: list[Child] = []
    written = [0]

    def open_node(name: str) -> HybridStore:
        link = links.get(name)
        store = make_store(
            name,
            primary=True if link is None else link.url(pg_dsn),
            node_id=name,
            write_mode="write_through" if name == "B" else "local_first",
            primary_timeout=2.0 if name == "A" else 0.5,
            batch_size=1 if name == "A" else 1000,
            background=False,
            backups=False,
        )
        if name == "A":
            store.node.replayer.batch_max = 1  # one op per push, always: a key's queued ops in separate batches
        return store

    def write(name: str) -> None:
        key = pick_key(rng)
        written[0] += 1
        value = None if rng.random() < 0.2 else f"{name}-{written[0]}"
        store = nodes[name]
        result = store.delete(COLLECTION, key) if value is None else store.set(COLLECTION, key, value)
        history.record(key, value, result, name)

    def fault(link: Proxy) -> None:
        choice = rng.random()
        if choice < 0.4:
            link.cut()
        elif choice < 0.55 and link.mode != "blackhole":
            link.blackhole()
        else:
            link.restore()

    def pull(name: str) -> None:
        puller = nodes[name].node.puller  # a pull alone: rows of keys with pending ops are skipped
        assert puller is not None
        with contextlib.suppress(hybridstore.PrimaryUnavailableError):
            puller.pull()

    def step(faults: bool) -> None:
        r = rng.random() * (1.0 if faults else 0.84)
        name = rng.choice(sorted(nodes))
        if r < 0.7:
            write(name)
        elif r < 0.78:
            nodes[name].sync_now()
        elif r < 0.84:
            pull(name)
        elif r < 0.92:
            fault(link_b)
        else:
            fault(link_c)

    def heal_and_check() -> None:
        for link in links.values():
            link.restore()
        converge(*rng.sample(list(nodes.values()), len(nodes)), timeout=30)  # the order nodes sync in matters
        check(history, *primary_state(pg, pg_schema), nodes)

    try:
        # Phase 1, by hand: A, B and C in this process, every link faulty; A closed and opened again midway; every
        # 25 steps the links heal and the rules are checked (a later write would hide a broken one).
        nodes.update((name, open_node(name)) for name in "ABC")
        for i in range(1, 201):
            step(faults=True)
            if i == 100:
                nodes["A"].close()
                nodes["A"] = open_node("A")
            if i % 25 == 0:
                heal_and_check()

        # Phase 2, three rounds: C is a process of its own behind a slow link, with its real threads, while A and B
        # keep writing the same keys. In the first round it is killed at a random point of a write; in the others
        # A's and B's last writes reach the primary while C still writes (its pushes answered late), then C stops
        # writing and is killed once it has pushed everything. Then C is opened in this process from what the kill
        # left on disk, the links heal, and the rules are checked.
        acked_before = sum(len(w) for w in history.acked.values())
        for run in range(3):
            nodes.pop("C").close()
            link_c.latency(150, 150)  # 0-300 ms
            child = Child(link_c.url(pg_dsn), tmp_path / "C", pg_schema, rng.randrange(1 << 30), run)
            children.append(child)
            for _ in range(60):
                step(faults=False)
                time.sleep(rng.uniform(0.0, 0.04))  # let the child's threads and the slow link run meanwhile
            if run:
                nodes["A"].sync_now()  # whatever A queued, then B rewriting every key
                for key in KEYS:
                    written[0] += 1
                    history.record(key, f"B-{written[0]}", nodes["B"].set(COLLECTION, key, f"B-{written[0]}"), "B")
                child.stop_writing()
            assert child.kill(history) > 10, "the child node had time to write"
            link_c.latency(0)
            nodes["C"] = open_node("C")
            heal_and_check()
        assert sum(len(w) for w in history.acked.values()) - acked_before > 150, "everyone had time to write"
        assert link_b.accepted > 1 and link_c.accepted > 1
    finally:
        for child in children:
            child.close()
        link_b.close()
        link_c.close()
    assert time.monotonic() - started < 60
