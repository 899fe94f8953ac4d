"""The push path on the primary: how a node's ops are applied, idempotently, in as few round trips as possible.

Two steps (migration 0008 explains the idempotency record):

1. **Fast path**, one statement (one row back: see ``batch``): the ops are grouped per key here (a key's ops in one
   batch are one write of the last value, based on the first op's base version, adding one version per op) and the
   groups are upserted in one ``INSERT … ON CONFLICT`` from binary arrays. A group applies when the key is new or
   the primary's version is the group's base and its HLC is newer — the no-conflict case, which is also the only
   case in which a replayed op could apply, and it cannot: once an op has been applied the key's version has moved
   past its base, and once it has lost the row is newer. The node's settled watermark is checked too (a replay from
   an old backup of an op that was dead-lettered). No ledger row is written: the row itself records its writer. When
   a group overwrites another node's row, a row trigger marks that node (``settled_marks``).
2. **Slow path**, ``hs_settle``, only for the groups the fast path left: conflicts, replays, covered ops. One key
   at a time, under a row lock: classify each op (settled already, or new), write the new ones by ``hs_write``
   (the write rule), mark what lost.

A batch runs in one transaction (``put_many``); one op (write-through) runs the fast statement alone, in
autocommit — one round trip, no BEGIN/COMMIT — and the slow path only when the fast one did not apply. Each
statement is atomic and idempotent, so a crash between them changes nothing a replay cannot settle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

from ..model import ApplyOutcome, Op, StoredRow

if TYPE_CHECKING:
    import psycopg

# Statements take the quoted schema through str.format; everything else is a parameter.
_FAST_UPSERT = """
    INSERT INTO {q}.records AS r (collection, key, value, version, base_version, hlc, origin)
    {source}
    ON CONFLICT ON CONSTRAINT records_pkey DO UPDATE
    SET value = EXCLUDED.value, version = r.version + EXCLUDED.version, base_version = EXCLUDED.base_version,
        hlc = EXCLUDED.hlc, origin = EXCLUDED.origin, updated_at = now(), stamp = pg_current_xact_id()
    WHERE r.version = EXCLUDED.base_version AND EXCLUDED.hlc > r.hlc
