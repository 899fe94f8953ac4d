"""PrimaryTier: the shared PostgreSQL (Supabase or any Postgres), through psycopg 3 and psycopg_pool.

Every write goes through one SQL function of migration 0003 — ``hs_push_one`` for one op (write-through),
``hs_push`` for a batch — and both settle a conflict by ``hs_write``, the one home of the write rule. One round
trip, one transaction, the op id recorded in the applied-ops ledger in the same transaction, so replaying an op
changes nothing. Calls are bounded by ``timeout`` end to end — pool wait, connect, and a client-side deadline on
the socket — so a dead or black-holed primary costs at most ``timeout`` seconds per call, then
`PrimaryUnavailableError`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import redact
from ..errors import (
    ConfigError,
    HybridStoreError,
    PrimaryMisconfiguredError,
    PrimaryRejectedError,
    PrimaryTimeoutError,
    PrimaryUnavailableError,
)
from ..migrations import migrate_postgres, migrations_for
from ..model import ApplyOutcome, Op, StoredRow, TierName
from .base import TierHealth
from .connection import ConnectionSettings, check_url, is_pooled, pooling_from_url, split_pooled_param
from .deadline import Watchdog
from .keyrange import key_range
from .pooling import detect_transaction_pooler, is_prepared_statement_error, refuses_startup_options
from .privileges import StatementCursor, is_privilege_error, missing_privileges, statement_of

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
except ImportError:  # pragma: no cover - exercised only without the [postgres] extra
    psycopg = None  # type: ignore[assignment]

__all__ = ["PrimaryTier", "check_url", "is_pooled"]

log = logging.getLogger("hybridstore.primary")
SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
T = TypeVar("T")


def _current_row(collection: str, key: str, r: Sequence[Any]) -> StoredRow:
    """A row read from the primary (columns of ``_current_sql``); it agrees with the primary as of now."""
    return StoredRow(collection, key, r[0], r[1], r[2], r[3], r[4], time.time())


class _PoolerFound(PrimaryUnavailableError):
    """A call failed because a transaction-mode pooler was found under it; the tier switched modes: retry."""


class PrimaryTier:
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
        url_clean, forced = split_pooled_param(url)
        params = check_url(url_clean)
        if not SCHEMA_RE.fullmatch(schema):
            raise ConfigError(f"invalid schema name {schema!r}: lower-case letters, digits and '_'")
        # Behind a transaction-mode pooler (PgBouncer, Supabase's pooler on port 6543) server-side prepared
        # statements, startup options and LISTEN do not work. Forced by the option or the URL parameter; else the
        # URL's port or host may say so; else the server's behaviour tells, once, before the first call.
        hint = pooled if pooled is not None else forced if forced is not None else pooling_from_url(params)
        self.pooled = bool(hint)
        self._pooling_known = hint is not None
        self.pooled_reason = "" if hint is None else "configured" if pooled is not None or forced is not None else "URL"
        self.url = url
        self.schema = schema
        self.timeout = timeout
        self._pool_size = pool_size
        # Names this node in change notifications, so its own puller can skip them.
        params.setdefault("application_name", f"hybridstore:{node_id}" if node_id else "hybridstore")
        self.application_name = str(params["application_name"])
        session_params = check_url(split_pooled_param(session_url)[0]) if session_url else None
        self._settings = ConnectionSettings(params, timeout, session_params)
        self.session_url = session_url
        self._conninfo = self._settings.conninfo(pooled=self.pooled)
        limit_ms = int(timeout * 1000)
        # Behind a pooler every call is one transaction whose limits are set by its first statement: a call
        # abandoned by our watchdog must not leave a server connection waiting on a lock for ever.
        self._bounded_begin = (
            f"BEGIN; SET LOCAL statement_timeout = {limit_ms}; SET LOCAL lock_timeout = {limit_ms}".encode()
        )
        self._q = sql.Identifier(schema).as_string(None)
        self._push_sql = (
            # %b: binary arrays; text-format array dumping costs ~45 ms of client CPU per 1000 ops
            f"SELECT op_id, outcome, version, updated_at FROM {self._q}.hs_push(%b::uuid[], %b::text[], "
            f"%b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[])"
        )
        # One op: scalar parameters (a batch of one would cost array dumping here and a larger plan there).
        self._push_one_sql = (
            f"SELECT outcome, version, updated_at FROM {self._q}.hs_push_one(%s::uuid, %s::text, %s::text, "
            f"%s::text, %s::text, %s::text, %s::bigint, %s::text, %s::text)"
        )
        self.channel = f"hs_{schema}"  # change notifications (migration 0002)
        self._current_sql = (
            f"SELECT value::text, version, hlc, origin, extract(epoch FROM updated_at)::float8 "
            f"FROM {self._q}.records WHERE collection = %s AND key = %s AND version > 0"
        )
        self._watchdog = Watchdog()
        self._lock = threading.Lock()
        self._closers: list[threading.Thread] = []  # old pools closing in the background (`reset_pool`)
        self._migrate_lock = threading.Lock()
        self.auto_migrate = migrate  # False: the schema is managed elsewhere (`hybridstore migrate --admin-url`)
        self._ready = False  # the connection mode is settled, the schema current and the role's privileges enough
        self._closed = False
        self.last_error: str | None = None
        self.last_latency_ms: float | None = None
        self._pool = self._new_pool()

    def _new_pool(self) -> ConnectionPool:
        pool = ConnectionPool(
            self._conninfo,
            kwargs={
                "autocommit": True,
                "prepare_threshold": None if self.pooled else 5,
                "cursor_factory": StatementCursor,
            },
            min_size=1,
            max_size=self._pool_size,
            open=False,
            timeout=self.timeout,
            reconnect_timeout=3600 * 24 * 365,
            name=f"hybridstore-{self.schema}",
        )
        pool.open(wait=False)
        return pool

    def reset_pool(self) -> None:
        """Replace the pool with a fresh one (after an outage: stale connections and long reconnect backoff
        are dropped at once). The old pool closes in the background; `close` waits for it. No-op once closed."""
        with self._lock:
            if self._closed:
                return
            old, self._pool = self._pool, self._new_pool()
            # Started under the lock, so close() (which joins every closer it finds) never sees one unstarted.
            closer = threading.Thread(
                target=old.close, kwargs={"timeout": 1.0}, name="hybridstore-pool-close", daemon=True
            )
            closer.start()
            self._closers = [t for t in self._closers if t.is_alive()] + [closer]

    # -- plumbing ---------------------------------------------------------------------------------------------

    @contextmanager
    def _conn(self, budget: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection whose use is cut off after ``budget`` seconds (default: the tier timeout)."""
        if self._closed:
            raise PrimaryUnavailableError("primary tier is closed")
        budget = budget or self.timeout
        deadline = time.monotonic() + budget
        try:
            with self._pool.connection(timeout=self.timeout) as conn:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PrimaryTimeoutError(f"primary unavailable: no connection within {budget:g}s")
                with self._watchdog.guard(conn.pgconn.socket, remaining):
                    yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, PoolClosed) as exc:
            self.last_error = str(exc).strip() or type(exc).__name__
            if isinstance(exc, PoolTimeout):
                raise PrimaryTimeoutError(
                    f"primary unavailable: no connection within {self.timeout:g}s ({self.last_error})"
                ) from exc
            if time.monotonic() >= deadline - 0.05 * budget:
                raise PrimaryTimeoutError(
                    f"primary unavailable: no answer within {budget:g}s ({self.last_error})"
                ) from exc
            raise PrimaryUnavailableError(f"primary unavailable: {self.last_error}") from exc
        except psycopg.Error as exc:
            self.last_error = str(exc).strip()
            if is_prepared_statement_error(exc):  # a connection from before the switch may still meet one
                self._switch_to_pooled(f"prepared statements fail ({self.last_error})")
                raise _PoolerFound(f"primary unavailable: {self.last_error}") from exc
            if is_privilege_error(exc):
                raise self._refused(exc) from exc
            raise PrimaryRejectedError(f"primary rejected the operation: {self.last_error}") from exc

    def _refused(self, exc: BaseException) -> PrimaryMisconfiguredError:
        """A privilege error: the node's role lacks a grant. Named with the statement that needed it; the
        tier checks its privileges again before the next call (the gateway keeps calls away meanwhile)."""
        self._ready = False
        statement = statement_of(exc)
        where = f" (statement: {statement})" if statement else ""
        return PrimaryMisconfiguredError(
            f"primary refuses this node: {str(exc).strip()}{where}; "
            f"grant what `hybridstore --schema {self.schema} grants ROLE` prints"
        )

    def _connect(self, conninfo: str | None = None) -> psycopg.Connection[Any]:
        """A new autocommit connection outside the pool. A server that refuses the startup options is a pooler:
        the tier switches to pooled mode and connects again without them."""
        try:
            return psycopg.connect(conninfo or self._conninfo, autocommit=True, cursor_factory=StatementCursor)
        except psycopg.OperationalError as exc:
            if conninfo is not None or self.pooled or not refuses_startup_options(exc):
                raise
            self._switch_to_pooled(f"the server refuses startup options ({str(exc).strip()})")
            return psycopg.connect(self._conninfo, autocommit=True, cursor_factory=StatementCursor)

    def _switch_to_pooled(self, reason: str) -> None:
        """From now on: no server-side prepared statements, no startup options, timeouts per transaction, no
        LISTEN on this address. Connections made before are dropped (the pool is replaced)."""
        with self._lock:
            if self.pooled:
                return
            self.pooled, self._pooling_known, self.pooled_reason = True, True, reason
            self._conninfo = self._settings.conninfo(pooled=True)
        log.warning("the primary is reached through a transaction-mode pooler: %s", reason)
        self.reset_pool()

    def _settle_pooling(self, budget: float) -> None:
        """Tell, once, whether the URL leads to a transaction-mode pooler (see `pooling`)."""
        if self._pooling_known:
            return
        try:
            with (
                self._connect() as a,
                self._connect() as b,
                self._watchdog.guard(a.pgconn.socket, budget),
                self._watchdog.guard(b.pgconn.socket, budget),
            ):
                found = detect_transaction_pooler(a, b)
        except psycopg.OperationalError as exc:
            raise PrimaryUnavailableError(f"primary unavailable: {str(exc).strip()}") from exc
        except psycopg.Error as exc:
            if is_privilege_error(exc):
                raise self._refused(exc) from exc
            raise PrimaryRejectedError(f"primary rejected the operation: {str(exc).strip()}") from exc
        if found:
            self._switch_to_pooled("a client's server connection changes between transactions")
        else:
            self._pooling_known = True

    def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        if not self._ready:
            self.ensure_schema()
        start = time.perf_counter()
        try:
            result = self._call(fn)
        except _PoolerFound:  # the call did not run (its statement was refused): once more, in pooled mode
            result = self._call(fn)
        self.last_latency_ms = (time.perf_counter() - start) * 1000
        return result

    def _call(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._conn() as conn:
            if not self.pooled:
                return fn(conn)
            conn.execute(self._bounded_begin)
            try:
                result = fn(conn)
            except BaseException:
                with suppress(psycopg.Error):
                    conn.execute(b"ROLLBACK")
                raise
            conn.execute(b"COMMIT")
            return result

    def ensure_schema(self, *, budget: float | None = None) -> None:
        """Make sure the tier can serve calls, within ``budget`` seconds (default: the tier timeout, so a
        foreground call never waits longer on the primary than that): settle whether a pooler is in the way, then
        check that the schema is current — by a read, with no DDL privilege needed — and that the role has every
        privilege it needs. A schema behind this code is migrated (with ``migrate=True``) or reported as
        `PrimaryMisconfiguredError` (``migrate=False``: run ``hybridstore migrate --admin-url …``); so is a
        missing privilege. If another thread is checking already, this waits for it at most the budget, then
        raises `PrimaryTimeoutError` (the caller's write is queued; the gateway's prober retries with a longer
        budget)."""
        budget = budget or self.timeout
        if not self._migrate_lock.acquire(timeout=budget):
            raise PrimaryTimeoutError(f"primary unavailable: its schema is being checked (waited {budget:g}s)")
        try:
            if self._ready:
                return
            self._settle_pooling(budget)
            missing = self._missing_versions(budget)
            if missing:
                if not self.auto_migrate:
                    raise PrimaryMisconfiguredError(
                        f"primary schema {self.schema} lacks migration(s) {', '.join(map(str, missing))} and "
                        f"automatic migration is off: run `hybridstore migrate --admin-url …` as its owner"
                    )
                self._migrate_locked(budget)
            self._check_privileges(budget)
            self._ready = True
        finally:
            self._migrate_lock.release()

    def _missing_versions(self, budget: float) -> list[int]:
        latest = [m.version for m in migrations_for("primary")]
        query = f"SELECT version FROM {self._q}.hs_migrations"
        try:
            with self._conn(budget=budget) as conn:
                done = {r[0] for r in conn.execute(query)}
        except PrimaryRejectedError:  # no such schema or table yet: the migrations will create them
            return latest
        return [v for v in latest if v not in done]

    def _check_privileges(self, budget: float) -> None:
        with self._conn(budget=budget) as conn:
            missing = missing_privileges(conn, self.schema)
        if missing:
            raise PrimaryMisconfiguredError(
                f"primary refuses this node: its role lacks {'; '.join(missing)}; "
                f"grant what `hybridstore --schema {self.schema} grants ROLE` prints"
            )

    def migrate(self, *, budget: float = 60.0) -> list[int]:
        """Apply pending schema migrations (idempotent, safe with many nodes at once); returns the versions
        applied now. ``budget``: seconds for the whole migration (DDL may wait for locks)."""
        budget = max(budget, self.timeout)
        with self._migrate_lock:
            self._settle_pooling(budget)
            if not self._missing_versions(budget):
                return []
            return self._migrate_locked(budget)

    def _migrate_locked(self, budget: float) -> list[int]:
        with self._conn(budget=budget) as conn, conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = {int(budget * 1000)}")  # a migration may outlast a write
            conn.execute(f"SET LOCAL lock_timeout = {int(budget * 1000)}")
            # Lock first: concurrent CREATE SCHEMA IF NOT EXISTS from several nodes would race.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"hybridstore:{self.schema}",))
            applied = migrate_postgres(conn, self._q)
        if applied:
            log.info("primary schema %s migrated to version %s", self.schema, applied[-1])
        return applied

    @property
    def can_listen(self) -> bool:
        """May this node LISTEN for change notifications? Not through a transaction pooler — unless a session
        address (``session_url``) is configured for it — and not before the connection mode is settled."""
        return self._pooling_known and (self.session_url is not None or not self.pooled)

    @property
    def schema_ready(self) -> bool:
        return self._ready

    # -- writes (`PrimaryWrites`) -------------------------------------------------------------------------------

    def put_one(self, op: Op, *, strategy: str = "last_wins", base_value: str | None = None) -> ApplyOutcome:
        """Apply one op (write-through): one round trip, one transaction, ``hs_push_one`` (migration 0003) — the
        same rules and results as `put_many` for this op alone. A second query reads the primary's row only
        when the op did not apply."""
        return self._run(lambda conn: self._apply_one(conn, op, strategy, base_value))

    def put_many(
        self,
        ops: Sequence[Op],
        *,
        strategies: Sequence[str] | None = None,
        base_values: Sequence[str | None] | None = None,
    ) -> list[ApplyOutcome]:
        """Apply ops in one transaction; see ``hs_push`` (migration 0003) for the rules. Idempotent by op id.
        ``strategies`` gives each op's conflict strategy (default ``last_wins``); ``base_values`` the last value
        the writer agreed on with the primary (kept with a manual conflict)."""
        if not ops:
            return []
        if len(ops) == 1:
            strategy = strategies[0] if strategies is not None else "last_wins"
            return [self.put_one(ops[0], strategy=strategy, base_value=base_values[0] if base_values else None)]
        return self._run(lambda conn: self._push(conn, ops, strategies, base_values))

    def _apply_one(self, conn: psycopg.Connection[Any], op: Op, strategy: str, base_value: str | None) -> ApplyOutcome:
        params = (
            op.op_id,
            op.collection,
            op.key,
            op.value_json,
            op.hlc,
            op.origin,
            op.base_version,
            strategy,
            base_value,
        )
        result = conn.execute(self._push_one_sql, params).fetchone()
        assert result is not None
        outcome, version, updated_at = result
        if outcome == "applied":
            row = StoredRow(op.collection, op.key, op.value_json, version, op.hlc, op.origin, updated_at, time.time())
            return ApplyOutcome(op.op_id, "applied", row)
        cur = conn.execute(self._current_sql, (op.collection, op.key)).fetchone()
        return ApplyOutcome(op.op_id, outcome, None if cur is None else _current_row(op.collection, op.key, cur))

    def _push(
        self,
        conn: psycopg.Connection[Any],
        ops: Sequence[Op],
        strategies: Sequence[str] | None,
        base_values: Sequence[str | None] | None,
    ) -> list[ApplyOutcome]:
        params = (
            [o.op_id for o in ops],
            [o.collection for o in ops],
            [o.key for o in ops],
            [o.value_json for o in ops],
            [o.hlc for o in ops],
            [o.origin for o in ops],
            [o.base_version for o in ops],
            list(strategies) if strategies is not None else ["last_wins"] * len(ops),
            list(base_values) if base_values is not None else [None] * len(ops),
        )
        rows = conn.execute(self._push_sql, params).fetchall()
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
        if lost:
            current = self._current_rows(conn, lost)
            out = [
                o if o.outcome == "applied" else o._replace(current=current.get((op.collection, op.key)))
                for op, o in zip(ops, out, strict=True)
            ]
        return out

    def _current_rows(self, conn: psycopg.Connection[Any], ops: Sequence[Op]) -> dict[tuple[str, str], StoredRow]:
        """The primary's rows for the keys of ops that did not apply."""
        query = (
            f"SELECT r.collection, r.key, r.value::text, r.version, r.hlc, r.origin, "
            f"extract(epoch FROM r.updated_at)::float8 FROM {self._q}.records r "
            f"JOIN unnest(%b::text[], %b::text[]) AS k(collection, key) "
            f"ON r.collection = k.collection AND r.key = k.key WHERE r.version > 0"
        )
        rows = conn.execute(query, ([o.collection for o in ops], [o.key for o in ops])).fetchall()
        now = time.time()
        return {(r[0], r[1]): StoredRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], now) for r in rows}

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
        held = (
            f"SELECT EXISTS (SELECT 1 FROM {self._q}.records WHERE stamp >= pg_snapshot_xmin(pg_current_snapshot()) "
            f"AND (stamp, collection, key) > (%s::text::xid8, %s, %s))"
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
        """{strategy: {status: count}}."""
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT strategy, status, count(*) FROM {self._q}.conflicts GROUP BY 1, 2"
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
            with conn.transaction():
                outcome = self._apply_one(conn, op, strategy, base)
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

    def listen_connection(self) -> psycopg.Connection[Any]:
        """A dedicated connection (outside the pool) listening for change notifications: on the session address
        when one is configured (behind a transaction pooler, the only way to LISTEN), else on the primary's."""
        conn = self._connect(self._settings.session_conninfo())
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    def ping(self) -> float:
        """Round trip to the primary in milliseconds, or `PrimaryUnavailableError`."""
        start = time.perf_counter()
        with self._conn() as conn:
            conn.execute("SELECT 1").fetchall()
        self.last_latency_ms = (time.perf_counter() - start) * 1000
        return self.last_latency_ms

    def probe(self) -> float:
        """Like `ping` but on a brand-new connection outside the pool (to tell whether the primary is back
        without waiting on the pool's reconnect backoff)."""
        start = time.perf_counter()
        try:
            with (
                self._connect() as conn,
                self._watchdog.guard(conn.pgconn.socket, self.timeout),
            ):
                conn.execute("SELECT 1").fetchall()
        except psycopg.Error as exc:
            self.last_error = str(exc).strip() or type(exc).__name__
            raise PrimaryUnavailableError(f"primary unavailable: {self.last_error}") from exc
        self.last_latency_ms = (time.perf_counter() - start) * 1000
        return self.last_latency_ms

    def health(self) -> TierHealth:
        extra = {"url": redact(self.url), "schema": self.schema}
        try:
            latency = self.ping()
        except HybridStoreError as exc:
            return TierHealth("primary", "down", str(exc), extra=extra)
        return TierHealth("primary", "healthy", "", latency, extra=extra)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            closers, self._closers = self._closers, []
        with suppress(Exception):
            self._pool.close(timeout=1.0)
        for closer in closers:  # pools replaced by reset_pool: each close is bounded by its own 1 s timeout
            closer.join(timeout=2.0)
        self._watchdog.close()

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

    def iter_snapshot(self, batch_size: int = 5000, *, fetch_timeout: float | None = None) -> Iterator[list[Any]]:
        """Every live record as ``(collection, key, value_text, version, hlc, origin, updated_at)``, ordered by
        (collection, key), in batches, all from one consistent snapshot (a repeatable-read, read-only
        transaction on a connection of its own, outside the pool). Each fetch is bounded by ``fetch_timeout``
        (default: 10 times the tier timeout); a failure raises `PrimaryUnavailableError`."""
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
                            f"SELECT collection, key, value::text, version, hlc, origin, "
                            f"extract(epoch FROM updated_at)::float8 FROM {self._q}.records "
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
