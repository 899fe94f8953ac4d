"""`Heartbeat`: every node sharing a primary writes one row about itself in the primary's ``nodes`` table
(migration 0006) every ``heartbeat_interval`` seconds — host, version, start time, overall state, outbox depth,
last push and pull — so any node can list all of them (`Heartbeat.nodes`, ``GET /api/v1/nodes``,
``hybridstore nodes``).

- It runs in a `Worker` of its own (``hybridstore-heartbeat``): a heartbeat never delays a write, and it is
  skipped while the primary's circuit is not closed (no call waits on a primary known to be down).
- ``last_heartbeat`` is the primary's clock (``now()``), and a reader compares it with the primary's clock too:
  nodes whose clocks disagree still agree on who is stale. A node is **stale** when it has been silent for more
  than `STALE_AFTER` of its own intervals (each row records its node's interval).
- A node that stops cleanly writes a last row with state ``stopped``. A node taken out of service for good is
  removed from the list by an admin (`Heartbeat.forget`, ``DELETE /api/v1/nodes/{id}``), once stopped or stale.

`node_view` (pure) turns a row into the plain data every surface shows: exactly ``node_id, host, version,
last_heartbeat, state, outbox_depth, last_push, last_pull, stale`` (times as ISO 8601 strings in UTC).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, PrimaryRejectedError, PrimaryUnavailableError, ValidationError
from ..worker import Worker

if TYPE_CHECKING:
    from .gateway import PrimaryGateway
    from .status import NodeStatus

log = logging.getLogger("hybridstore.heartbeat")
STALE_AFTER = 3  # intervals of silence after which a node is called stale
FIRST_BEAT_RETRY = 0.5  # seconds between tries until the node's first beat has reached the primary
FIELDS = ("node_id", "host", "version", "last_heartbeat", "state", "outbox_depth", "last_push", "last_pull", "stale")

_UPSERT = (
    "INSERT INTO {schema}.nodes (node_id, host, version, started_at, last_heartbeat, interval_s, state, "
    "outbox_depth, last_push, last_pull) VALUES (%s, %s, %s, to_timestamp(%s::float8), now(), %s, %s, %s, "
    "to_timestamp(%s::float8), to_timestamp(%s::float8)) "
    "ON CONFLICT (node_id) DO UPDATE SET host = excluded.host, version = excluded.version, "
    "started_at = excluded.started_at, last_heartbeat = excluded.last_heartbeat, interval_s = excluded.interval_s, "
    "state = excluded.state, outbox_depth = excluded.outbox_depth, last_push = excluded.last_push, "
    "last_pull = excluded.last_pull"
)
_SELECT = (
    "SELECT node_id, host, version, extract(epoch FROM last_heartbeat)::float8, interval_s, state, outbox_depth, "
    "extract(epoch FROM last_push)::float8, extract(epoch FROM last_pull)::float8, extract(epoch FROM now())::float8 "
    "FROM {schema}.nodes ORDER BY node_id"
)


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def is_stale(last_heartbeat: float, interval_s: float, now: float, state: str) -> bool:
    """Silent for more than `STALE_AFTER` intervals. A node that said it stopped is not stale: it is stopped."""
    return state != "stopped" and now - last_heartbeat > STALE_AFTER * interval_s


def node_view(row: Sequence[Any], now: float) -> dict[str, Any]:
    """One row of `_SELECT` (without its last column, the primary's ``now``) as the surfaces show it."""
    node_id, host, version, last, interval, state, depth, push, pull = row[:9]
    return {
        "node_id": node_id,
        "host": host,
        "version": version,
        "last_heartbeat": iso(last),
        "state": state,
        "outbox_depth": int(depth),
        "last_push": iso(push),
        "last_pull": iso(pull),
        "stale": is_stale(last, interval, now, state),
    }


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("hybridstore")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


class Heartbeat:
    """See the module docstring. ``status`` returns the node's current snapshot (no I/O on the primary)."""

    def __init__(
        self,
        *,
        node_id: str,
        gateway: PrimaryGateway,
        status: Callable[[], NodeStatus],
        interval: float,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
        host: str | None = None,
        version: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.interval = interval
        self.host = host or socket.gethostname()
        self.version = version or package_version()
        self._gateway = gateway
        self._status = status
        self._wall = wall
        self._monotonic = monotonic
        self.started_at = wall()
        self.beats = 0
        self.skipped = 0
        self.last_beat_at: float | None = None
        self.last_error: str | None = None
        self._seen: tuple[float, float, list[tuple[Any, ...]]] | None = None  # (monotonic, primary's now, rows)
        self._lock = threading.Lock()
        self._started = False
        self.worker = Worker("hybridstore-heartbeat", self.run_once, error_delay=interval)

    # -- writing --------------------------------------------------------------------------------------------------

    def run_once(self) -> float:
        """One heartbeat (skipped while the circuit is not closed); returns the delay before the next: the
        interval, or `FIRST_BEAT_RETRY` while no beat has reached the primary yet (a node that started during a
        blip or before its first probe must not stay unlisted for a whole interval)."""
        if self._gateway.allow():
            self.beat()
        else:
            self.skipped += 1
        return self.interval if self.beats else min(self.interval, FIRST_BEAT_RETRY)

    def beat(self, state: str | None = None) -> bool:
        """Write this node's row now; True if the primary took it (a failure is noted, never raised)."""
        snap = self._status()
        params = (
            self.node_id,
            self.host,
            self.version,
            self.started_at,
            self.interval,
            state or snap.overall or "starting",
            int(snap.outbox.get("depth") or 0),
            snap.sync.get("last_push_at"),
            snap.sync.get("last_pull_at"),
        )
        try:
            self._gateway.call(lambda p: p.query(_UPSERT, params))
        except (PrimaryUnavailableError, PrimaryRejectedError) as exc:
            self.last_error = str(exc)
            log.debug("heartbeat not written: %s", exc)
            return False
        self.beats += 1
        self.last_beat_at = self._wall()
        self.last_error = None
        return True

    def start(self) -> None:
        self._started = True
        self.worker.start()

    def stop(self) -> bool:
        """Stop the worker, then, if it ran, say "stopped" on the primary (only while its circuit is closed: never
        wait on a primary known to be down). A node that never started its heartbeat (a CLI command, a snapshot
        copy) writes nothing: the row may belong to the running node whose id it shares."""
        stopped = self.worker.stop()
        if self._started and self._gateway.allow():
            self.beat("stopped")
        return stopped

    # -- reading --------------------------------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """Every node sharing the primary (see the module docstring), by node id. Without a primary: this node
        alone. While the primary cannot be asked: the rows last read from it (their staleness advanced by the
        time since), with this node's own row as it is now; `PrimaryUnavailableError` if none were read yet."""
        if not self._gateway.configured:
            return [self.own_view()]
        try:
            rows = self._gateway.call(lambda p: p.query(_SELECT))
        except PrimaryUnavailableError:
            with self._lock:
                seen = self._seen
            if seen is None:
                raise
            read_at, primary_now, rows = seen
            now = primary_now + (self._monotonic() - read_at)
            views = {r[0]: node_view(r, now) for r in rows}
            views[self.node_id] = self.own_view()
            return [views[k] for k in sorted(views)]
        now = float(rows[0][9]) if rows else self._wall()
        with self._lock:
            self._seen = (self._monotonic(), now, [tuple(r) for r in rows])
        return [node_view(r, now) for r in rows]

    def forget(self, node_id: str) -> dict[str, Any]:
        """Remove a node's row (a node taken out of service), only when it is stopped or stale: a live node
        would write it again at once. Returns the row as it was; `ConflictError` for a live node (or this one),
        `ValidationError` for an unknown one."""
        if node_id == self.node_id:
            raise ConflictError("this node is running: it cannot forget itself")
        found = {n["node_id"]: n for n in self.nodes()}.get(node_id)
        if found is None:
            raise ValidationError(f"no node {node_id!r} in the primary's list")
        if not (found["stale"] or found["state"] == "stopped"):
            raise ConflictError(f"node {node_id} is alive (its last heartbeat is recent): stop it first")
        self._gateway.call(lambda p: p.query("DELETE FROM {schema}.nodes WHERE node_id = %s", (node_id,)))
        with self._lock:
            if self._seen is not None:
                read_at, now, rows = self._seen
                self._seen = (read_at, now, [r for r in rows if r[0] != node_id])
        return found

    def own_view(self) -> dict[str, Any]:
        """This node as it is now (from its status snapshot; no I/O on the primary)."""
        snap = self._status()
        now = self._wall()
        row = (
            self.node_id,
            self.host,
            self.version,
            now,
            self.interval,
            snap.overall or "starting",
            int(snap.outbox.get("depth") or 0),
            snap.sync.get("last_push_at"),
            snap.sync.get("last_pull_at"),
        )
        return node_view(row, now)
