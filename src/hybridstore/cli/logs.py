"""Logging for the command line: one handler on standard error, the level from ``--log-level``, and the
connection pool's reconnect warnings once per state change instead of once per attempt."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from ..config import LOG_LEVELS

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# psycopg_pool's messages (its templates, matched as they are) for a failed and a successful connection attempt.
_POOL_FAILED = ("error connecting in %r: %s", "reconnection attempt in pool %r failed after %s sec")
_POOL_CONNECTED = "adding new connection to the pool"


class PoolStateFilter(logging.Filter):
    """For the ``psycopg.pool`` logger: while the primary is down the pool retries its connections with backoff
    and warns at every attempt — a dozen warnings per outage saying the same thing. Let the first failure through,
    drop the repeats, and say once (at info) when a connection works again. Records below ``level`` are
    dropped (the logger itself must let info records through, to see the recovery)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.failing = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in _POOL_FAILED:
            first, self.failing = not self.failing, True
            return first and record.levelno >= self.level
        if record.msg == _POOL_CONNECTED and self.failing:
            self.failing = False
            record.msg, record.args = "connected to the primary again after failed attempts", ()
        return record.levelno >= self.level


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (the CLI's tests replace it per command)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def setup_logging(level_name: str) -> str | None:
    """Log at ``level_name`` to standard error; returns what is wrong with the name, if anything."""
    level_name = level_name.upper()
    if level_name not in LOG_LEVELS:
        return f"unknown log level {level_name.lower()!r}: use debug, info, warning, error or critical"
    level = logging.getLevelName(level_name)
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    pool = logging.getLogger("psycopg.pool")
    for old in [f for f in pool.filters if isinstance(f, PoolStateFilter)]:
        pool.removeFilter(old)
    pool.addFilter(PoolStateFilter(level))
    pool.setLevel(min(level, logging.INFO))
    return None


__all__ = ["PoolStateFilter", "setup_logging"]