"""
_SEP = "\x1f"  # the unit separator: between the values of a column sent as one text (see `_batch_statement`)
_SEP_SQL = "E'\\x1f'"
_NOT_COVERED = (
    'NOT EXISTS (SELECT 1 FROM {q}.node_settled s WHERE s.origin = {origin} AND s.settled > {hlc} COLLATE "C")'
)


def _distinct_keys(collections: Sequence[str], keys: Sequence[str]) -> bool:
    """Does every op of a batch write another key? Checked on the key texts alone when the batch writes one
    collection (the usual case: no pair built per op)."""
    if len(set(collections)) == 1:
        return len(set(keys)) == len(keys)
    return len(set(zip(collections, keys, strict=True))) == len(keys)


class AppliedBatch(Sequence[ApplyOutcome]):
    """The outcomes of a batch in which every op applied, one op per key, each at its base version + 1, written at
    ``at`` (the primary's clock) and known at ``now``: kept as the ops themselves, each `ApplyOutcome` built only
    when asked for. The replayer settles such a batch from its ops (`LocalOutbox.complete_applied`); building
    two objects per op that nobody reads — and collecting them — cost more than the rest of the node's work on a
    batch of thousands of ops."""

    __slots__ = ("at", "now", "ops")

    def __init__(self, ops: Sequence[Op], at: float, now: float) -> None:
        self.ops = ops
        self.at = at
        self.now = now

    def __len__(self) -> int:
        return len(self.ops)

    @overload
    def __getitem__(self, index: int) -> ApplyOutcome: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ApplyOutcome]: ...

    def __getitem__(self, index: int | slice) -> ApplyOutcome | Sequence[ApplyOutcome]:
        if isinstance(index, slice):
            return AppliedBatch(self.ops[index], self.at, self.now)
        op = self.ops[index]
        row = StoredRow(op.collection, op.key, op.value_json, op.base_version + 1, op.hlc, op.origin, self.at, self.now)
        return ApplyOutcome(op.op_id, "applied", row)


class PushStatements:
    """The push path's SQL for one schema, and the code that runs it on a connection."""

    def __init__(self, quoted_schema: str) -> None:
        q = quoted_schema
        arrays = "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::int8[], %b::int8[]"
        split = (
            f"string_to_array(%s, {_SEP_SQL}), string_to_array(%s, {_SEP_SQL}), "
            f"string_to_array(%s, {_SEP_SQL}, ''), string_to_array(%s, {_SEP_SQL}), "
            f"string_to_array(%s, {_SEP_SQL}), string_to_array(%s, ',')::int8[], string_to_array(%s, ',')::int8[]"
        )
        batch_source = (
            "SELECT g.collection, g.key, g.value::jsonb, g.n, g.base, g.hlc, g.origin FROM unnest({columns}) "
            "AS g(collection, key, value, hlc, origin, base, n) "
            f"WHERE {_NOT_COVERED.format(q=q, origin='g.origin', hlc='g.hlc')} "
            # rows locked in one order by every pusher (the key's own order, as hs_settle does): no deadlocks
            'ORDER BY g.collection COLLATE "C", g.key COLLATE "C"'
        )
        one_source = (
            "SELECT %s::text, %s::text, %s::jsonb, 1, %s::int8, %s::text, %s::text "
            f"WHERE {_NOT_COVERED.format(q=q, origin='%s::text', hlc='%s::text')}"
        )
        # One row back, not one per key (reading a row per op cost more than the rest of the client's work on the
        # batch): how many groups applied and the sum of their versions. A group applies at base + n (an update
        # needs the primary's version to be its base; a new key starts at n, which is no more than base + n), so
        # when every group applied and the sums agree, each one is at base + n; updated_at is now(), the
        # transaction's start, for every row.
        batch = (
            f"WITH up AS ({_FAST_UPSERT.format(q=q, source=batch_source)} RETURNING r.version) "
            "SELECT count(*), coalesce(sum(version), 0)::int8, extract(epoch FROM now())::float8 FROM up"
        )
        # The columns travel as one separated text each (a C-speed join here, a C-speed split on the server: the
        # binary arrays cost about 1 µs per op to build on the client); arrays when a separator occurs in the data.
        self.batch = batch.replace("{columns}", arrays).encode()
        self.batch_joined = batch.replace("{columns}", split).encode()
        # Otherwise (rarely) the rows this transaction wrote say which groups applied, and at which version.
        self.written = (
            f"SELECT r.collection, r.key, r.version FROM {q}.records r "
            f"JOIN unnest(%b::text[], %b::text[]) AS k(collection, key) "
            f"ON r.collection = k.collection AND r.key = k.key WHERE r.stamp = pg_current_xact_id()"
        ).encode()
        self.one = (
            _FAST_UPSERT.format(q=q, source=one_source)
            + "RETURNING r.version, extract(epoch FROM r.updated_at)::float8"
        ).encode()
        self.settle = (
            f"SELECT op_id, outcome, version, updated_at FROM {q}.hs_settle(%b::uuid[], %b::text[], %b::text[], "
            f"%b::text[], %b::text[], %b::text[], %b::int8[], %b::text[], %b::text[])"
        ).encode()
        self.current = (
            f"SELECT r.collection, r.key, r.value::text, r.version, r.hlc, r.origin, "
            f"extract(epoch FROM r.updated_at)::float8 FROM {q}.records r "
            f"JOIN unnest(%b::text[], %b::text[]) AS k(collection, key) "
            f"ON r.collection = k.collection AND r.key = k.key WHERE r.version > 0"
        ).encode()
        self.current_one = (
            f"SELECT value::text, version, hlc, origin, extract(epoch FROM updated_at)::float8 "
            f"FROM {q}.records WHERE collection = %s AND key = %s AND version > 0"
        ).encode()
        self.report = f"SELECT {q}.hs_report_settled(%s, %s)".encode()

    # -- one op (write-through) -----------------------------------------------------------------------------------

    def push_one(self, cur: psycopg.Cursor[Any], op: Op, strategy: str, base_value: str | None) -> ApplyOutcome:
        """Apply one op with ``cur`` (a cursor of the call's connection): the fast statement (autocommit: one round
        trip), else the slow path."""
        params = (
            op.collection,
            op.key,
            op.value_json,
            op.base_version,
            op.hlc,
            op.origin,
            op.origin,
            op.hlc,
        )
        row = cur.execute(self.one, params).fetchone()
        if row is not None:
            version, at = row
            current = StoredRow(op.collection, op.key, op.value_json, version, op.hlc, op.origin, at, time.time())
            return ApplyOutcome(op.op_id, "applied", current)
        return self._settle(cur.connection, [op], [strategy], [base_value])[0]

    # -- a batch --------------------------------------------------------------------------------------------------

    def push_batch(
        self,
        conn: psycopg.Connection[Any],
        ops: Sequence[Op],
        strategies: Sequence[str],
        base_values: Sequence[str | None],
    ) -> Sequence[ApplyOutcome]:
        """Apply a batch in one transaction: the fast statement for every key group, the slow path for the
        groups it left. One outcome per op, in input order (an `AppliedBatch` when every op applied, one per
        key)."""
        # Column-wise (C-speed transposition) rather than op by op: the push thread's Python time is on the drain's
        # critical path. The usual batch has one op per key: then its groups are its ops.
        _, collections, keys, values, hlcs, origins, bases, _ = zip(*ops, strict=True)
        groups: dict[tuple[str, str], list[int]] | None = None
        if _distinct_keys(collections, keys):
            params: tuple[Sequence[Any], ...] = (collections, keys, values, hlcs, origins, bases, [1] * len(ops))
        else:
            groups = {}
            for i, pair in enumerate(zip(collections, keys, strict=True)):
                groups.setdefault(pair, []).append(i)
            firsts = [idx[0] for idx in groups.values()]
            lasts = [idx[-1] for idx in groups.values()]
            params = (
                [collections[i] for i in lasts],
                [keys[i] for i in lasts],
                [values[i] for i in lasts],
                [hlcs[i] for i in lasts],
                [origins[i] for i in lasts],
                [bases[i] for i in firsts],
                [len(idx) for idx in groups.values()],
            )
        n_groups = len(params[0])
        with conn.transaction():
            row = conn.execute(*self._batch_statement(params)).fetchone()
            assert row is not None
            count, total, at = row
            now = time.time()
            if count == n_groups and total == sum(params[5]) + sum(params[6]):
                if groups is None:  # every op applied, each at its base + 1
                    return AppliedBatch(ops, at, now)
                applied = {key: base + n for key, base, n in zip(groups, params[5], params[6], strict=True)}
            else:
                found = conn.execute(self.written, (list(params[0]), list(params[1]))).fetchall()
                applied = {(c, k): v for c, k, v in found}
            if groups is None:
                groups = {pair: [i] for i, pair in enumerate(zip(collections, keys, strict=True))}
            out: list[ApplyOutcome | None] = [None] * len(ops)
            left: list[int] = []
            for key, idx in groups.items():
                hit = applied.get(key)
                if hit is None:
                    left += idx
                    continue
                last = ops[idx[-1]]
                current = StoredRow(key[0], key[1], last.value_json, hit, last.hlc, last.origin, at, now)
                for i in idx:
                    out[i] = ApplyOutcome(ops[i].op_id, "applied", current)
            if left:
                left.sort()
                settled = self._settle(
                    conn,
                    [ops[i] for i in left],
                    [strategies[i] for i in left],
                    [base_values[i] for i in left],
                )
                for i, outcome in zip(left, settled, strict=True):
                    out[i] = outcome
        assert all(o is not None for o in out)
        return out  # type: ignore[return-value]

    def _batch_statement(self, params: tuple[Sequence[Any], ...]) -> tuple[bytes, tuple[Any, ...]]:
        """The fast statement and its parameters: the columns joined into one text each when no separator occurs
        in them (a delete's value is the empty text, which no JSON text is), else as binary arrays."""
        n = len(params[0])
        if n > 1:
            texts = [_SEP.join(["" if v is None else v for v in params[2]] if None in params[2] else params[2])]
            texts += [_SEP.join(column) for column in (params[0], params[1], params[3], params[4])]
            if all(text.count(_SEP) == n - 1 for text in texts):
                value, collection, key, hlc, origin = texts
                ints = [",".join(map(str, column)) for column in params[5:]]
                return self.batch_joined, (collection, key, value, hlc, origin, *ints)
        return self.batch, tuple(list(column) for column in params)  # psycopg sends lists as arrays

    # -- the slow path --------------------------------------------------------------------------------------------

    def _settle(
        self,
        conn: psycopg.Connection[Any],
        ops: Sequence[Op],
        strategies: Sequence[str],
        base_values: Sequence[str | None],
    ) -> list[ApplyOutcome]:
        """``hs_settle`` for these ops (input order kept); the rows of keys whose ops did not apply are read in
        a second query, only when there are any."""
        params = (
            [o.op_id for o in ops],
            [o.collection for o in ops],
            [o.key for o in ops],
            [o.value_json for o in ops],
            [o.hlc for o in ops],
            [o.origin for o in ops],
            [o.base_version for o in ops],
            list(strategies),
            list(base_values),
        )
        rows = conn.execute(self.settle, params).fetchall()
        now = time.time()
        out: list[ApplyOutcome] = []
        lost: list[Op] = []
        for op, (_op_id, outcome, version, updated_at) in zip(ops, rows, strict=True):
            if outcome == "applied":
                row = StoredRow(op.collection, op.key, op.value_json, version, op.hlc, op.origin, updated_at, now)
                out.append(ApplyOutcome(op.op_id, "applied", row))
            else:
                out.append(ApplyOutcome(op.op_id, outcome, None))
                lost.append(op)
        if not lost:
            return out
        if len(lost) == 1:
            op = lost[0]
            r = conn.execute(self.current_one, (op.collection, op.key)).fetchone()
            current = (
                {}
                if r is None
                else {(op.collection, op.key): StoredRow(op.collection, op.key, r[0], r[1], r[2], r[3], r[4], now)}
            )
        else:
            found = conn.execute(self.current, ([o.collection for o in lost], [o.key for o in lost])).fetchall()
            current = {(r[0], r[1]): StoredRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], now) for r in found}
        return [
            o if o.outcome == "applied" else o._replace(current=current.get((op.collection, op.key)))
            for op, o in zip(ops, out, strict=True)
        ]

    # -- watermarks -----------------------------------------------------------------------------------------------

    def report_settled(self, conn: psycopg.Connection[Any], origin: str, settled: str) -> None:
        """Record that every op of ``origin`` with an HLC below ``settled`` is settled for good (the node's
        outbox and journal hold none of them any more); the primary's watermark only moves forward."""
        conn.execute(self.report, (origin, settled))
