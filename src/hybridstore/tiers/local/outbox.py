"""The outbox: ops this node made that the primary has not accepted yet, and the dead letters (`Outbox` in
``tiers/base.py``).

Contract:

- Every entry has a seq, increasing in the order the ops were made (`last_seq` is the largest handed out). An
  entry stays until ``complete`` (the primary answered for it) or ``reject`` moves it to the dead letters.
- ``queue`` / ``import_ops`` store the record and its entry in one transaction; a stale op (HLC not newer than
  the stored row's) is neither stored nor queued, and ``queue`` says so by returning False. With
  ``coalesce_pending`` a fresh write replaces its key's pending entry if no pusher has read that one yet.
- ``pending_ops`` returns entries oldest first, each with the primary version this node knows for its key (the
  base of the write) and the merge base; ``pending_rows`` the records that have entries.
- ``complete`` records what the primary holds for the keys pushed — or a newer row the change feed delivered
  while they were pending, if any (``apply_pulled``); a key with later entries keeps its local value.
- ``reject`` counts the primary's refusals of an entry; at the limit the entry becomes a dead letter and the key
  goes back to the last value agreed with the primary (or that newer pulled row). Dead letters stay until
  ``take_dead_letter``.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Any

from ...model import ApplyOutcome, Op, StoredRow
from ..keyrange import key_range
from .database import ROW_COLUMNS, LocalDatabase, as_row

# After a push: a key whose newest pending op was pushed (pending_seq <= pushed seq) takes the primary's row and
# is synced; a key with later pending ops keeps its value and, when the pushed op reached the primary (?10: applied
# or duplicate), learns the new version and merge base: its later ops follow that write. After an op that lost
# (superseded, manual) they keep the base they were written on, so they are judged as the conflict they are. SET
# expressions all see the old row, so every CASE tests the same pending_seq.
_COMPLETE = """
UPDATE records SET
    value = CASE WHEN pending_seq <= ?7 THEN ?1 ELSE value END,
    hlc = CASE WHEN pending_seq <= ?7 THEN ?2 ELSE hlc END,
    origin = CASE WHEN pending_seq <= ?7 THEN ?3 ELSE origin END,
    updated_at = CASE WHEN pending_seq <= ?7 THEN ?4 ELSE updated_at END,
    synced_at = CASE WHEN pending_seq <= ?7 THEN ?5 ELSE synced_at END,
    base_value = CASE WHEN pending_seq <= ?7 THEN NULL WHEN ?10 THEN ?1 ELSE base_value END,
    pending_seq = CASE WHEN pending_seq <= ?7 THEN NULL ELSE pending_seq END,
    version = CASE WHEN pending_seq <= ?7 OR ?10 THEN ?6 ELSE version END
WHERE collection = ?8 AND key = ?9
"""
_PENDING = (  # an op's fields in `Op`'s order, then the seq and the merge base
    "SELECT o.op_id, o.collection, o.key, o.value, o.hlc, o.origin, coalesce(r.version, 0), o.created_at, o.seq, "
    "r.base_value FROM outbox o LEFT JOIN records r ON r.collection = o.collection AND r.key = o.key "
    "WHERE o.seq > ? ORDER BY o.seq LIMIT ?"
)
# Tuples made into named tuples by C code alone (``map(_AS_OP, rows)``): a batch of thousands of ops builds no
# Python frame per op. `Op._make` would call a Python function for each.
_AS_OP = partial(tuple.__new__, Op)
_OP_FIELDS, _PENDING_SEQ, _PENDING_BASE = itemgetter(*range(8)), itemgetter(8), itemgetter(9)  # of a `_PENDING` row
_SEQ, _OP, _OUT = itemgetter(0), itemgetter(1), itemgetter(2)  # of a (seq, op, outcome) entry
_KEY_OF_OP = itemgetter(1, 2)
_PLUS_ONE = partial(operator.add, 1)
_OUTCOME, _CURRENT = itemgetter(1), itemgetter(2)  # of an ApplyOutcome
# The common case of `_COMPLETE`, without its CASEs: the key's newest pending op was pushed and reached the primary.
_SETTLE = """
UPDATE records SET value = ?1, hlc = ?2, origin = ?3, updated_at = ?4, synced_at = ?5, version = ?6,
    base_value = NULL, pending_seq = NULL
