"""The recovery service's own history, kept beside the data in ``data_dir/recovery.db`` (a small SQLite file of
its own, so it still works while ``local.db`` is corrupt or being rebuilt): alerts and strategy events.

Best effort: if the file cannot be written (disk full), the service keeps going in memory and logs why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..migrations import migrate_sqlite
from .alerts import Alert

log = logging.getLogger("hybridstore.recovery")
HISTORY_FILE = "recovery.db"
Outcome = Literal["running", "succeeded", "failed", "skipped"]


@dataclass
class StrategyEvent:
    """One run of a recovery strategy: what was tried, when, and how it ended."""

    strategy: str
    started_at: float
    summary: str = ""
    outcome: Outcome = "running"
    ended_at: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def seconds(self) -> float | None:
        return None if self.ended_at is None else round(self.ended_at - self.started_at, 3)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = self.seconds
        return out


KEEP_ROWS = 10_000  # newest strategy events and resolved alerts kept in recovery.db (active alerts are never dropped)


class RecoveryHistory:
    """Alerts and events in ``recovery.db``, bounded: the newest ``keep`` events and resolved alerts are kept
    (checked every ``keep // 10`` writes), so the file does not grow with the node's age. Thread-safe."""

    def __init__(self, path: Path, *, keep: int = KEEP_ROWS) -> None:
        self.path = path
        self.keep = keep
        self._writes = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=2.0)
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            migrate_sqlite(conn, "history")  # the schema: migrations/history/
            self._conn = conn
        except sqlite3.Error as exc:
            log.error("recovery history %s unusable, keeping it in memory only: %s", path, exc)

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute(sql, params)
                self._writes += 1
                if self._writes % max(1, self.keep // 10) == 0:
                    self._prune(self._conn)
            except sqlite3.Error as exc:
                log.warning("could not write recovery history: %s", exc)

    def _prune(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM events WHERE started_at < "
            "(SELECT started_at FROM events ORDER BY started_at DESC LIMIT 1 OFFSET ?)",
            (self.keep - 1,),
        )
        conn.execute(
            "DELETE FROM alerts WHERE resolved_at IS NOT NULL AND raised_at < "
            "(SELECT raised_at FROM alerts ORDER BY raised_at DESC LIMIT 1 OFFSET ?)",
            (self.keep - 1,),
        )

    def save_alert(self, alert: Alert) -> None:
        self._write(
            "INSERT OR REPLACE INTO alerts (id, kind, severity, message, node_id, details, raised_at, resolved_at, "
            "resolution) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert.id,
                alert.kind,
                alert.severity,
                alert.message,
                alert.node_id,
                json.dumps(alert.details, default=str),
                alert.raised_at,
                alert.resolved_at,
                alert.resolution,
            ),
        )

    def load_alerts(self, limit: int = 1000) -> list[Alert]:
        """Oldest first, at most the newest ``limit``."""
        rows = self._read(
            "SELECT kind, severity, message, raised_at, node_id, details, resolved_at, resolution, id FROM alerts "
            "ORDER BY raised_at DESC LIMIT ?",
            (limit,),
        )
        return [
            Alert(r[0], r[1], r[2], r[3], r[4] or "", json.loads(r[5]), r[6], r[7] or "", r[8]) for r in reversed(rows)
        ]

    def save_event(self, event: StrategyEvent) -> None:
        self._write(
            "INSERT OR REPLACE INTO events (id, strategy, started_at, ended_at, outcome, summary, details) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                event.id,
                event.strategy,
                event.started_at,
                event.ended_at,
                event.outcome,
                event.summary,
                json.dumps(event.details, default=str),
            ),
        )

    def load_events(self, limit: int = 200) -> list[StrategyEvent]:
        """Oldest first, at most the newest ``limit``."""
        rows = self._read(
            "SELECT strategy, started_at, summary, outcome, ended_at, details, id FROM events "
            "ORDER BY started_at DESC LIMIT ?",
            (limit,),
        )
        return [StrategyEvent(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in reversed(rows)]

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            if self._conn is None:
                return []
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                log.warning("could not read recovery history: %s", exc)
                return []

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
