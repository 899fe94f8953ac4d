"""The audit trail of administrative calls: who (actor), what (action, target), how it ended (outcome), from
where (client address).

Every entry is written to ``web.db`` (always: it is this node's own record) and, when the primary is configured
and its circuit allows it, to the primary's ``audit_log`` through the gateway (best effort: the action is done
already, and the local entry exists). Item writes are not audited: they are the data itself, recorded by the
write path (op ids, the primary's ledger).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import PrimaryRejectedError, PrimaryUnavailableError
from .webdb import WebDatabase

if TYPE_CHECKING:
    from ..node.gateway import PrimaryGateway

log = logging.getLogger("hybridstore.web.audit")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    outcome: str
    client: str | None
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "client": self.client,
            "details": self.details,
        }


class AuditLog:
    """See the module docstring. ``record`` blocks (SQLite, maybe the primary): call it from a worker thread."""

    def __init__(
        self, db: WebDatabase, gateway: PrimaryGateway | None, *, wall: Callable[[], float] = time.time
    ) -> None:
        self._db = db
        self._gateway = gateway
        self._wall = wall

    def record(
        self,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        *,
        client: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        details = details or {}
        text = json.dumps(details, default=str)
        try:
            self._db.execute(
                "INSERT INTO audit_log (at, actor, action, target, outcome, client, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self._wall(), actor, action, target, outcome, client, text),
            )
        except sqlite3.Error as exc:  # the action itself happened: say loudly that its trace did not
            log.error("audit entry not written to web.db (%s): %s %s %s -> %s", exc, actor, action, target, outcome)
        gateway = self._gateway
        if gateway is not None and gateway.configured and gateway.allow():
            shared = {**details, "outcome": outcome, "client": client, "via": "http"}
            try:
                gateway.call(lambda p: p.audit(actor, action, target, shared))
            except (PrimaryUnavailableError, PrimaryRejectedError) as exc:
                log.info("audit entry kept locally only (primary: %s)", exc)

    def entries(self, *, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]:
        """The newest entries first (``before_id`` pages further back)."""
        sql = "SELECT id, at, actor, action, target, outcome, client, details FROM audit_log"
        params: list[Any] = []
        if before_id is not None:
            sql += " WHERE id < ?"
            params.append(before_id)
        rows = self._db.query(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows]
