"""`StatusBoard`: the node's one status snapshot. `health()`, `sync_status()`, the recovery monitor, the metrics
collector, the CLI and the HTTP API all read `NodeStatus` from here, so they can never disagree.

A snapshot never touches the primary: the primary's state is the gateway's last probe, and primary-side counts
(conflicts by strategy) are refreshed by the health monitor on its schedule (`refresh_primary_counts`), never
per call or per scrape. Local figures (outbox depth and age, dead letters) come from a sample of SQLite that the
monitor refreshes each tick; ``fresh=True`` samples now, in the caller's thread (a cheap local count).
Services add their own I/O-free sections (``health`` from the recovery monitor, ``backups`` from the backup
service) with `provide`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import LocalStoreError, PrimaryUnavailableError
from .core import outbox_figures

if TYPE_CHECKING:
    from .core import NodeCore, Pusher

SectionProvider = Callable[[], "dict[str, Any] | None"]


@dataclass
class PullerView:
    """What the status needs of the change puller (absent without a primary)."""

    state: str = "idle"
    pulled: int = 0
    last_pull_at: float | None = None
    last_error: str | None = None
    listening: bool = False


@dataclass
class NodeStatus:
    node_id: str
    data_dir: str
    write_mode: str
    read_policy: str
    taken_at: float
    primary: dict[str, Any]
    local: dict[str, Any]
    journal: dict[str, Any]
    circuit: dict[str, Any]
    outbox: dict[str, Any]
    sync: dict[str, Any]
    conflicts: dict[str, Any] | None
    dead_letters: int | None
    sections: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def overall(self) -> str | None:
        health = self.sections.get("health")
        return None if health is None else health.get("overall")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        sections = out.pop("sections")
        out.update(sections)
        return out


class StatusBoard:
    def __init__(self, node: NodeCore, *, puller: Callable[[], PullerView | None]) -> None:
        self._node = node
        self._puller = puller
        self._lock = threading.Lock()
        self._sample: tuple[float, int, float | None, str | None, int | None] | None = None
        self._conflicts: tuple[float, dict[str, Any]] | None = None
        self._sections: dict[str, SectionProvider] = {}

    def provide(self, name: str, section: SectionProvider) -> None:
        """Add a section (``section()`` must be quick and do no I/O; ``None`` leaves it out)."""
        self._sections[name] = section

    # -- refreshed by the monitor ---------------------------------------------------------------------------------

    def sample_local(self) -> None:
        """Read the outbox figures and dead letters from SQLite now."""
        slot = self._node.slot
        local = slot.tier
        depth, oldest, error = outbox_figures(local, self._node.journal)
        dead: int | None = None
        if local is not None and error is None:
            try:
                dead = local.dead_letter_count()
            except LocalStoreError as exc:
                error = str(exc)
        with self._lock:
            self._sample = (self._node.time.monotonic(), depth, oldest, error, dead)

    def refresh_primary_counts(self) -> dict[str, Any] | None:
        """Ask the primary for its conflict counts (through the gateway); kept until the next refresh."""
        gateway = self._node.gateway
        if not gateway.allow():
            return None
        try:
            counts = gateway.call(lambda p: p.conflict_counts())
        except PrimaryUnavailableError:
            return None
        with self._lock:
            self._conflicts = (self._node.time.wall(), counts)
        return counts

    # -- the snapshot ---------------------------------------------------------------------------------------------

    def snapshot(self, *, fresh: bool = False) -> NodeStatus:
        node = self._node
        if fresh or self._sample is None:
            self.sample_local()
        assert self._sample is not None
        _, depth, oldest, outbox_error, dead = self._sample
        wall = node.time.wall()
        sync: Pusher = node.sync
        puller = self._puller()
        totals = sync.totals
        gateway = node.gateway
        primary = gateway.snapshot()
        if not gateway.configured:
            state = "local_only"
        elif not gateway.allow():
            state = "offline"
        elif sync.state == "pushing":
            state = "pushing"
        elif puller is not None and puller.state == "pulling":
            state = "pulling"
        elif dead or (depth and sync.last_error):
            state = "error"
        else:
            state = "idle"
        settled = totals.pushed + totals.superseded + totals.duplicates
        attempts = settled + totals.failed
        conflicts = self._conflicts
        sections = {}
        for name, provider in list(self._sections.items()):
            value = provider()
            if value is not None:
                sections[name] = value
        return NodeStatus(
            node_id=node.node_id,
            data_dir=str(node.data_dir),
            write_mode=node.config.write_mode,
            read_policy=node.config.read_policy,
            taken_at=wall,
            primary=primary,
            local=self._local_view(outbox_error),
            journal=node.journal.health().to_dict(),
            circuit=gateway.circuit.snapshot(),
            outbox={
                "depth": depth,
                "oldest_pending_age_s": None if oldest is None else round(max(0.0, wall - oldest), 3),
                "error": outbox_error,
            },
            sync={
                "state": state,
                "pushed": totals.pushed,
                "superseded": totals.superseded,
                "duplicates": totals.duplicates,
                "failed": totals.failed,
                "manual_conflicts": totals.conflicts,
                "merged": sum(sync.conflicts_resolved.values()),
                "pulled": puller.pulled if puller is not None else 0,
                "success_rate": None if attempts == 0 else round(settled / attempts, 4),
                "last_push_at": sync.last_push_at,
                "last_pull_at": puller.last_pull_at if puller is not None else None,
                "listening": bool(puller is not None and puller.listening),
                "last_error": sync.last_error or (puller.last_error if puller is not None else None),
                "batch_size": sync.batch_size,
            },
            conflicts=None if conflicts is None else conflicts[1],
            dead_letters=dead,
            sections=sections,
            events=[e.to_dict() for e in node.events.since(0)[-20:]],
        )

    def _local_view(self, outbox_error: str | None) -> dict[str, Any]:
        slot = self._node.slot
        tier = slot.tier
        path = str(self._node.data_dir / "local.db")
        view: dict[str, Any] = {"path": path, "slot": slot.snapshot()}
        if tier is None:
            view.update(state="down", detail=slot.error or "not open")
        elif slot.held is not None:
            view.update(state="down", detail=slot.error or slot.held)
        elif not slot.usable:
            view.update(state="degraded", detail=slot.error or "failing")
        elif outbox_error is not None:
            view.update(state="degraded", detail=outbox_error)
        else:
            view.update(state="healthy", detail="")
        return view
