"""The `Tier` protocol: the one seam every storage tier implements.

Contract (checked by ``tests/test_tier_contract.py`` over every tier):

- ``put(op)`` makes ``op`` durable before returning and returns the row now stored for its key. A tombstone op
  (``value_json is None``) deletes. Idempotent by ``op.op_id``: putting the same op again changes nothing.
- ``get(collection, key)`` returns the newest row for the key, tombstones included, or ``None`` if the key was
  never written. It never returns a row older than one this tier acknowledged.
- ``scan(collection, prefix=, after=, limit=)`` returns live rows (no tombstones) ordered by key (byte order),
  keys starting with ``prefix`` and greater than ``after``, at most ``limit``.
- ``changes(after, limit)`` returns changes this tier holds that are newer than cursor ``after``, in cursor
  order; each carries the cursor to pass next time. What a "change" is depends on the tier: the primary's
  change feed, the local outbox (changes not yet on the primary), the journal's entries.
- ``health()`` returns plain data and never raises.
- Errors: `UnavailableError` when the tier cannot be reached in time (retry later); `LocalStoreError` /
  `CorruptionError` / `JournalError` when its storage fails. Nothing is acknowledged when an error is raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from ..model import Op, StoredRow, TierName

TierState = Literal["healthy", "degraded", "down", "unknown", "disabled"]


class Change(NamedTuple):
    cursor: Any  # opaque, ordered; pass it back as ``after``
    row: StoredRow


@dataclass(slots=True)
class TierHealth:
    """Plain health data for one tier."""

    name: TierName
    state: TierState
    detail: str = ""
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "detail": self.detail}
        if self.latency_ms is not None:
            out["latency_ms"] = round(self.latency_ms, 3)
        out.update(self.extra)
        return out


class Tier(Protocol):
    name: TierName

    def get(self, collection: str, key: str) -> StoredRow | None: ...

    def put(self, op: Op) -> StoredRow: ...

    def scan(
        self, collection: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> list[StoredRow]: ...

    def changes(self, after: int = 0, limit: int = 1000) -> list[Change]: ...

    def health(self) -> TierHealth: ...

    def close(self) -> None: ...
