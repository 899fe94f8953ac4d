"""Conflict strategies: which value wins when two writers changed the same record concurrently.

Per collection: ``last_wins`` (the primary settles it by HLC; the HLC text ends in the node id, so ties are
impossible and every replay order picks the same winner), ``merge`` (3-way merge against the base, below),
``manual`` (queued on the primary until an admin picks), or a callable ``(base, local, remote) -> value``.

3-way merge rules (``merge3``), for JSON objects, against the base (the last value both sides agreed on):
- a field changed on one side only takes that side's value (a field removed on one side is removed);
- a field changed on both sides to the same value takes it; nested objects merge recursively by these rules;
- otherwise (changed differently on both sides) the side whose write has the later HLC wins that field;
- a record deleted on one side and edited on the other is kept with the edit (an edit is never lost to a
  concurrent delete); deleted on both sides stays deleted;
- values that are not both objects (numbers, strings, arrays, one side an object) follow the same rules as a
  single field: changed on one side only → that side, else the later HLC.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

Strategy = Literal["last_wins", "merge", "manual"]
Resolver = Callable[[Any, Any, Any], Any]
STRATEGIES: tuple[str, ...] = ("last_wins", "merge", "manual")


class _Missing:
    """A field absent on one side (distinct from JSON null); also stands for a deleted record."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1`` and ``1`` is not ``1.0`` (Python's ``==`` says they are)."""
    if a is MISSING or b is MISSING:
        return a is b
    return type(a) is type(b) and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def merge3(base: Any, local: Any, remote: Any, *, local_newer: bool) -> Any:
    """Merge ``local`` and ``remote`` (each derived from ``base``); ``MISSING`` = absent / deleted.
    ``local_newer`` says which side wins a field both changed differently."""
    if _same(local, remote):
        return local
    if _same(local, base):
        return remote
    if _same(remote, base):
        return local
    if local is MISSING:  # deleted here, edited there: keep the edit
        return remote
    if remote is MISSING:
        return local
    if isinstance(local, dict) and isinstance(remote, dict):
        b: Mapping[str, Any] = base if isinstance(base, dict) else {}
        out: dict[str, Any] = {}
        for name in sorted(set(b) | set(local) | set(remote)):
            merged = merge3(
                b.get(name, MISSING), local.get(name, MISSING), remote.get(name, MISSING), local_newer=local_newer
            )
            if merged is not MISSING:
                out[name] = merged
        return out
    return local if local_newer else remote


def check_strategy(strategy: object) -> None:
    from .errors import ConfigError

    if not callable(strategy) and strategy not in STRATEGIES:
        raise ConfigError(f"conflict strategy must be one of {', '.join(STRATEGIES)} or a callable, not {strategy!r}")


class StrategyTable:
    """The strategy of each collection: ``default`` unless ``per_collection`` names one."""

    def __init__(self, default: Strategy | Resolver = "last_wins", per_collection: Mapping[str, Any] | None = None):
        check_strategy(default)
        for strategy in (per_collection or {}).values():
            check_strategy(strategy)
        self.default = default
        self.per_collection = dict(per_collection or {})

    def of(self, collection: str) -> Strategy | Resolver:
        strategy: Strategy | Resolver = self.per_collection.get(collection, self.default)
        return strategy

    def wire_name(self, collection: str) -> str:
        """The strategy name the primary's write rule uses: a callable is ``custom`` (resolved here, like ``merge``)."""
        strategy = self.of(collection)
        return "custom" if callable(strategy) else strategy

    @property
    def all_last_wins(self) -> bool:
        return self.default == "last_wins" and all(s == "last_wins" for s in self.per_collection.values())
