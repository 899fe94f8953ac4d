"""Plain data that crosses the public API: records, write results, pages, queued operations."""

from __future__ import annotations

import json
import json.scanner
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

TierName = Literal["primary", "local", "journal"]

# Op ids are time-ordered UUIDs (RFC 9562 version 7: 48 bits of Unix milliseconds, then random bits), so an index of
# them (the primary's applied-ops ledger of older releases) grows at its right edge instead of at random places.
# uuid.uuid4() reads os.urandom on every call, which costs more than the rest of a local write on some VMs; a
# generator seeded once from os.urandom (and again after fork) is as unique.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))
_decoder = json.JSONDecoder()
# The C scanner, without the whitespace handling around it (typeshed types its argument oddly).
_scan_json = json.scanner.make_scanner(_decoder)  # type: ignore[arg-type]


def _decode_json(text: str) -> Any:
    """A stored value's JSON text, decoded (values are stored without surrounding whitespace; anything else goes
    through the full decoder)."""
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return _decoder.decode(text)  # leading whitespace, or not JSON: the decoder says which
    return value if end == len(text) else _decoder.decode(text)


def new_op_id() -> str:
    """A new op id: a version-7 UUID as text."""
    value = (time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | _ids.getrandbits(12) << 64 | 0x2 << 62
    h = f"{value | _ids.getrandbits(62):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}  # RFC 9562 variant bits 10, two random bits


def new_op_ids(n: int) -> list[str]:
    """``n`` new op ids (`new_op_id`) for one batch: one clock reading, one draw of random bits for all of them
    (74 random bits each, as `new_op_id`'s)."""
    if n <= 0:
        return []
    h = f"{time.time_ns() // 1_000_000:012x}"
    head = f"{h[:8]}-{h[8:12]}-7"
    bits = f"{_ids.getrandbits(76 * n):0{19 * n}x}"  # per id: 3 digits, the variant digit, 15 digits
    variant = _VARIANT
    return [
        f"{head}{bits[i : i + 3]}-{variant[bits[i + 3]]}{bits[i + 4 : i + 7]}-{bits[i + 7 : i + 19]}"
        for i in range(0, 19 * n, 19)
    ]


@dataclass(slots=True)
class Record:
    """One stored value and where it came from.

    ``version`` is the primary's version (0 while the record has never reached the primary); ``source`` is the
    tier that served the read; ``synced_at`` is when this node last saw the record agree with the primary
    (epoch seconds, ``None`` while it has local changes the primary has not accepted yet).
    """

    collection: str
    key: str
    value: Any
    version: int
    hlc: str
    origin: str
    source: TierName
    synced_at: float | None = None
    updated_at: float | None = None

    @property
    def pending(self) -> bool:
        return self.synced_at is None


@dataclass(slots=True)
class WriteResult:
    """Acknowledgement of a write: which tier made it durable, and whether it still has to reach the primary.
    ``version`` is the primary's new version for a write-through, 0 while the write is queued."""

    tier: TierName
    version: int
    queued: bool
    op_id: str
    hlc: str
    conflict: bool = False  # the primary holds another value; the write waits in the manual conflict queue


@dataclass(frozen=True, slots=True)
class Page:
    """One page of ``list()``: ``records``, the live records of the page in key order (at most ``limit``; the
    page itself iterates over them and has their ``len``), and ``next_after``, the cursor to pass as ``after``
    for the next page (``None`` at the end: only the last page has fewer than ``limit`` records)."""

    records: list[Record]
    next_after: str | None

    def __iter__(self) -> Any:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


class Op(NamedTuple):
    """A write as it travels: from the caller to a tier, through the outbox or journal, to the primary.
    (A named tuple: cheap to build on the write hot path and to rebuild from a database row.)

    ``value_json`` is canonical JSON text (``None`` for a delete). ``base_version`` is the primary version the
    writer last saw for this key (0 = never seen); the primary uses it to tell a conflict from a follow-up.
    """

    op_id: str
    collection: str
    key: str
    value_json: str | None
    hlc: str
    origin: str
    base_version: int = 0
    created_at: float = 0.0

    @property
    def deleted(self) -> bool:
        return self.value_json is None

    def to_json(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "collection": self.collection,
            "key": self.key,
            "value": self.value_json,
            "hlc": self.hlc,
            "origin": self.origin,
            "base_version": self.base_version,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Op:
        return cls(
            op_id=str(data["op_id"]),
            collection=str(data["collection"]),
            key=str(data["key"]),
            value_json=None if data["value"] is None else str(data["value"]),
            hlc=str(data["hlc"]),
            origin=str(data["origin"]),
            base_version=int(data.get("base_version", 0)),
            created_at=float(data.get("created_at", 0.0)),
        )


class StoredRow(NamedTuple):
    """A record as a tier stores it (value still JSON text); tiers return these, the store decodes them.
    A named tuple: tiers build it straight from a database row (``StoredRow._make(row)``)."""

    collection: str
    key: str
    value_json: str | None
    version: int
    hlc: str
    origin: str
    updated_at: float
    synced_at: float | None = None

    @property
    def deleted(self) -> bool:
        return self.value_json is None

    def to_record(self, source: TierName) -> Record:
        assert self.value_json is not None
        return Record(
            self.collection,
            self.key,
            _decode_json(self.value_json),
            self.version,
            self.hlc,
            self.origin,
            source,
            self.synced_at,
            self.updated_at,
        )


class ApplyOutcome(NamedTuple):
    """What the primary did with one op: ``applied``, ``duplicate`` (seen before), ``superseded`` (lost to a
    newer write under last-writer-wins), ``manual`` (a conflict queued for an admin), ``conflict`` (to be
    merged by the client) or, once the client merged it, ``merged`` (the op's key holds the merge of the op with
    what it conflicted with). ``current`` is the primary's row for the key after the op."""

    op_id: str
    outcome: Literal["applied", "duplicate", "superseded", "manual", "conflict", "merged"]
    current: StoredRow | None


@dataclass(slots=True)
class SyncReport:
    """Result of one ``sync_now()``: ops pushed, ops that failed this round, ops still queued."""

    pushed: int = 0
    failed: int = 0
    remaining: int = 0
    superseded: int = 0
    duplicates: int = 0
    conflicts: int = 0  # ops queued as manual conflicts
    pulled: int = 0
    journal_replayed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Conflict:
    """A conflict recorded on the primary: base (last agreed value), local (the pushed value) and remote (what
    the primary held); a side that was a deletion reads as ``None``. ``status`` is ``open`` (manual, waiting for
    an admin) or ``resolved``."""

    id: int
    collection: str
    key: str
    strategy: str
    base: Any
    local: Any
    remote: Any
    local_hlc: str | None
    remote_hlc: str | None
    status: str
    resolution: Any
    created_at: float
    resolved_at: float | None
    resolved_by: str | None

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> Conflict:
        def load(text: str | None) -> Any:
            return None if text is None else _decode_json(text)

        return cls(
            r[0],
            r[1],
            r[2],
            r[3],
            load(r[4]),
            load(r[5]),
            load(r[6]),
            r[7],
            r[8],
            r[9],
            load(r[10]),
            r[11],
            r[12],
            r[13],
        )

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}
