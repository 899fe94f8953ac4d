"""A node id given again to a new data directory, on a machine whose clock runs behind the old one's: its writes
are not taken for replays of the old ones (see hybridstore.node.origin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

import hybridstore
from hybridstore.clock import wall_ms

from .fix_db import primary_rows

NODE = "till-3"


def run_ahead(pg: psycopg.Connection[Any], schema: str, hours: float) -> str:
    """Make the old node's stamps on the primary ``hours`` in the future (its clock ran ahead); returns one."""
    stamp = f"{wall_ms() + int(hours * 3600_000):012x}.000000.{NODE}"
    pg.execute(f'UPDATE "{schema}".records SET hlc = %s WHERE origin = %s', (stamp, NODE))
    return stamp


def test_write_through_and_queued_writes_of_a_reused_node_id_are_kept(
    tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str
) -> None:
    opts: dict[str, Any] = {"primary_schema": pg_schema, "background": False, "node_id": NODE}
    with hybridstore.open(pg_dsn, data_dir=tmp_path / "old", **opts) as old:
        for key in ("o1", "o2", "o3"):
            assert old.set("orders", key, {"v": "old"}).tier == "primary"
    ahead = run_ahead(pg, pg_schema, hours=1)

    # The disk was replaced: a new data directory, the same node id, a clock an hour behind the old one's.
    with hybridstore.open(pg_dsn, data_dir=tmp_path / "new", **opts) as new:
        ack = new.set("orders", "o1", {"v": "new"})
        assert ack.tier == "primary" and ack.hlc > ahead
    assert primary_rows(pg, pg_schema)["o1"][0] == {"v": "new"}, "an acknowledged write was taken for a replay"

    # Writes queued before the node could ask (here: a node that queues first) are re-stamped before the push.
    run_ahead(pg, pg_schema, hours=2)
    with hybridstore.open(pg_dsn, data_dir=tmp_path / "queued", write_mode="local_first", **opts) as queued:
        before = queued.set("orders", "o2", {"v": "queued"})
        assert before.queued
        report = queued.sync_now()
        assert report.remaining == 0 and queued.node.origin.restamped == 1
        assert queued.set("orders", "o3", {"v": "after"}).queued
        assert queued.sync_now().remaining == 0
    rows = primary_rows(pg, pg_schema)
    assert rows["o2"][0] == {"v": "queued"} and rows["o3"][0] == {"v": "after"}


def test_a_node_with_stamps_of_its_own_does_not_ask(
    tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str, pg_schema: str
) -> None:
    """The check costs a scan of the records: only a data directory with no stamp of its own pays it."""
    opts: dict[str, Any] = {"primary_schema": pg_schema, "background": False, "node_id": NODE}
    with hybridstore.open(pg_dsn, data_dir=tmp_path / "n", **opts) as node:
        assert not node.node.origin.settled
        node.set("orders", "o1", {"v": 1})
        assert node.node.origin.settled and node.node.origin.restamped == 0
    with hybridstore.open(pg_dsn, data_dir=tmp_path / "n", **opts) as again:
        assert again.node.origin.settled  # its own file has stamps: nothing to ask
    with hybridstore.open(None, data_dir=tmp_path / "embedded") as embedded:
        assert embedded.node.origin.settled
