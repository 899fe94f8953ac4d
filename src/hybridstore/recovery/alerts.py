"""Alerts: each kind is raised once when its condition starts and resolved once when it ends, never repeated
while it lasts. `AlertBook` holds that rule (no I/O of its own); history and delivery are injected: a
`AlertHistory` keeps every alert in the node's ``recovery.db`` and sinks (the log, a webhook) are told of each
raise and resolve.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger("hybridstore.recovery")

AlertKind = Literal[
    "primary_outage",
    "primary_misconfigured",
    "local_corruption",
    "sync_failure",
    "low_storage",
    "conflicts_backlog",
    "backup_failed",
    "manual_intervention",
]
ALERT_KINDS: tuple[AlertKind, ...] = AlertKind.__args__  # type: ignore[attr-defined]
Severity = Literal["info", "warning", "critical"]
AlertEvent = Literal["raised", "resolved"]


@dataclass
class Alert:
    """One alert, from raise to resolve. ``resolved_at`` is ``None`` while it is active."""

    kind: AlertKind
    severity: Severity
    message: str
    raised_at: float
    node_id: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    resolved_at: float | None = None
    resolution: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def active(self) -> bool:
        return self.resolved_at is None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["active"] = self.active
        return out


class AlertSink(Protocol):
    """Somewhere alerts go. ``deliver`` must return quickly and never raise."""

    def deliver(self, event: AlertEvent, alert: Alert) -> None: ...


class AlertStore(Protocol):
    def save_alert(self, alert: Alert) -> None: ...

    def load_alerts(self) -> list[Alert]: ...


class LogSink:
    """Alerts in the log: raises at ERROR (critical) or WARNING, resolves at INFO."""

    def deliver(self, event: AlertEvent, alert: Alert) -> None:
        if event == "raised":
            level = logging.ERROR if alert.severity == "critical" else logging.WARNING
            log.log(level, "ALERT %s raised: %s", alert.kind, alert.message)
        else:
            log.info("ALERT %s resolved after %.1fs: %s", alert.kind, alert_age(alert), alert.resolution)


def alert_age(alert: Alert) -> float:
    return (alert.resolved_at or time.time()) - alert.raised_at


class AlertBook:
    """Active alerts by kind and the history of this node. Thread-safe."""

    def __init__(
        self,
        *,
        store: AlertStore | None = None,
        sinks: Sequence[AlertSink] = (),
        node_id: str = "",
        clock: Callable[[], float] = time.time,
        keep: int = 1000,
    ) -> None:
        self._store = store
        self._sinks = list(sinks)
        self._node_id = node_id
        self._clock = clock
        self._keep = keep
        self._lock = threading.Lock()
        self._history: list[Alert] = store.load_alerts() if store is not None else []
        # Alerts still active when the node last stopped stay active: they are resolved when their condition
        # is seen to end, not raised a second time.
        self._active: dict[str, Alert] = {a.kind: a for a in self._history if a.active}

    def add_sink(self, sink: AlertSink) -> None:
        self._sinks.append(sink)

    def update(
        self,
        kind: AlertKind,
        active: bool,
        *,
        message: str = "",
        severity: Severity = "warning",
        details: dict[str, Any] | None = None,
        resolution: str = "condition cleared",
    ) -> Alert | None:
        """Raise ``kind`` if ``active`` and it is not active yet; resolve it if not ``active`` and it is.
        Returns the alert that was raised or resolved, else ``None`` (nothing changed)."""
        with self._lock:
            current = self._active.get(kind)
            if active and current is None:
                alert = Alert(kind, severity, message, self._clock(), self._node_id, dict(details or {}))
                self._active[kind] = alert
                self._history.append(alert)
                del self._history[: -self._keep]
                event: AlertEvent = "raised"
            elif not active and current is not None:
                alert = current
                alert.resolved_at = self._clock()
                alert.resolution = resolution
                del self._active[kind]
                event = "resolved"
            else:
                return None
        if self._store is not None:
            try:
                self._store.save_alert(alert)
            except Exception:  # the history is best effort; the alert still goes to the sinks
                log.exception("could not store alert %s", kind)
        for sink in self._sinks:
            try:
                sink.deliver(event, alert)
            except Exception:
                log.exception("alert sink %s failed", type(sink).__name__)
        return alert

    def is_active(self, kind: AlertKind) -> bool:
        return kind in self._active

    def list(self, active: bool | None = None) -> list[Alert]:
        """Alerts newest first: all (``None``), only active (``True``) or only resolved (``False``)."""
        with self._lock:
            items = list(reversed(self._history))
        if active is None:
            return items
        return [a for a in items if a.active == active]
