"""PrimaryTier: the shared PostgreSQL (Supabase or any Postgres), through psycopg 3 and psycopg_pool.

Every write goes through the ``hs_apply`` function (migration 0001): one round trip, one transaction, the op
id recorded in the applied-ops ledger in the same transaction, so replaying an op changes nothing. Calls are
bounded by ``timeout`` end to end — pool wait, connect, and a client-side deadline on the socket — so a dead or
black-holed primary costs at most ``timeout`` seconds per call, then `PrimaryUnavailableError`.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from ..config import redact
from ..errors import (
    ConfigError,
    HybridStoreError,
    PrimaryRejectedError,
    PrimaryTimeoutError,
    PrimaryUnavailableError,
)
from ..migrations import primary_migrations
from ..model import ApplyOutcome, Op, StoredRow
from .base import Change, TierHealth
from .deadline import Watchdog
from .local import key_range

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
except ImportError:  # pragma: no cover - exercised only without the [postgres] extra
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("hybridstore.primary")
SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
T = TypeVar("T")


def is_pooled(params: dict[str, Any]) -> bool:
    """Does this connection go through a transaction-mode pooler? (Supabase's pooler: port 6543 or a
    ``pooler.`` host; anything else can say so with ``primary_pooled=True``.)"""
    return str(params.get("port", "")) == "6543" or "pooler." in str(params.get("host", ""))


def check_url(url: str) -> dict[str, Any]:
    """Parse a ``postgresql://`` URL or libpq conninfo string, or raise `ConfigError`."""
    if psycopg is None:
        raise ConfigError("a primary URL needs the PostgreSQL driver: pip install 'hybridstore[postgres]'")
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("primary URL is empty")
    if "://" in url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"primary URL must start with postgresql:// (got {url.split('://')[0]}://)")
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"malformed primary URL: {exc}") from None
    port = params.get("port")
    if port is not None and not all(p.isdigit() and 0 < int(p) < 65536 for p in str(port).split(",")):
        raise ConfigError(f"malformed primary URL: port {port!r} is not a TCP port number")
    return params


# The write-through fast path: ledger insert and conditional upsert in one statement (see hs_apply).
_APPLY_ONE = """
WITH ins AS (
    INSERT INTO {schema}.applied_ops (op_id, collection, key, origin)
    VALUES (%(op)s, %(c)s, %(k)s, %(o)s)
    ON CONFLICT DO NOTHING RETURNING op_id
), up AS (
    INSERT INTO {schema}.records AS r (collection, key, value, version, base_version, hlc, origin)
    SELECT %(c)s, %(k)s, %(v)s::jsonb, 1, %(b)s, %(h)s, %(o)s FROM ins
    ON CONFLICT ON CONSTRAINT records_pkey DO UPDATE
    SET value = EXCLUDED.value, version = r.version + 1, base_version = EXCLUDED.base_version,
        hlc = EXCLUDED.hlc, origin = EXCLUDED.origin, updated_at = now(), stamp = pg_current_xact_id()
    WHERE r.version = EXCLUDED.base_version OR EXCLUDED.hlc > r.hlc
    RETURNING r.version, extract(epoch FROM r.updated_at)::float8 AS updated_at
)
SELECT (SELECT count(*) FROM ins), up.* FROM (SELECT 1) AS one LEFT JOIN up ON true
"""


def _current_row(collection: str, key: str, r: Sequence[Any]) -> StoredRow:
    """A row read from the primary (columns of ``_current_sql``); it agrees with the primary as of now."""
    return StoredRow(collection, key, r[0], r[1], r[2], r[3], r[4], time.time())


