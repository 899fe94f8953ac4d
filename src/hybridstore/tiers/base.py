"""The seams between the store and its storage tiers.

`Tier` is what all three tiers (primary, local, journal) share and what the store uses of each of them: reading
a key, scanning a collection, health, close. It is small on purpose. What only one tier does is described by a
role protocol of its own, each with its contract:

=================  =====================================  ==============================================
protocol           implemented by                         what for
=================  =====================================  ==============================================
`Tier`             every tier                             reads, health, close
`PendingRows`      local, journal                         writes not yet on the primary, for read overlays
`RecordStore`      local (``local/records.py``)           the node's copy of the records
`Outbox`           local (``local/outbox.py``)            ops waiting for the primary, dead letters
`PullCursor`       local (``local/pull.py``)              what the node pulled from the primary
`PrimaryWrites`    primary                                idempotent writes under the conflict rules
`ChangeFeed`       primary                                every committed change, in order
`Journal`          journal                                the last-resort, append-only log
=================  =====================================  ==============================================

Shared rules (checked by ``tests/test_tier_contract.py`` over every tier):

- Rows are `StoredRow`: the value is JSON text, ``None`` for a tombstone (a delete).
- Keys are ordered by code point (byte order of UTF-8; ``COLLATE "C"`` on PostgreSQL).
- Errors: `UnavailableError` when a tier cannot be reached in time (retry later); `LocalStoreError` /
  `CorruptionError` / `JournalError` when its storage fails. Nothing is acknowledged when an error is raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..model import ApplyOutcome, Op, StoredRow, TierName

if TYPE_CHECKING:
    import psycopg

TierState = Literal["healthy", "degraded", "down", "unknown", "disabled"]


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
    """What every tier offers."""

    name: TierName

    def get(self, collection: str, key: str) -> StoredRow | None:
        """The newest row this tier holds for the key, tombstones included; ``None`` if it never held the key.
        Never a row older than one this tier acknowledged."""
        ...

    def scan(self, collection: str, *, prefix: str = "", after: str | None = None, limit: int = 100) -> list[StoredRow]:
        """Live rows (no tombstones) of ``collection`` whose key starts with ``prefix`` and is greater than
        ``after``, ordered by key, at most ``limit``."""
        ...

    def health(self) -> TierHealth:
        """Plain data; never raises (a tier that cannot answer reports ``down``)."""
        ...

    def close(self) -> None:
        """Release the tier's connections and threads; never raises. The tier is unusable afterwards."""
        ...


class PendingRows(Protocol):
    """Writes this node holds that the primary has not accepted yet (the store overlays them on reads)."""

    def pending_rows(
        self, collection: str, *, prefix: str = "", after: str | None = None, upper: str | None = None
    ) -> list[StoredRow]:
        """The newest pending row of every key with pending writes (tombstones included) in the range of a
        `Tier.scan` page that ends at ``upper`` (inclusive; ``None`` = no end), ordered by key."""
        ...


class RecordStore(Protocol):
    """The node's own copy of the records: its pending writes, and rows it saw on the primary."""

    def get(self, collection: str, key: str) -> StoredRow | None:
        """As `Tier.get`; ``synced_at`` is ``None`` while the key has writes the primary has not accepted."""
        ...

    def put(self, op: Op) -> StoredRow:
        """Store ``op`` durably and queue it for the primary (`Outbox`) in one transaction; return the key's row.
        An op whose HLC is not newer than the stored row's (stale, or the same op again) changes nothing."""
        ...

    def scan(self, collection: str, *, prefix: str = "", after: str | None = None, limit: int = 100) -> list[StoredRow]:
        """As `Tier.scan`."""
        ...

    def get_many(self, collection: str, keys: Sequence[str]) -> list[StoredRow]:
        """Rows (tombstones included) of ``keys``, in no particular order; keys never written are absent."""
        ...

    def store_synced(self, row: StoredRow) -> None:
        """Adopt a row the primary holds, unless the key has pending writes or a newer version is stored."""
        ...

    def store_synced_many(self, rows: Sequence[StoredRow]) -> None:
        """`store_synced` for many rows, in one transaction."""
        ...

    def collection_counts(self) -> dict[str, int]:
        """Live records per collection."""
        ...

    def count_live(self) -> int:
        """Live records in all collections."""
        ...

    def max_hlc(self) -> str | None:
        """The largest HLC stored (``None`` when empty)."""
        ...


