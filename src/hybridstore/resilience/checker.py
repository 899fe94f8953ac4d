"""The checker: reads a run's history and the final state of the primary and of every node, and says whether the
store kept its promises. Pure: no I/O, so hand-made histories test it directly.

What it checks (the Jepsen "set" idea, for a store of keys that are also overwritten):

- **acknowledged ⊆ final**: every acknowledged write is in the primary's final state — for a key written once,
  its value is there; for a key written many times under ``last_wins``, the final value is the acknowledged
  write with the newest HLC or a newer attempted one; under ``merge`` (values are ``{owner: counter}``), each
  owner's field holds at least the owner's newest acknowledged counter;
- **final ⊆ attempted**: every value in the final state was written by some op (``fail`` ops included: a write
  the store said failed must not appear — it is counted as ``phantom``);
- **no duplicates**: a key's version (+1 per accepted write) is at most the number of writes attempted on it;
- **versions only grow**, as each observer saw them;
- **convergence**: every node's copy equals the primary's (SHA-256 over the canonical rows);
- **availability** = acknowledged / attempted; latency percentiles (of acknowledged writes) per phase.

Unknown outcomes are accepted either way: such a write may or may not be in the final state.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .history import PHASES, Observation, OpEntry, Phase

Rule = Literal["last_wins", "merge", "manual"]
Key = tuple[str, str]
MAX_LISTED = 20  # problems listed in a verdict (the counts are exact)


@dataclass(frozen=True)
class Row:
    """A live row of the final state (deleted rows are absent)."""

    value: Any
    version: int = 1


@dataclass
class Verdict:
    """What the checker found. ``ok`` is the conjunction of its checks."""

    attempted: int = 0
    acknowledged: int = 0
    failed: int = 0
    unknown: int = 0
    lost: int = 0
    phantom: int = 0  # values in the final state that no op wrote, or that the store said it did not store
    duplicated: int = 0
    shrinking: int = 0
    divergent: dict[str, int] = field(default_factory=dict)  # node -> keys that differ from the primary
    checksums: dict[str, str] = field(default_factory=dict)  # "primary" and each node
    converged: bool = True
    availability: float = 1.0
    latency: dict[str, dict[str, float | int | None]] = field(default_factory=dict)  # phase -> count, p50, p99
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.phantom or self.duplicated or self.shrinking) and self.converged

    def note(self, problem: str) -> None:
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "unknown": self.unknown,
            "lost": self.lost,
            "phantom": self.phantom,
            "duplicated": self.duplicated,
            "shrinking": self.shrinking,
            "divergent": dict(self.divergent),
            "converged": self.converged,
            "availability": self.availability,
            "latency": self.latency,
            "problems": list(self.problems),
        }


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def checksum(rows: Mapping[Key, Any]) -> str:
    """SHA-256 of a state (key → value), independent of order."""
    digest = hashlib.sha256()
    for (collection, key), value in sorted(rows.items()):
        digest.update(canonical([collection, key, value]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank method; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def check(
    ops: Iterable[OpEntry],
    primary: Mapping[Key, Row],
    nodes: Mapping[str, Mapping[Key, Any]],
    *,
    observations: Iterable[Observation] = (),
    rules: Mapping[str, Rule] | None = None,
    phase_of: Callable[[float], Phase] | None = None,
) -> Verdict:
    """Check a history against the final states (``primary``: key → `Row`; ``nodes``: node → key → value).
    Only the collections the history wrote are compared; ``rules`` gives each collection's conflict rule
    (default ``last_wins``)."""
    rules = rules or {}
    verdict = Verdict()
    by_key: dict[Key, list[OpEntry]] = defaultdict(list)
    for op in ops:
        by_key[(op.collection, op.key)].append(op)
        verdict.attempted += 1
        if op.outcome == "ok":
            verdict.acknowledged += 1
        elif op.outcome == "fail":
            verdict.failed += 1
        else:
            verdict.unknown += 1
    collections = {c for c, _ in by_key}
    final = {k: row for k, row in primary.items() if k[0] in collections}

    for key, written in by_key.items():
        rule = rules.get(key[0], "last_wins")
        _check_key(verdict, key, written, final.get(key), rule)
    for key in final.keys() - by_key.keys():
        verdict.phantom += 1
        verdict.note(f"{key[0]}/{key[1]} is on the primary but no op wrote it")

    _check_versions(verdict, observations)
    _check_nodes(verdict, final, nodes, collections)
    verdict.availability = round(verdict.acknowledged / verdict.attempted, 6) if verdict.attempted else 1.0
    verdict.latency = latency_by_phase(by_key.values(), phase_of)
    return verdict


def _check_key(verdict: Verdict, key: Key, written: list[OpEntry], row: Row | None, rule: Rule) -> None:
    name = f"{key[0]}/{key[1]}"
    acked = [op for op in written if op.outcome == "ok"]
    possible = [op for op in written if op.outcome != "fail"]  # ok, unknown, in flight
    if row is not None and row.version > len(written):
        verdict.duplicated += 1
        verdict.note(f"{name}: version {row.version} after {len(written)} write(s): applied more than once")
    if rule == "merge":
        _check_merged(verdict, name, acked, possible, row)
        return
    if row is None:
        if acked:
            verdict.lost += 1
            verdict.note(f"{name}: {len(acked)} acknowledged write(s), nothing on the primary")
        return
    matching = [op for op in written if canonical(op.value) == canonical(row.value)]
    if not matching:
        verdict.phantom += 1
        verdict.note(f"{name}: final value {canonical(row.value)[:80]} was never written")
        return
    if all(op.outcome == "fail" for op in matching):
        verdict.phantom += 1
        verdict.note(f"{name}: final value was written by an op the store reported as failed")
        return
    if rule == "last_wins" and acked:
        newest = max(acked, key=lambda op: (op.hlc or "", op.invoked))
        # The final value must come from the newest acknowledged write or from one at least as new (an
        # unknown outcome has no HLC to compare: it may be newer).
        if not any(op.outcome != "ok" or (op.hlc or "") >= (newest.hlc or "") for op in matching):
            verdict.lost += 1
            verdict.note(f"{name}: acknowledged write #{newest.id} (newest HLC) lost to an older value")


def _check_merged(verdict: Verdict, name: str, acked: list[OpEntry], possible: list[OpEntry], row: Row | None) -> None:
    """``merge`` values are ``{owner: counter}``; each owner only raises its own counter."""
    final = row.value if row is not None and isinstance(row.value, dict) else {}
    newest: dict[str, int] = {}
    for op in acked:
        if isinstance(op.value, dict) and isinstance(op.value.get(op.node), int):
            newest[op.node] = max(newest.get(op.node, 0), op.value[op.node])
    for owner, counter in newest.items():
        if not isinstance(final.get(owner), int) or final[owner] < counter:
            verdict.lost += 1
            verdict.note(f"{name}: {owner}'s acknowledged counter {counter} lost (final {final.get(owner)})")
    for owner, counter in final.items():
        if not any(isinstance(op.value, dict) and op.value.get(owner) == counter for op in possible):
            verdict.phantom += 1
            verdict.note(f"{name}: field {owner}={counter!r} was never written")


def _check_versions(verdict: Verdict, observations: Iterable[Observation]) -> None:
    last: dict[tuple[str, str, str], int] = {}
    for obs in observations:
        k = (obs.observer, obs.collection, obs.key)
        if k in last and obs.version < last[k]:
            verdict.shrinking += 1
            verdict.note(f"{obs.collection}/{obs.key}: {obs.observer} saw version {last[k]} then {obs.version}")
        last[k] = max(obs.version, last.get(k, obs.version))


def _check_nodes(
    verdict: Verdict, final: Mapping[Key, Row], nodes: Mapping[str, Mapping[Key, Any]], collections: set[str]
) -> None:
    values = {k: row.value for k, row in final.items()}
    verdict.checksums["primary"] = checksum(values)
    for node, rows in sorted(nodes.items()):
        copy = {k: v for k, v in rows.items() if k[0] in collections}
        verdict.checksums[node] = checksum(copy)
        if verdict.checksums[node] == verdict.checksums["primary"]:
            continue
        differ = [k for k in values.keys() | copy.keys() if canonical(values.get(k)) != canonical(copy.get(k))]
        verdict.divergent[node] = len(differ)
        verdict.converged = False
        verdict.note(f"node {node}: {len(differ)} key(s) differ from the primary, e.g. {'/'.join(sorted(differ)[0])}")


def latency_by_phase(
    groups: Iterable[Iterable[OpEntry]], phase_of: Callable[[float], Phase] | None
) -> dict[str, dict[str, float | int | None]]:
    """Count, p50 and p99 (ms) of acknowledged writes, per phase and for the whole run (``"all"``)."""
    samples: dict[str, list[float]] = {p: [] for p in (*PHASES, "all")}
    for group in groups:
        for op in group:
            ms = op.latency_ms
            if op.outcome != "ok" or ms is None:
                continue
            samples["all"].append(ms)
            samples[phase_of(op.invoked) if phase_of else "before"].append(ms)
    return {
        phase: {"count": len(v), "p50_ms": _round(percentile(v, 0.5)), "p99_ms": _round(percentile(v, 0.99))}
        for phase, v in samples.items()
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
