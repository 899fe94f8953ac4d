"""PrimaryTier: the shared PostgreSQL (Supabase or any Postgres), through psycopg 3 and psycopg_pool.

Every write goes through the push path of `tiers.push` (migration 0008): one statement for the common case,
``hs_settle`` for conflicts and replays, which settles by ``hs_write``, the one home of the write rule. Replaying
an op changes nothing: the record row, the settled marks and the node's watermark say it was settled. Calls are
bounded by ``timeout`` end to end — pool wait, connect, and a client-side deadline on the socket — so a dead or
black-holed primary costs at most ``timeout`` seconds per call, then `PrimaryUnavailableError`. How the tier
connects — bounds, poolers, TLS settings from the URL, the schema and privilege checks before the first call —
is `PrimaryConnection`'s (`primary_connection.py`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..config import redact
from ..errors import HybridStoreError, PrimaryUnavailableError
from ..model import ApplyOutcome, Op, StoredRow, TierName
from .base import TierHealth
from .connection import check_url, is_pooled
from .keyrange import key_range
from .primary_connection import PrimaryConnection
from .push import PushStatements

try:
    import psycopg
except ImportError:  # pragma: no cover - exercised only without the [postgres] extra
    psycopg = None  # type: ignore[assignment]

__all__ = ["PrimaryTier", "check_url", "is_pooled"]


def _current_row(collection: str, key: str, r: Sequence[Any]) -> StoredRow:
    """A row read from the primary (columns of ``_current_sql``); it agrees with the primary as of now."""
    return StoredRow(collection, key, r[0], r[1], r[2], r[3], r[4], time.time())


# `PrimaryTier.iter_snapshot`'s default select list.
SNAPSHOT_COLUMNS = "collection, key, value::text, version, hlc, origin, extract(epoch FROM updated_at)::float8"


class PrimaryTier(PrimaryConnection):
    """The primary's data: writes, reads, the change feed, conflicts and audit, bulk work for services; how it
    connects (bounds, pooling, readiness, errors) is `PrimaryConnection`'s."""

    name: TierName = "primary"

    def __init__(
        self,
        url: str,
        *,
        schema: str = "hybridstore",
        timeout: float = 2.0,
        pool_size: int = 4,
        migrate: bool = True,
        pooled: bool | None = None,
        node_id: str | None = None,
        session_url: str | None = None,
    ) -> None:
        super().__init__(
            url,
            schema=schema,
            timeout=timeout,
            pool_size=pool_size,
            migrate=migrate,
            pooled=pooled,
            node_id=node_id,
            session_url=session_url,
        )
        self._pusher = PushStatements(self._q)  # the push path: tiers/push.py
        self._current_sql = (
            f"SELECT value::text, version, hlc, origin, extract(epoch FROM updated_at)::float8 "
            f"FROM {self._q}.records WHERE collection = %s AND key = %s AND version > 0"
        )

    # -- writes (`PrimaryWrites`) -------------------------------------------------------------------------------

    def put_one(self, op: Op, *, strategy: str = "last_wins", base_value: str | None = None) -> ApplyOutcome:
        """Apply one op (write-through): one round trip in the common case (see `tiers.push`) — the same rules
        and results as `put_many` for this op alone."""
        return self._run(lambda conn: self._pusher.push_one(self.statement_cursor(conn), op, strategy, base_value))

    def put_many(
        self,
        ops: Sequence[Op],
        *,
        strategies: Sequence[str] | None = None,
        base_values: Sequence[str | None] | None = None,
    ) -> list[ApplyOutcome]:
        """Apply ops in one transaction; see `tiers.push` and migration 0008 for the rules. Idempotent.
        ``strategies`` gives each op's conflict strategy (default ``last_wins``); ``base_values`` the last value
        the writer agreed on with the primary (kept with a manual conflict)."""
        return list(self.push_batch(ops, strategies=strategies, base_values=base_values))

    def push_batch(
        self,
        ops: Sequence[Op],
        *,
        strategies: Sequence[str] | None = None,
        base_values: Sequence[str | None] | None = None,
    ) -> Sequence[ApplyOutcome]:
        """`put_many` for the replayer: the outcomes may be an `AppliedBatch` (every op applied, one per key), which
        builds each outcome only when asked for — the replayer settles such a batch from its ops."""
        if not ops:
            return []
        if len(ops) == 1:
            strategy = strategies[0] if strategies is not None else "last_wins"
            return [self.put_one(ops[0], strategy=strategy, base_value=base_values[0] if base_values else None)]
        names = list(strategies) if strategies is not None else ["last_wins"] * len(ops)
        bases = list(base_values) if base_values is not None else [None] * len(ops)
        return self._run(lambda conn: self._pusher.push_batch(conn, ops, names, bases))

    def origin_max_hlc(self, origin: str) -> str | None:
        """The newest stamp the primary holds of ``origin``'s writes: its rows, its replay marks, its watermark
        (``None`` if none). A full scan of ``records``: for a node id starting on a new data directory only."""
        q = self._q
        statement = (
            f'SELECT greatest((SELECT max(hlc COLLATE "C") FROM {q}.records WHERE origin = %s), '
            f'(SELECT max(hlc COLLATE "C") FROM {q}.settled_marks WHERE origin = %s), '
            f'(SELECT settled COLLATE "C" FROM {q}.node_settled WHERE origin = %s))'
        )

        def newest(conn: psycopg.Connection[Any]) -> str | None:
            row = conn.execute(statement, (origin, origin, origin)).fetchone()
            return None if row is None or row[0] is None else str(row[0])

        return self._run(newest)

    def report_settled(self, origin: str, settled: str) -> None:
        """Tell the primary that every op of ``origin`` with an HLC below ``settled`` is settled for good: a replay
        of one of them is a duplicate whatever the retention pruned since (migration 0008)."""
        self._run(lambda conn: self._pusher.report_settled(conn, origin, settled))

    def compact_counts(self) -> None:
        """Fold the conflict counts' +1 / -1 rows into one row per (strategy, status) (``hs_compact_counts``)."""
        self._run(lambda conn: conn.execute(f"SELECT {self._q}.hs_compact_counts()".encode()))

    def prune(self, *, ledger_days: float, conflict_days: float, audit_days: float, limit: int) -> dict[str, int]:
        """Apply the retention rules (``hs_prune``, migration 0008), at most ``limit`` rows per table; returns what
        was deleted per table, or ``{}`` when another node is pruning right now (it holds the advisory lock)."""

        def run(conn: psycopg.Connection[Any]) -> dict[str, int]:
            with conn.transaction():
                got = conn.execute(
                    "SELECT pg_try_advisory_xact_lock(hashtext(%s))", (f"hybridstore-prune:{self.schema}",)
                )
                row = got.fetchone()
                if not row or not row[0]:
                    return {}
                rows = conn.execute(
                    f"SELECT what, deleted FROM {self._q}.hs_prune(make_interval(secs => %s), "
                    f"make_interval(secs => %s), make_interval(secs => %s), %s)".encode(),
                    (ledger_days * 86400, conflict_days * 86400, audit_days * 86400, limit),
                ).fetchall()
            return {str(what): int(n) for what, n in rows}

        return self._run(run)

    def _apply_one(self, conn: psycopg.Connection[Any], op: Op, strategy: str, base_value: str | None) -> ApplyOutcome:
        return self._pusher.push_one(self.statement_cursor(conn), op, strategy, base_value)

    def get(self, collection: str, key: str) -> StoredRow | None:
        rows = self._run(lambda conn: conn.execute(self._current_sql, (collection, key)).fetchall())
        if not rows:
            return None
        return _current_row(collection, key, rows[0])

    def scan(self, collection: str, *, prefix: str = "", after: str | None = None, limit: int = 100) -> list[StoredRow]:
        low, inclusive, high = key_range(prefix, after)
        query = (
            f"SELECT key, value::text, version, hlc, origin, extract(epoch FROM updated_at)::float8 "
            f"FROM {self._q}.records WHERE collection = %s AND value IS NOT NULL AND version > 0 "
            + ("AND key >= %s " if inclusive else "AND key > %s ")
        )
        params: list[Any] = [collection, low]
        if high is not None:
            query += "AND key < %s "
            params.append(high)
        query += "ORDER BY key LIMIT %s"
        params.append(limit)
        rows = self._run(lambda conn: conn.execute(query.encode(), params).fetchall())
        now = time.time()
        return [StoredRow(collection, k, v, ver, h, o, u, now) for k, v, ver, h, o, u in rows]

    def dump(self, after: tuple[str, str] | None = None, limit: int = 5000) -> list[StoredRow]:
        """Every row (tombstones included) in (collection, key) order after ``after``, at most ``limit``: a full
        scan, page by page, for rebuilding a node's local copy."""
        query = (
            f"SELECT collection, key, value::text, version, hlc, origin, extract(epoch FROM updated_at)::float8 "
            f"FROM {self._q}.records WHERE version > 0 "
            + ("AND (collection, key) > (%s, %s) " if after is not None else "")
            + "ORDER BY collection, key LIMIT %s"
        )
        params = [*(after or ()), limit]
        rows = self._run(lambda conn: conn.execute(query.encode(), params).fetchall())
        now = time.time()
        return [StoredRow(c, k, v, ver, h, o, u, now) for c, k, v, ver, h, o, u in rows]

    def feed_page(self, after: Any = 0, limit: int = 1000) -> tuple[list[tuple[Any, ...]], bool]:
        """The change feed as plain rows ``(collection, key, value, version, hlc, origin, updated_at, stamp)``
        (the puller's fast path: no objects per row); the next cursor is ``(stamp, collection, key)`` of the
        last row. Also says whether committed changes are held back behind a running transaction."""
        stamp, collection, key = after if after else (0, "", "")
        params = (str(stamp), collection, key)
        page = (
            f"SELECT r.collection, r.key, r.value::text, r.version, r.hlc, r.origin, "
            f"extract(epoch FROM r.updated_at)::float8, r.stamp::text::bigint FROM {self._q}.records r "
            f"WHERE (r.stamp, r.collection, r.key) > (%s::text::xid8, %s, %s) "
            f"AND r.stamp < pg_snapshot_xmin(pg_current_snapshot()) "
            # ORDER BY the xid8 column, so the index is walked; LIMIT as a literal, so a prepared statement's
            # generic plan knows it and still picks the index scan.
            f"ORDER BY r.stamp, r.collection, r.key LIMIT {int(limit)}"
        )
        # Any committed row past the cursor that the page did not return: held back behind a running transaction,
        # or visible since (this is a new snapshot: the transaction may have ended between the two statements, and
        # asking only for rows still held back would miss those, leaving them for the next poll). Look again soon.
        held = (
            f"SELECT EXISTS (SELECT 1 FROM {self._q}.records WHERE (stamp, collection, key) > (%s::text::xid8, %s, %s))"
        )

        def fetch(conn: psycopg.Connection[Any]) -> tuple[list[Any], bool]:
            rows = conn.execute(page, params).fetchall()
            if rows:
                return rows, False
            found = conn.execute(held, params).fetchone()
            return rows, bool(found and found[0])

        return self._run(fetch)

    def count_records(self) -> int:
        row = self._run(lambda conn: conn.execute(f"SELECT count(*) FROM {self._q}.records").fetchone())
        assert row is not None
        return int(row[0])

    # -- conflicts and audit ------------------------------------------------------------------------------------

    _CONFLICT_COLUMNS = (
        "id, collection, key, strategy, base::text, local::text, remote::text, local_hlc, remote_hlc, status, "
        "resolution::text, extract(epoch FROM created_at)::float8, extract(epoch FROM resolved_at)::float8, "
        "resolved_by"
    )

    def list_conflicts(
        self, *, status: str | None = None, collection: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[tuple[Any, ...]]:
        query = f"SELECT {self._CONFLICT_COLUMNS} FROM {self._q}.conflicts WHERE id > %s"
        params: list[Any] = [after_id]
        if status is not None:
            query += " AND status = %s"
            params.append(status)
        if collection is not None:
            query += " AND collection = %s"
            params.append(collection)
        query += " ORDER BY id LIMIT %s"
        params.append(limit)
        return self._run(lambda conn: conn.execute(query.encode(), params).fetchall())

    def get_conflict(self, conflict_id: int) -> tuple[Any, ...] | None:
        query = f"SELECT {self._CONFLICT_COLUMNS} FROM {self._q}.conflicts WHERE id = %s"
        return self._run(lambda conn: conn.execute(query.encode(), (conflict_id,)).fetchone())

    def conflict_counts(self) -> dict[str, dict[str, int]]:
        """{strategy: {status: count}}, from the counts a trigger keeps (migration 0008): a few rows, however many
        conflicts are logged (plus those of the last minute, until `compact_counts` folds them)."""
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT strategy, status, sum(n)::int8 FROM {self._q}.conflict_counts GROUP BY 1, 2 HAVING sum(n) > 0"
            ).fetchall()
        )
        out: dict[str, dict[str, int]] = {}
        for strategy, status, n in rows:
            out.setdefault(strategy, {})[status] = n
        return out

    def close_conflict(self, conflict_id: int, *, resolution: dict[str, Any], actor: str) -> bool:
        """Mark an open conflict resolved and audit it, in one transaction; False if it was not open."""

        def run(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                row = conn.execute(
                    f"UPDATE {self._q}.conflicts SET status = 'resolved', resolution = %s::jsonb, "
                    f"resolved_at = now(), resolved_by = %s WHERE id = %s AND status = 'open' "
                    f"RETURNING collection || '/' || key",
                    (json.dumps(resolution), actor, conflict_id),
                ).fetchone()
                if row is None:
                    return False
                conn.execute(
                    f"INSERT INTO {self._q}.audit_log (actor, action, target, details) VALUES (%s, %s, %s, %s::jsonb)",
                    (actor, "conflict.resolved", row[0], json.dumps({"conflict_id": conflict_id, **resolution})),
                )
                return True

        return self._run(run)

    def push_resolution(
        self, op: Op, strategy: str, *, base: str | None, local: str | None, remote: StoredRow | None, actor: str
    ) -> ApplyOutcome:
        """Push the merged value of a conflict and log the resolution (conflicts + audit) in one transaction.
        The log is written only if the merged value applied."""

        def run(conn: psycopg.Connection[Any]) -> ApplyOutcome:
            with conn.transaction() as tx:
                outcome = self._apply_one(conn, op, strategy, base)
                if outcome.outcome not in ("applied", "duplicate"):
                    # Someone wrote in between: the merge did not apply and leaves no trace (no replay mark, which
                    # would cover the conflicting op itself, still queued); the caller merges again.
                    raise psycopg.Rollback(tx)  # leaves the block: `outcome` is returned below
                if outcome.outcome == "applied":
                    row = conn.execute(
                        f"INSERT INTO {self._q}.conflicts (collection, key, strategy, base, local, remote, local_hlc, "
                        f"remote_hlc, status, resolution, resolved_at, resolved_by) VALUES "
                        f"(%s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s, 'resolved', %s::jsonb, now(), %s) "
                        f"RETURNING id",
                        (
                            op.collection,
                            op.key,
                            strategy,
                            base,
                            local,
                            remote.value_json if remote else None,
                            op.hlc,
                            remote.hlc if remote else None,
                            json.dumps(
                                {"merged": True, "value_version": outcome.current.version if outcome.current else None}
                            ),
                            actor,
                        ),
                    ).fetchone()
                    assert row is not None
                    conn.execute(
                        f"INSERT INTO {self._q}.audit_log (actor, action, target, details) "
                        f"VALUES (%s, 'conflict.resolved', %s, %s::jsonb)",
                        (actor, f"{op.collection}/{op.key}", json.dumps({"conflict_id": row[0], "strategy": strategy})),
                    )
            return outcome

        return self._run(run)

    def audit(self, actor: str, action: str, target: str, details: dict[str, Any]) -> None:
        self._run(
            lambda conn: conn.execute(
                f"INSERT INTO {self._q}.audit_log (actor, action, target, details) VALUES (%s, %s, %s, %s::jsonb)",
                (actor, action, target, json.dumps(details)),
            )
        )

    def health(self) -> TierHealth:
        extra = {"url": redact(self.url), "schema": self.schema}
        try:
            latency = self.ping()
        except HybridStoreError as exc:
            return TierHealth("primary", "down", str(exc), extra=extra)
        return TierHealth("primary", "healthy", "", latency, extra=extra)

    # -- bulk reads for services (backups, restores) ----------------------------------------------------------

    def get_many(self, collection: str, keys: Sequence[str]) -> list[StoredRow]:
        """The primary's rows (tombstones included) for ``keys`` of one collection, in one round trip."""
        query = (
            f"SELECT key, value::text, version, hlc, origin, extract(epoch FROM updated_at)::float8 "
            f"FROM {self._q}.records WHERE collection = %s AND key = ANY(%s) AND version > 0"
        )
        rows = self._run(lambda conn: conn.execute(query.encode(), (collection, list(keys))).fetchall())
        now = time.time()
        return [StoredRow(collection, k, v, ver, h, o, u, now) for k, v, ver, h, o, u in rows]

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement of a service's own (``{schema}`` is replaced by the quoted schema) within the
        tier's timeout; returns its rows (empty for a statement without a result)."""
        text = statement.replace("{schema}", self._q)

        def run(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            cur = conn.execute(text.encode(), params)
            return cur.fetchall() if cur.description else []

        return self._run(run)

    def query_binary(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """`query` with results in binary format: a ``bytea`` column arrives as its bytes, not as hex text to
        decode (a backup file's blocks: twice the bytes on the wire and a decode otherwise)."""
        text = statement.replace("{schema}", self._q)
        return self._run(lambda conn: conn.execute(text.encode(), params, binary=True).fetchall())

    def copy_in(
        self,
        copy: str,
        types: Sequence[str],
        rows: Iterable[Sequence[Any]],
        then: Callable[[], tuple[str, Sequence[Any]]],
        *,
        budget: float,
    ) -> list[tuple[Any, ...]]:
        """Stream ``rows`` (columns of ``types``) into ``copy``, a ``COPY … FROM STDIN (FORMAT BINARY)``, then run
        the statement ``then()`` returns (built once every row is sent), in one transaction on one pooled
        connection: nothing is committed unless all of it succeeds. Returns that statement's rows. Each row must
        be sent within the tier timeout (a stalled peer is cut at once), the whole within ``budget`` seconds
        (also the server's statement timeout for this transaction). ``{schema}`` is replaced in both."""
        if not self._ready:
            self.ensure_schema(budget=budget)
        with self._conn(budget=budget) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SET LOCAL statement_timeout = {int(budget * 1000)}".encode())
            with cur.copy(copy.replace("{schema}", self._q).encode()) as cp:
                cp.set_types(list(types))
                for row in rows:
                    with self._watchdog.guard(conn.pgconn.socket, self.timeout):
                        cp.write_row(row)
            statement, params = then()
            cur.execute(statement.replace("{schema}", self._q).encode(), params)
            return cur.fetchall() if cur.description else []

    def iter_snapshot(
        self, batch_size: int = 5000, *, fetch_timeout: float | None = None, columns: str = SNAPSHOT_COLUMNS
    ) -> Iterator[list[Any]]:
        """Every live record as ``(collection, key, value_text, version, hlc, origin, updated_at)`` (or as the
        caller's ``columns``: a constant select list over ``records``), ordered by (collection, key), in batches,
        all from one consistent snapshot (a repeatable-read, read-only transaction on a connection of its own,
        outside the pool). Each fetch is bounded by ``fetch_timeout`` (default: 10 times the tier timeout); a
        failure raises `PrimaryUnavailableError`."""
        if not self._ready:
            self.ensure_schema()
        budget = fetch_timeout or self.timeout * 10
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            raise PrimaryUnavailableError(f"primary unavailable: {str(exc).strip()}") from exc
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                with conn.cursor(name="hybridstore_snapshot") as cur:
                    with self._watchdog.guard(conn.pgconn.socket, budget):
                        cur.execute(
                            f"SELECT {columns} FROM {self._q}.records "
                            f"WHERE value IS NOT NULL AND version > 0 ORDER BY collection, key".encode()
                        )
                    while True:
                        with self._watchdog.guard(conn.pgconn.socket, budget):
                            rows = cur.fetchmany(batch_size)
                        if not rows:
                            return
                        yield rows
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise PrimaryUnavailableError(f"primary unavailable during a snapshot: {str(exc).strip()}") from exc
        finally:
            conn.close()


if TYPE_CHECKING:  # mypy checks that the tier fulfils every protocol it claims
    from .base import ChangeFeed, PrimaryWrites, Tier

    def _protocols(tier: PrimaryTier) -> tuple[Tier, PrimaryWrites, ChangeFeed]:
        return tier, tier, tier