class Outbox(PendingRows, Protocol):
    """Ops this node made that the primary has not accepted yet, each with a seq, and the dead letters."""

    @property
    def last_seq(self) -> int:
        """The largest seq handed out so far (0 if none)."""
        ...

    def queue(self, op: Op) -> Op:
        """Store a new write as the key's value and queue it, in one transaction; returns it as stored (ordered
        after the stored value: never refused, never lost)."""
        ...

    def import_ops(self, ops: Sequence[Op], *, fresh: bool = False) -> list[Op]:
        """Store many ops in one transaction; returns those stored. Replayed ops (``fresh=False``) older than a
        value written elsewhere since lose to it (last-writer-wins) and are left out."""
        ...

    def pending_ops(self, limit: int, *, after: int = 0) -> list[tuple[int, Op, str | None]]:
        """``(seq, op, merge base)`` of the oldest ``limit`` entries after seq ``after``, in seq order; each op's
        ``base_version`` is the primary version this node knows for its key."""
        ...

    def complete(self, done: Sequence[tuple[int, Op, ApplyOutcome]], *, exact: bool = False) -> None:
        """Remove pushed entries and adopt the primary's rows for their keys (a key with later entries keeps its
        value). Without ``exact``, ``done`` is the oldest entries: every entry up to its largest seq goes."""
        ...

    def record_failure(self, seqs: Sequence[int], error: str) -> None:
        """Count a failed attempt (the primary was unreachable) for these entries."""
        ...

    def reject(self, seq: int, error: str, max_rejections: int) -> bool:
        """Count a refusal by the primary; at ``max_rejections`` the entry becomes a dead letter and its key
        goes back to the last value agreed with the primary. True when dead-lettered."""
        ...

    def outbox_stats(self) -> tuple[int, float | None]:
        """(entries, creation time of the oldest)."""
        ...

    def dead_letters(self, *, limit: int = 100, after_id: int = 0) -> list[dict[str, Any]]:
        """Dead letters with ids above ``after_id``, oldest first."""
        ...

    def dead_letter_count(self) -> int: ...

    def take_dead_letter(self, letter_id: int) -> dict[str, Any] | None:
        """Remove a dead letter and return it; ``None`` if there is none with that id."""
        ...


class PullCursor(Protocol):
    """What this node pulled from the primary's change feed, and where to resume."""

    def apply_pulled(self, rows: Sequence[Sequence[Any]], cursor: str | None, *, force: bool = False) -> int:
        """Adopt feed rows ``(collection, key, value, version, hlc, origin, updated_at, …)`` and save ``cursor``,
        in one transaction; keys with pending writes are left alone, older versions never replace newer ones
        (unless ``force``). Returns how many rows changed."""
        ...

    def begin_resync(self) -> None:
        """Start a full resync: every synced row is unconfirmed until pulled again."""
        ...

    def end_resync(self) -> int:
        """Finish a full resync: drop the rows it did not confirm; returns how many."""
        ...

    def meta_get(self, name: str) -> str | None: ...

    def meta_set(self, name: str, value: str) -> None:
        """Save a small named string durably (``pull_cursor`` is the feed cursor)."""
        ...


class PrimaryWrites(Protocol):
    """Writes on the primary. Each op applies at most once (its id is kept in a ledger), in one transaction
    with the conflict handling it needs; the rules are SQL, in ``migrations/primary/0003_write_rule.sql``."""

    def put_one(self, op: Op, *, strategy: str = "last_wins", base_value: str | None = None) -> ApplyOutcome:
        """Apply one op under ``strategy`` (``base_value``: the merge base, kept with a manual conflict). Same
        results as `put_many` with this op alone."""
        ...

    def put_many(
        self,
        ops: Sequence[Op],
        *,
        strategies: Sequence[str] | None = None,
        base_values: Sequence[str | None] | None = None,
    ) -> list[ApplyOutcome]:
        """Apply ops in one transaction, one outcome per op in input order; ops of one key form one write. An
        op seen before reports ``duplicate`` and changes nothing."""
        ...


class ChangeFeed(Protocol):
    """Every change committed on the primary, in commit-safe order."""

    channel: str

    def feed_page(self, after: Any = 0, limit: int = 1000) -> tuple[list[tuple[Any, ...]], bool]:
        """Rows ``(collection, key, value, version, hlc, origin, updated_at, stamp)`` changed after cursor
        ``after`` (``0``: from the start), oldest first, never past a transaction still running, so none is ever
        skipped; the next cursor is ``(stamp, collection, key)`` of the last row. The flag says whether
        committed changes are held back behind a running transaction."""
        ...

    def listen_connection(self) -> psycopg.Connection[Any]:
        """A connection of its own that receives a notification on `channel` after each writing commit."""
        ...


class Journal(Protocol):
    """The last resort when SQLite fails: an append-only, fsync'd log of ops, replayed into SQLite later."""

    def put(self, op: Op) -> StoredRow:
        """Append ``op`` durably (fsync) before returning; an op not newer than the key's last one is skipped."""
        ...

    def entries(self) -> list[Op]:
        """Every op in the journal, in append order."""
        ...

    def clear(self, replayed: int) -> None:
        """Forget the first ``replayed`` entries (now safe in SQLite), atomically."""
        ...

    def __len__(self) -> int: ...