class PrimaryTier:
    name = "primary"

    def __init__(
        self,
        url: str,
        *,
        schema: str = "hybridstore",
        timeout: float = 2.0,
        pool_size: int = 4,
        migrate: bool = True,
        pooled: bool | None = None,
    ) -> None:
        params = check_url(url)
        # Behind a transaction-mode pooler (PgBouncer, Supabase's pooler on port 6543) server-side prepared
        # statements and startup options do not work; the client-side watchdog still bounds every call.
        self.pooled = is_pooled(params) if pooled is None else pooled
        if not SCHEMA_RE.fullmatch(schema):
            raise ConfigError(f"invalid schema name {schema!r}: lower-case letters, digits and '_'")
        self.url = url
        self.schema = schema
        self.timeout = timeout
        self._pool_size = pool_size
        params.setdefault("application_name", "hybridstore")
        params.update(
            connect_timeout=max(2, math.ceil(timeout)),
            keepalives=1,
            keepalives_idle=max(1, int(timeout)),
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=int(timeout * 1000),
        )
        if not self.pooled:
            # Server-side limits too, so a lock wait or a slow plan is cut by the server as well as by our watchdog.
            limit_ms = int(timeout * 1000)
            params["options"] = (
                f"{params.get('options', '')} -c statement_timeout={limit_ms} -c lock_timeout={limit_ms}"
            ).strip()
        self._conninfo = make_conninfo("", **params)
        self._q = sql.Identifier(schema).as_string(None)
        self._apply_sql = (
            # %b: binary arrays; text-format array dumping costs ~45 ms of client CPU per 1000 ops
            f"SELECT op_id, outcome, version, updated_at FROM {self._q}.hs_apply("
            f"%b::uuid[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[])"
        )
        self._apply_one_sql = _APPLY_ONE.replace("{schema}", self._q)
        self._current_sql = (
            f"SELECT value::text, version, hlc, origin, extract(epoch FROM updated_at)::float8 "
            f"FROM {self._q}.records WHERE collection = %s AND key = %s AND version > 0"
        )
        self._watchdog = Watchdog()
        self._lock = threading.Lock()
        self._migrate_lock = threading.Lock()
        self._ready = not migrate  # migrate=False: the schema is managed elsewhere (e.g. `hybridstore migrate`)
        self._closed = False
        self.last_error: str | None = None
        self.last_latency_ms: float | None = None
        self._pool = self._new_pool()

    def _new_pool(self) -> ConnectionPool:
        pool = ConnectionPool(
            self._conninfo,
            kwargs={"autocommit": True, "prepare_threshold": None if self.pooled else 5},
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
        are dropped at once). The old pool closes in the background."""
        with self._lock:
            old, self._pool = self._pool, self._new_pool()
        threading.Thread(target=old.close, kwargs={"timeout": 1.0}, daemon=True).start()

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
            raise PrimaryRejectedError(f"primary rejected the operation: {self.last_error}") from exc

    def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        if not self._ready:
            self.migrate()
        start = time.perf_counter()
        with self._conn() as conn:
            result = fn(conn)
        self.last_latency_ms = (time.perf_counter() - start) * 1000
        return result

    def migrate(self) -> list[int]:
        """Apply pending schema migrations (idempotent, safe with many nodes at once); returns the versions
        applied now."""
        applied: list[int] = []
        with self._migrate_lock, self._conn(budget=max(60.0, self.timeout)) as conn, conn.transaction():
            if self._ready:
                return applied
            conn.execute("SET LOCAL statement_timeout = 0")  # a migration may take longer than a write
            conn.execute("SET LOCAL lock_timeout = 0")
            # Lock first: concurrent CREATE SCHEMA IF NOT EXISTS from several nodes would race.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"hybridstore:{self.schema}",))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._q}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._q}.hs_migrations (version int PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute(f"SELECT version FROM {self._q}.hs_migrations")}
            for mig in primary_migrations():
                if mig.version in done:
                    continue
                conn.execute(mig.sql.replace("{schema}", self._q).encode())
                conn.execute(
                    f"INSERT INTO {self._q}.hs_migrations (version, name) VALUES (%s, %s)",
                    (mig.version, mig.name),
                )
                applied.append(mig.version)
        if applied:
            log.info("primary schema %s migrated to version %s", self.schema, applied[-1])
        self._ready = True
        return applied

    # -- Tier protocol ----------------------------------------------------------------------------------------

    def put(self, op: Op) -> StoredRow:
        outcome = self.put_many([op])[0]
        assert outcome.current is not None
        return outcome.current

    def put_one(self, op: Op) -> ApplyOutcome:
        """Apply one op: the write-through fast path, one single-statement round trip (same rules as
        ``hs_apply``); a second query only when the op did not apply."""
        params = {
            "op": op.op_id,
            "c": op.collection,
            "k": op.key,
            "v": op.value_json,
            "b": op.base_version,
            "h": op.hlc,
            "o": op.origin,
        }

        def apply(conn: psycopg.Connection[Any]) -> ApplyOutcome:
            result = conn.execute(self._apply_one_sql, params).fetchone()
            assert result is not None
            fresh, version, updated_at = result
            if version is not None:
                row = StoredRow(op.collection, op.key, op.value_json, version, op.hlc, op.origin, updated_at)
                return ApplyOutcome(op.op_id, "applied", row._replace(synced_at=time.time()))
            cur = conn.execute(self._current_sql, (op.collection, op.key)).fetchone()
            current = None if cur is None else _current_row(op.collection, op.key, cur)
            if not fresh:
                return ApplyOutcome(op.op_id, "duplicate", current)
            conn.execute(f"UPDATE {self._q}.applied_ops SET outcome = 'superseded' WHERE op_id = %s", (op.op_id,))
            return ApplyOutcome(op.op_id, "superseded", current)

        return self._run(apply)

    def put_many(self, ops: Sequence[Op]) -> list[ApplyOutcome]:
        """Apply ops in one transaction; see ``hs_apply`` for the rules. Idempotent by op id."""
        if len(ops) == 1:
            return [self.put_one(ops[0])]
        params = (
            [o.op_id for o in ops],
            [o.collection for o in ops],
            [o.key for o in ops],
            [o.value_json for o in ops],
            [o.hlc for o in ops],
            [o.origin for o in ops],
            [o.base_version for o in ops],
        )
        rows = self._run(lambda conn: conn.execute(self._apply_sql, params).fetchall())
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
            current = self._current_rows(
                lost, [o.op_id for o, r in zip(ops, rows, strict=True) if r[1] == "superseded"]
            )
            out = [
                o if o.outcome == "applied" else o._replace(current=current.get((op.collection, op.key)))
                for op, o in zip(ops, out, strict=True)
            ]
        return out

    def _current_rows(self, ops: Sequence[Op], superseded: Sequence[str]) -> dict[tuple[str, str], StoredRow]:
        """The primary's rows for the keys of ops that did not apply (and mark the superseded ones in the ledger)."""
        query = (
            f"WITH mark AS (UPDATE {self._q}.applied_ops SET outcome = 'superseded' WHERE op_id = ANY(%b::uuid[])) "
            f"SELECT r.collection, r.key, r.value::text, r.version, r.hlc, r.origin, "
            f"extract(epoch FROM r.updated_at)::float8 FROM {self._q}.records r "
            f"JOIN unnest(%b::text[], %b::text[]) AS k(collection, key) "
            f"ON r.collection = k.collection AND r.key = k.key WHERE r.version > 0"
        )
        params = (list(superseded), [o.collection for o in ops], [o.key for o in ops])
        rows = self._run(lambda conn: conn.execute(query, params).fetchall())
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

    def changes(self, after: int = 0, limit: int = 1000) -> list[Change]:
        """The change feed: rows whose change stamp (``xid8``) is greater than ``after`` and below the oldest
        transaction still running, so a transaction that commits late is never skipped. Pages never split the
        rows of one transaction."""

        def fetch(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                f"SELECT stamp::text::bigint, collection, key, value::text, version, hlc, origin, "
                f"extract(epoch FROM updated_at)::float8 FROM {self._q}.records "
                f"WHERE stamp > %s::text::xid8 AND stamp < pg_snapshot_xmin(pg_current_snapshot()) "
                f"AND version > 0 ORDER BY stamp LIMIT %s",
                (str(after), limit),
            ).fetchall()

        rows = self._run(fetch)
        if len(rows) == limit and rows[0][0] != rows[-1][0]:
            last = rows[-1][0]
            rows = [r for r in rows if r[0] != last]
        return [Change(r[0], StoredRow(r[1], r[2], r[3], r[4], r[5], r[6], r[7])) for r in rows]

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
                psycopg.connect(self._conninfo, autocommit=True) as conn,
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
        self._closed = True
        with suppress(Exception):
            self._pool.close(timeout=1.0)
        self._watchdog.close()