WHERE collection = ?8 AND key = ?9 AND pending_seq <= ?7
"""
# ... and the other case: later pending ops follow the pushed one, which reached the primary.
_FOLLOW = "UPDATE records SET base_value = ?1, version = ?6 WHERE collection = ?8 AND key = ?9 AND pending_seq > ?7"
# A key that has just settled takes the row the feed delivered while it was pending, when that one is newer.
_ADOPT_ASIDE = """
UPDATE records SET value = ?3, version = ?4, hlc = ?5, origin = ?6, updated_at = ?7, synced_at = ?8,
    base_value = NULL, pending_seq = NULL
WHERE collection = ?1 AND key = ?2 AND version < ?4 AND pending_seq IS NULL
"""
# Otherwise (the pushed op was merged, or the row is another write now): the key's later ops were written on top
# of the pushed op, not of the primary's row, so they stay based on the version before it (their push conflicts)
# with the pushed op's own value as their merge base — merging them then keeps what the other side brought in.
_REBASE = "UPDATE records SET base_value = ?1 WHERE collection = ?2 AND key = ?3 AND pending_seq > ?4"


def _all_applied(
    done: Sequence[tuple[int, Op, ApplyOutcome]], now: float
) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]] | None:
    """For the usual batch — one op per key, every one applied — its keys and `_SETTLE`'s parameters per key,
    built column-wise by C code (a batch holds thousands of ops); ``None`` for any other batch."""
    keys = list(map(_KEY_OF_OP, map(_OP, done)))
    outcomes = list(map(_OUT, done))
    if len(set(keys)) != len(keys) or set(map(_OUTCOME, outcomes)) != {"applied"}:
        return None
    rows = list(map(_CURRENT, outcomes))
    if None in rows:  # pragma: no cover - an applied op always comes with the primary's row
        return None
    c, k, value, version, hlc, origin, updated_at, _ = zip(*rows, strict=True)
    n = len(rows)
    followed = list(zip(value, hlc, origin, updated_at, repeat(now, n), version, map(_SEQ, done), c, k, strict=True))
    return keys, followed


def follows(op: Op, outcome: ApplyOutcome) -> bool:
    """Do a key's later pending ops follow the primary's row after ``op``? Only if that row is ``op``'s own write:
    applied now, or applied before (a duplicate) with the row still that write. A duplicate whose row is a newer
    write of another node must not make them follow-ups of a write their node never saw."""
    if outcome.current is None:
        return False
    if outcome.outcome == "applied":
        return True
    return outcome.outcome == "duplicate" and outcome.current.hlc == op.hlc and outcome.current.origin == op.origin


_DEAD_LETTER_FIELDS = (
    "id",
    "op_id",
    "collection",
    "key",
    "value",
    "hlc",
    "origin",
    "created_at",
    "attempts",
    "error",
    "dead_at",
)


class LocalOutbox(LocalDatabase):
    """Outbox and dead letters."""

    @property
    def last_seq(self) -> int:
        """The largest outbox seq this tier handed out (0 if none): every entry queued so far has a seq ≤ it."""
        return self._next_seq - 1

    def queue(self, op: Op) -> Op:
        """Store a new write as the key's value and queue it, in one transaction (the write hot path); returns
        the op as stored: re-stamped after the stored value if that one carries a stamp from beyond the clock's
        drift guard (see `_store_op`). Never refuses a write."""
        return self._store_fresh(op, self._clock())

    def import_ops(self, ops: Sequence[Op], *, fresh: bool = False) -> list[Op]:
        """Store many ops in one transaction; returns those stored (as stored). ``fresh``: new writes (a bulk
        `set_many`), every one stored; otherwise replayed ones (journal, rebuild): an op older than a value
        written elsewhere since loses to it under last-writer-wins and is left out."""
        now = self._clock()
        with self._transaction(precise=True) as conn:  # _store_op discards each key's cached row
            if fresh and len(ops) > 1 and (stored := self._store_fresh_many(conn, ops, now)) is not None:
                return stored
            return [s for op in ops if (s := self._store_op(conn, op, now, fresh=fresh)) is not None]

    def restamp_pending(self, origin: str, ceiling: str, stamp: Callable[[], str]) -> int:
        """Give ``origin``'s queued ops stamped below ``ceiling`` new stamps from ``stamp`` (increasing), in queue
        order, and their keys' pending rows the newest; returns how many (see `hybridstore.node.origin`). An op
        stamped exactly ``ceiling`` is the write the primary holds: it keeps its stamp (pushing it is a replay)."""
        with self._transaction(precise=True) as conn:
            rows = conn.execute(
                "SELECT seq, collection, key FROM outbox WHERE origin = ? AND hlc < ? ORDER BY seq", (origin, ceiling)
            ).fetchall()
            for seq, collection, key in rows:
                new = stamp()
                self.cache.discard((collection, key))
                conn.execute("UPDATE outbox SET hlc = ? WHERE seq = ?", (new, seq))
                conn.execute(
                    "UPDATE records SET hlc = ? WHERE collection = ? AND key = ? AND pending_seq = ?",
                    (new, collection, key, seq),
                )
        return len(rows)

    def restamp_key(
        self, collection: str, key: str, origin: str, after_seq: int, ceiling: str, stamp: Callable[[], str]
    ) -> int:
        """Give ``origin``'s ops of one key queued after ``after_seq`` and stamped at or below ``ceiling`` new stamps
        from ``stamp`` (increasing), in queue order, and the key's pending row the newest; returns how many. A
        merged value is pushed with the newer side's stamp: the key's later ops must order after it, or the
        primary would take them for replays of it (see docs/sync.md)."""
        with self._transaction(precise=True) as conn:
            rows = conn.execute(
                "SELECT seq FROM outbox WHERE collection = ? AND key = ? AND origin = ? AND seq > ? AND hlc <= ? "
                "ORDER BY seq",
                (collection, key, origin, after_seq, ceiling),
            ).fetchall()
            if rows:
                self.cache.discard((collection, key))
            for (seq,) in rows:
                new = stamp()
                conn.execute("UPDATE outbox SET hlc = ? WHERE seq = ?", (new, seq))
                conn.execute(
                    "UPDATE records SET hlc = ? WHERE collection = ? AND key = ? AND pending_seq = ?",
                    (new, collection, key, seq),
                )
        return len(rows)

    def embedded(self) -> None:
        """This tier runs without a primary: coalesce every queued op, those found at open included (no pusher
        runs, so none of them can be on its way to a primary)."""
        self.coalesce_pending = True
        with self._lock:
            self._sent_seq = 0

    def pending_ops(self, limit: int, *, after: int = 0) -> list[tuple[int, Op, str | None]]:
        """The oldest ``limit`` outbox entries after seq ``after``, each with the primary version this node knows
        for its key as ``base_version`` (so a follow-up write is not mistaken for a conflict) and the merge base:
        the last value this node agreed on with the primary for the key (``None`` if none). They count as sent
        from now on: a later write to their key queues behind them instead of replacing them."""
        with self._lock:  # read and mark as sent at once: a write coalescing into one of these must not slip in
            try:
                rows = self._conn.execute(_PENDING, (after, limit)).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            if rows:
                self._sent_seq = max(self._sent_seq, rows[-1][8])
        if not rows:
            return []
        ops = map(_AS_OP, map(_OP_FIELDS, rows))  # in C alone (see `_AS_OP`)
        return list(zip(map(_PENDING_SEQ, rows), ops, map(_PENDING_BASE, rows), strict=True))

    def pending_rows(
        self, collection: str, *, prefix: str = "", after: str | None = None, upper: str | None = None
    ) -> list[StoredRow]:
        """Rows with local changes the primary has not accepted (tombstones included) in a key range ending at
        ``upper`` (inclusive; ``None`` = no end), ordered by key."""
        low, inclusive, high = key_range(prefix, after)
        sql = f"SELECT {ROW_COLUMNS} FROM records WHERE collection = ? AND pending_seq IS NOT NULL"
        sql += " AND key >= ?" if inclusive else " AND key > ?"
        params: list[Any] = [collection, low]
        if high is not None:
            sql += " AND key < ?"
            params.append(high)
        if upper is not None:
            sql += " AND key <= ?"
            params.append(upper)
        return [as_row(r) for r in self._read(sql + " ORDER BY key", params)]

    def complete(self, done: Sequence[tuple[int, Op, ApplyOutcome]], *, exact: bool = False) -> None:
        """Remove pushed ops from the outbox and record what the primary now holds for their keys.

        A key whose newest pending op was pushed becomes synced and takes the primary's row (our value, or a
        newer one that won under last-writer-wins) — or, if the change feed delivered a newer row while the key
        was pending, that one (see `apply_pulled`). A key with later pending ops keeps its local value and, if
        the pushed op reached the primary, learns the new primary version and merge base."""
        now = self._clock()
        if not exact and (applied := _all_applied(done, now)) is not None:
            keys, followed = applied
            self._settle_followed(keys, followed, max(map(_SEQ, done)), now, list(map(_OUT, done)))
            return
        last: dict[tuple[str, str], tuple[int, ApplyOutcome]] = {}
        for seq, op, outcome in done:
            last[(op.collection, op.key)] = (seq, outcome)
        followed = []  # the op reached the primary (applied, duplicate): the common case
        adopt: list[tuple[Any, ...]] = []
        gone: list[tuple[Any, ...]] = []
        rebase: list[tuple[Any, ...]] = []
        last_op: dict[tuple[str, str], Op] = {}
        for _, op, _ in done:
            last_op[(op.collection, op.key)] = op
        for (c, k), (seq, out) in last.items():
            cur = out.current
            if cur is None:
                gone.append((now, c, k, seq))
            elif follows(last_op[(c, k)], out):
                followed.append((cur[2], cur[4], cur[5], cur[6], now, cur[3], seq, c, k))
            else:
                adopt.append((cur[2], cur[4], cur[5], cur[6], now, cur[3], seq, c, k, False))
                if out.outcome in ("merged", "duplicate"):
                    rebase.append((last_op[(c, k)].value_json, c, k, seq))
        drop: list[tuple[tuple[str, str], StoredRow]] = []  # rows set aside that are settled now
        with self._transaction(precise=True) as conn:
            for key in last:
                self.cache.discard(key)
            if exact:  # some entries in between stay (e.g. rejected by the primary)
                conn.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _, _ in done])
            else:  # the batch is the oldest entries, so it is exactly every entry up to its largest seq
                conn.execute("DELETE FROM outbox WHERE seq <= ?", (max(seq for seq, _, _ in done),))
            if followed and conn.executemany(_SETTLE, followed).rowcount < len(followed):
                conn.executemany(_FOLLOW, followed)  # some keys have later pending ops: they follow this write
            conn.executemany(_COMPLETE, adopt)
            conn.executemany(_REBASE, rebase)
            conn.executemany(
                "UPDATE records SET synced_at = ?, pending_seq = NULL "
                "WHERE collection = ? AND key = ? AND pending_seq <= ?",
                gone,
            )
            if self._pulled_aside:
                self._settle_aside(conn, ((key, out) for key, (_, out) in last.items()), now, drop)
        self._forget_aside(drop)

    def _settle_aside(
        self,
        conn: sqlite3.Connection,
        settled: Iterable[tuple[tuple[str, str], ApplyOutcome]],
        now: float,
        drop: list[tuple[tuple[str, str], StoredRow]],
    ) -> None:
        """Rows pulled while their keys were pending, for keys just settled: adopt the newer ones (inside the
        caller's transaction); those no longer needed go to ``drop``."""
        for key, out in settled:
            aside = self._pulled_aside.get(key)
            if aside is None:
                continue
            if out.current is None or out.current.version >= aside.version:
                drop.append((key, aside))  # the push's row is as new (or the key is gone): not needed
            elif self._adopt_aside(conn, aside, now):
                drop.append((key, aside))
            # else the key still has later pending ops: their push settles it, against this row again

    def complete_applied(
        self, entries: Sequence[tuple[int, Op, Any]], outcomes: Sequence[ApplyOutcome], updated_at: float
    ) -> None:
        """`complete` of the oldest entries when every op applied, one op per key, each at its base version + 1,
        written on the primary at ``updated_at`` (the usual batch): the parameters come from the ops themselves,
        column by column (``outcomes`` are read only for rows the change feed set aside meanwhile)."""
        if not entries:
            return
        now = self._clock()
        n = len(entries)
        _, c, k, value, hlc, origin, base, _ = zip(*map(_OP, entries), strict=True)
        seqs = list(map(_SEQ, entries))
        version = map(_PLUS_ONE, base)
        followed = list(
            zip(value, hlc, origin, repeat(updated_at, n), repeat(now, n), version, seqs, c, k, strict=True)
        )
        self._settle_followed(list(zip(c, k, strict=True)), followed, max(seqs), now, outcomes)

    def _settle_followed(
        self,
        keys: Sequence[tuple[str, str]],
        followed: list[tuple[Any, ...]],
        upto: int,
        now: float,
        outcomes: Sequence[ApplyOutcome],
    ) -> None:
        """`complete` of a batch of the oldest entries, one per key, every one applied (``followed``: `_SETTLE`'s
        parameters per key)."""
        drop: list[tuple[tuple[str, str], StoredRow]] = []
        with self._transaction(precise=True) as conn:
            for key in self.cache.rows.keys() & keys:  # the cached ones only, found by C code
                self.cache.discard(key)
            conn.execute("DELETE FROM outbox WHERE seq <= ?", (upto,))
            if conn.executemany(_SETTLE, followed).rowcount < len(followed):
                conn.executemany(_FOLLOW, followed)  # some keys have later pending ops: they follow this write
            if self._pulled_aside:
                self._settle_aside(conn, zip(keys, outcomes, strict=True), now, drop)
        self._forget_aside(drop)

    def _adopt_aside(self, conn: sqlite3.Connection, aside: StoredRow, now: float) -> bool:
        """Give a key that has just settled the newer row pulled while it was pending; False if it is still
        pending (inside the caller's transaction)."""
        return conn.execute(_ADOPT_ASIDE, (*aside[:7], now)).rowcount > 0

    def _forget_aside(self, drop: Sequence[tuple[tuple[str, str], StoredRow]]) -> None:
        """Forget rows set aside once the transaction that used them committed (only if no newer row replaced
        them meanwhile): a failed transaction leaves them for the next settle."""
        if drop:
            with self._lock:
                for key, row in drop:
                    if self._pulled_aside.get(key) is row:
                        del self._pulled_aside[key]

    def record_failure(self, seqs: Sequence[int], error: str) -> None:
        """Count a failed push attempt (the primary could not be reached) for these entries."""
        with self._transaction(precise=True) as conn:  # the outbox only
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                [(error[:500], s) for s in seqs],
            )

    def reject(self, seq: int, error: str, max_rejections: int) -> bool:
        """The primary refused outbox entry ``seq`` (the data, not the connection). After ``max_rejections``
        refusals it moves to the dead letters; if it was the key's newest pending op the record goes back to the
        last value agreed with the primary, or to a newer row the feed delivered while the key was pending (see
        `apply_pulled`). Returns True when it was dead-lettered."""
        now = self._clock()
        drop: list[tuple[tuple[str, str], StoredRow]] = []
        with self._transaction() as conn:
            row = conn.execute(
                "UPDATE outbox SET rejections = rejections + 1, attempts = attempts + 1, last_error = ? "
                "WHERE seq = ? RETURNING rejections, op_id, collection, key, value, hlc, origin, created_at, attempts",
                (error[:1000], seq),
            ).fetchone()
            if row is None or row[0] < max_rejections:
                return False
            conn.execute(
                "INSERT INTO dead_letters (op_id, collection, key, value, hlc, origin, created_at, attempts, "
                "last_error, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row[1:], error[:1000], now),
            )
            conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            later = conn.execute(
                "SELECT max(seq) FROM outbox WHERE collection = ? AND key = ?", (row[2], row[3])
            ).fetchone()[0]
            if later is None:
                # Nothing else pending for the key: back to what the primary holds (a never-synced key: gone) — or
                # to the newer row the feed delivered meanwhile.
                conn.execute(
                    "UPDATE records SET value = base_value, base_value = NULL, pending_seq = NULL, synced_at = ? "
                    "WHERE collection = ? AND key = ? AND pending_seq = ? AND version > 0",
                    (now, row[2], row[3], seq),
                )
                aside = self._pulled_aside.get((row[2], row[3]))
                if aside is not None:
                    conn.execute(
                        "UPDATE records SET pending_seq = NULL WHERE collection = ? AND key = ? AND pending_seq = ?",
                        (row[2], row[3], seq),
                    )
                    self._adopt_aside(conn, aside, now)
                    drop.append(((row[2], row[3]), aside))
                else:
                    conn.execute(
                        "DELETE FROM records WHERE collection = ? AND key = ? AND version = 0 AND pending_seq = ?",
                        (row[2], row[3], seq),
                    )
            else:
                conn.execute(
                    "UPDATE records SET pending_seq = ? WHERE collection = ? AND key = ? AND pending_seq = ?",
                    (later, row[2], row[3], seq),
                )
        self._forget_aside(drop)
        return True

    def oldest_pending_hlc(self, origin: str) -> str | None:
        """The smallest HLC of ``origin``'s ops still in the outbox (``None`` if none): the node's settled
        watermark stays below it (`hybridstore.sync.housekeeping`). A scan of the outbox: called once a minute."""
        return self._read("SELECT min(hlc) FROM outbox WHERE origin = ?", (origin,))[0][0]  # type: ignore[no-any-return]

    def outbox_stats(self) -> tuple[int, float | None]:
        """(depth, created_at of the oldest pending op)."""
        rows = self._read("SELECT count(*), min(created_at) FROM outbox")
        return int(rows[0][0]), rows[0][1]

    def dead_letters(self, *, limit: int = 100, after_id: int = 0) -> list[dict[str, Any]]:
        """Dead letters with ids above ``after_id``, oldest first, at most ``limit``."""
        rows = self._read(
            "SELECT id, op_id, collection, key, value, hlc, origin, created_at, attempts, last_error, dead_at "
            "FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [dict(zip(_DEAD_LETTER_FIELDS, r, strict=True)) for r in rows]

    def dead_letter_count(self) -> int:
        return int(self._read("SELECT count(*) FROM dead_letters")[0][0])

    def take_dead_letter(self, letter_id: int) -> dict[str, Any] | None:
        """Remove a dead letter and return it (``None`` if there is no such id)."""
        with self._transaction(precise=True) as conn:  # dead letters only
            row = conn.execute(
                "DELETE FROM dead_letters WHERE id = ? RETURNING id, op_id, collection, key, value, hlc, origin",
                (letter_id,),
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("id", "op_id", "collection", "key", "value", "hlc", "origin"), row, strict=True))
