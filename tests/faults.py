"""Faults the tests cause for real in SQLite, and a polling helper. Importable as ``tests.faults`` and, by the
crash-test child process (run as a script from this folder), as ``faults``."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any


def fill_sqlite(store: Any) -> None:
    """Make SQLite report 'database or disk is full' from now on (a real SQLITE_FULL, not a fake)."""
    local = store.node.slot.tier
    with local._lock:
        (pages,) = local._conn.execute("PRAGMA page_count").fetchone()
        local._conn.execute(f"PRAGMA max_page_count = {pages}")


def free_sqlite(store: Any) -> None:
    with store.node.slot.tier._lock:
        store.node.slot.tier._conn.execute("PRAGMA max_page_count = 4294967294")


def corrupt_pages(path: Path, fraction: float, seed: int) -> None:
    """Overwrite a fraction of a SQLite file's pages with random bytes (real on-disk corruption)."""
    rng = random.Random(seed)
    pages = path.stat().st_size // 4096
    with open(path, "r+b") as f:
        for page in rng.sample(range(2, pages), int(pages * fraction)):
            f.seek(page * 4096)
            f.write(rng.randbytes(4096))


def garbage_file(path: Path) -> Path:
    """A file that is not a SQLite database at all (its parent directory is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"garbage" * 1000)
    return path


def wait_for(predicate: Any, timeout: float = 20.0, step: float = 0.02) -> None:
    """Check ``predicate`` every ``step`` seconds until it holds (the event itself, not a guessed pause); fail after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step)


def pull_until(store: Any, collection: str, key: str, version: int, timeout: float = 20.0) -> None:
    """Sync ``store`` until its local copy of the key has reached ``version``: the change feed never reads past a
    transaction still running on the server (other work on a shared server can hold a pull back for a while)."""
    local = store.node.slot.tier

    def reached() -> bool:
        store.sync_now()
        row = local.get(collection, key)
        return row is not None and row.version >= version

    wait_for(reached, timeout, step=0.01)


def wall_clock_past(stamp: str) -> None:
    """Wait until the wall clock, which HLC stamps follow, is in a later millisecond than ``stamp``: the next stamp
    any node takes is then newer, whatever the node ids (a condition, not a guessed pause)."""
    from hybridstore.clock import Timestamp, wall_ms

    wall = Timestamp.decode(stamp).wall
    wait_for(lambda: wall_ms() > wall, timeout=5)


def table_pages(path: Path, *names: str) -> list[int]:
    """Page numbers (1-based) of the given tables and their indexes in a SQLite file (via ``dbstat``)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        marks = ",".join("?" * len(names))
        rows = conn.execute(
            f"SELECT pageno FROM dbstat WHERE name IN ({marks}) OR name IN "
            f"(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN ({marks}))",
            names + names,
        ).fetchall()
    finally:
        conn.close()
    return sorted(r[0] for r in rows)


def garble_pages(path: Path, pages: list[int], seed: int, page_size: int = 4096) -> None:
    """Overwrite the given pages (1-based numbers) with random bytes."""
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * page_size)
            f.write(rng.randbytes(page_size))


def refuse_poison(pg: Any, schema: str) -> None:
    """Make the primary refuse any record whose value has a ``poison`` field (a trigger raising an error, as a
    user's own validation would): a permanent failure of exactly those writes."""
    pg.execute(
        f'CREATE FUNCTION "{schema}".no_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN '
        "IF NEW.value ? 'poison' THEN RAISE EXCEPTION 'poison value refused'; END IF; RETURN NEW; END $$"
    )
    pg.execute(
        f'CREATE TRIGGER no_poison BEFORE INSERT OR UPDATE ON "{schema}".records '
        f'FOR EACH ROW EXECUTE FUNCTION "{schema}".no_poison()'
    )
