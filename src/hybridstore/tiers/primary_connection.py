"""`PrimaryConnection`: how the primary tier reaches PostgreSQL — and when it may.

Everything about the connection, none about the data (`PrimaryTier` adds that):

- **bounds**: every call is cut off after ``timeout`` — pool wait, libpq's connect timeout, TCP keepalives and
  ``tcp_user_timeout``, a client-side watchdog on the socket (`deadline.Watchdog`), and server-side
  ``statement_timeout`` / ``lock_timeout``: startup options on a direct connection, ``SET LOCAL`` in each call's
  transaction behind a transaction-mode pooler (where startup options are refused or lost);
- **pooling**: whether a transaction-mode pooler is in the way — from the options, the URL, or the server's
  behaviour (`pooling`) — and what changes then (no server-side prepared statements, no LISTEN on that
  address: a ``session_url`` may serve LISTEN instead); a prepared-statement error switches modes and the call is
  retried, so none reaches a caller;
- **readiness**: before the first call the schema must be current (checked by a read, with no DDL privilege; the
  migrations run only with ``migrate=True``) and the role must hold every privilege a node needs
  (`privileges`); otherwise `PrimaryMisconfiguredError`, naming what is missing;
- **errors**: driver errors become `PrimaryUnavailableError` / `PrimaryTimeoutError` (retry later),
  `PrimaryMisconfiguredError` (a privilege is missing: fix the grants) or `PrimaryRejectedError` (this operation).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from ..errors import (
    ConfigError,
    PrimaryMisconfiguredError,
    PrimaryRejectedError,
    PrimaryTimeoutError,
    PrimaryUnavailableError,
)
from ..migrations import migrate_postgres, migrations_for
from .connection import ConnectionSettings, check_url, pooling_from_url, split_pooled_param
from .deadline import Watchdog
from .pooling import detect_transaction_pooler, is_prepared_statement_error, refuses_startup_options
from .privileges import StatementCursor, is_privilege_error, missing_privileges, statement_of

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

    _IDLE = psycopg.pq.TransactionStatus.IDLE
except ImportError:  # pragma: no cover - exercised only without the [postgres] extra
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("hybridstore.primary")
SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
KEEP_CONNECTION_FOR = 60.0  # seconds a connection stays out of the pool between calls (`_checkout`)
T = TypeVar("T")


class _PoolerFound(PrimaryUnavailableError):
    """A call failed because a transaction-mode pooler was found under it; the tier switched modes: retry."""


class PrimaryConnection:
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
        # A "not pooled" (configured, or read from the URL) is still checked against the server's behaviour once:
        # behind a transaction pooler, a prepared statement can be run by another client's connection, and the
        # error that follows is anything (a type error of someone else's statement), not always one we can tell.
        hint = pooled if pooled is not None else forced if forced is not None else pooling_from_url(params)
        self.pooled = bool(hint)
        self._pooling_known = hint is not None
        self._behaviour_checked = False
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
        self.startup_options = True  # False once the server refused them (a pooler): limits go per transaction
        self._conninfo = self._settings.conninfo(limits=not self.pooled)
        limit_ms = int(timeout * 1000)
        # Behind a pooler every call is one transaction whose limits are set by its first statement: a call
        # abandoned by our watchdog must not leave a server connection waiting on a lock for ever.
        self._bounded_begin = (
            f"BEGIN; SET LOCAL statement_timeout = {limit_ms}; SET LOCAL lock_timeout = {limit_ms}".encode()
        )
        self._q = sql.Identifier(schema).as_string(None)
        self.channel = f"hs_{schema}"  # change notifications (migration 0002)
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
        # One pool connection kept between calls by whichever call finds it free (`_checkout`): the common single
        # caller (a write-through loop) skips the pool's checkout and return, about a tenth of its own CPU per call.
        self._kept: tuple[ConnectionPool, psycopg.Connection[Any]] | None = None
        self._kept_until = 0.0  # monotonic: then it goes back, so the pool's lifetime and idle rules apply to it
        self._kept_lock = threading.Lock()
        # A cursor of the kept connection, reused by every statement of `statement_cursor`'s callers: psycopg's
        # `Connection.execute` builds a cursor per statement, a good part of its Python-level CPU per call.
        self._kept_cursor: tuple[psycopg.Connection[Any], psycopg.Cursor[Any]] | None = None

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
            with self._checkout() as conn, self._watchdog.guard(conn.pgconn.socket, self._remaining(deadline, budget)):
                yield conn
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
            raise self._failure(exc, deadline, budget) from exc

    def _remaining(self, deadline: float, budget: float) -> float:
        """Seconds left of a call's budget once it has its connection (`PrimaryTimeoutError` if none)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PrimaryTimeoutError(f"primary unavailable: no connection within {budget:g}s")
        return remaining

    def _failure(
        self, exc: BaseException, deadline: float, budget: float
    ) -> PrimaryUnavailableError | PrimaryRejectedError:
        """The error to raise for a driver or pool error ``exc`` of a call with this deadline and budget."""
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, PoolClosed)):
            self.last_error = str(exc).strip() or type(exc).__name__
            if isinstance(exc, PoolTimeout):
                return PrimaryTimeoutError(
                    f"primary unavailable: no connection within {self.timeout:g}s ({self.last_error})"
                )
            if time.monotonic() >= deadline - 0.05 * budget:
                return PrimaryTimeoutError(f"primary unavailable: no answer within {budget:g}s ({self.last_error})")
            return PrimaryUnavailableError(f"primary unavailable: {self.last_error}")
        self.last_error = str(exc).strip()
        if is_prepared_statement_error(exc):  # a connection from before the switch may still meet one
            self._switch_to_pooled(f"prepared statements fail ({self.last_error})")
            return _PoolerFound(f"primary unavailable: {self.last_error}")
        if is_privilege_error(exc):
            return self._refused(exc)
        return PrimaryRejectedError(f"primary rejected the operation: {self.last_error}")

    @contextmanager
    def _checkout(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one call: the kept one when no other call uses it, else one from the pool."""
        if not self._kept_lock.acquire(blocking=False):
            with self._pool.connection(timeout=self.timeout) as conn:
                yield conn
            return
        try:
            kept = self._take_kept()
            try:
                yield kept
            finally:
                self._after_kept(kept)
        finally:
            self._kept_lock.release()

    def _take_kept(self) -> psycopg.Connection[Any]:
        """The kept connection, taken from the pool first if there is none (caller holds ``_kept_lock``)."""
        pool, kept = self._kept or (None, None)
        if kept is None or pool is not self._pool or self._closed:
            self._give_back()  # a connection of a replaced pool goes back to it (and is closed there)
            if self._closed:
                raise PrimaryUnavailableError("primary tier is closed")
            pool = self._pool
            kept = pool.getconn(timeout=self.timeout)
            self._kept = (pool, kept)
            self._kept_until = time.monotonic() + KEEP_CONNECTION_FOR
        return kept

    def _after_kept(self, kept: psycopg.Connection[Any]) -> None:
        """A call on the kept connection ended: it stays kept only as the pool would take it back without work
        (open, idle, outside a transaction), while the tier is open, for `KEEP_CONNECTION_FOR` seconds at most
        (caller holds ``_kept_lock``)."""
        if (
            self._closed
            or kept.closed
            or kept.pgconn.transaction_status != _IDLE
            or time.monotonic() > self._kept_until
        ):
            self._give_back()  # the pool rolls back, checks or replaces it

    def statement_cursor(self, conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
        """A cursor to run statements on ``conn`` (a connection a call was given): the kept connection's reused
        cursor when ``conn`` is that connection, else a new one. Used by the call it was given to only."""
        kc = self._kept_cursor
        if kc is not None and kc[0] is conn:
            return kc[1]
        cursor = conn.cursor()
        kept = self._kept
        if kept is not None and kept[1] is conn:  # conn is the kept connection: its caller holds ``_kept_lock``
            self._kept_cursor = (conn, cursor)
        return cursor

    def _give_back(self) -> None:
        """Return the kept connection to its pool (caller holds ``_kept_lock``)."""
        self._kept_cursor = None
        kept, self._kept = self._kept, None
        if kept is not None:
            with suppress(Exception):
                kept[0].putconn(kept[1])

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
        """A new autocommit connection outside the pool. A server that refuses startup options (a pooler:
        PgBouncer by default, maybe a session pooler too) is connected to without them from then on."""
        try:
            return psycopg.connect(conninfo or self._conninfo, autocommit=True, cursor_factory=StatementCursor)
        except psycopg.OperationalError as exc:
            if conninfo is not None or not self.startup_options or not refuses_startup_options(exc):
                raise
            self._drop_startup_options(str(exc).strip())
            return psycopg.connect(self._conninfo, autocommit=True, cursor_factory=StatementCursor)

    def _drop_startup_options(self, error: str) -> None:
        with self._lock:
            if not self.startup_options:
                return
            self.startup_options = False
            self._conninfo = self._settings.conninfo(limits=False, options=False)
        log.warning("the primary refuses startup options: server-side limits are set per transaction (%s)", error)
        self.reset_pool()

    @property
    def per_transaction_limits(self) -> bool:
        """Are ``statement_timeout`` / ``lock_timeout`` set by ``SET LOCAL`` in each call's transaction (behind a
        transaction pooler, or a server that refuses startup options) rather than once per connection?"""
        return self.pooled or not self.startup_options

    def _switch_to_pooled(self, reason: str) -> None:
        """From now on: no server-side prepared statements, no startup options, timeouts per transaction, no
        LISTEN on this address. Connections made before are dropped (the pool is replaced)."""
        with self._lock:
            if self.pooled:
                return
            self.pooled, self._pooling_known, self.pooled_reason = True, True, reason
            self._conninfo = self._settings.conninfo(limits=False, options=self.startup_options)
        log.warning("the primary is reached through a transaction-mode pooler: %s", reason)
        self.reset_pool()

    def _settle_pooling(self, budget: float) -> None:
        """Tell, once, whether the URL leads to a transaction-mode pooler (see `pooling`)."""
        if self.pooled or self._behaviour_checked:
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
        self._behaviour_checked = True
        if found:
            if self.pooled_reason == "configured":
                log.warning("primary_pooled=False is configured, but the server behaves like a transaction pooler")
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
        """``fn(conn)`` on a connection of `_conn` — the same bounds, errors and connection rules, written out
        without its context managers (every call to the primary passes here: a write-through's CPU)."""
        if self._closed:
            raise PrimaryUnavailableError("primary tier is closed")
        budget = self.timeout
        deadline = time.monotonic() + budget
        try:
            if not self._kept_lock.acquire(blocking=False):
                with self._pool.connection(timeout=budget) as conn:
                    return self._guarded(conn, fn, deadline, budget)
            try:
                kept = self._take_kept()
                try:
                    return self._guarded(kept, fn, deadline, budget)
                finally:
                    self._after_kept(kept)
            finally:
                self._kept_lock.release()
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
            raise self._failure(exc, deadline, budget) from exc

    def _guarded(
        self, conn: psycopg.Connection[Any], fn: Callable[[psycopg.Connection[Any]], T], deadline: float, budget: float
    ) -> T:
        """``fn(conn)`` under the watchdog, in a transaction that sets the limits when they are per transaction."""
        watchdog = self._watchdog
        token = watchdog.arm(conn.pgconn.socket, self._remaining(deadline, budget))
        try:
            if not self.pooled and self.startup_options:  # not `per_transaction_limits` (read inline)
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
        finally:
            watchdog.disarm(token)

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
        try:
            applied = self._migrate_once(budget)
        except PrimaryRejectedError as exc:
            # The server refreshes a backend's catalog cache when a transaction starts, not when an advisory lock is
            # granted: a node that looked the schema up (and missed) just before another created it may still miss
            # it under the lock and collide. A new transaction sees it.
            if getattr(exc.__cause__, "sqlstate", None) not in ("23505", "42P06", "42P07"):
                raise
            applied = self._migrate_once(budget)
        if applied:
            log.info("primary schema %s migrated to version %s", self.schema, applied[-1])
        return applied

    def _migrate_once(self, budget: float) -> list[int]:
        with self._conn(budget=budget) as conn, conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = {int(budget * 1000)}")  # a migration may outlast a write
            conn.execute(f"SET LOCAL lock_timeout = {int(budget * 1000)}")
            # Lock first: concurrent CREATE SCHEMA IF NOT EXISTS from several nodes would race.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"hybridstore:{self.schema}",))
            return migrate_postgres(conn, self._q)

    @property
    def can_listen(self) -> bool:
        """May this node LISTEN for change notifications? Not through a transaction pooler — unless a session
        address (``session_url``) is configured for it — and not before the connection mode is settled."""
        return self._pooling_known and (self.session_url is not None or not self.pooled)

    @property
    def schema_ready(self) -> bool:
        return self._ready

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

    def close(self) -> None:
        with self._lock:
            self._closed = True
            closers, self._closers = self._closers, []
        if self._kept_lock.acquire(blocking=False):  # else a call still uses it, and gives it back when it ends
            try:
                self._give_back()
            finally:
                self._kept_lock.release()
        with suppress(Exception):
            self._pool.close(timeout=1.0)
        for closer in closers:  # pools replaced by reset_pool: each close is bounded by its own 1 s timeout
            closer.join(timeout=2.0)
        self._watchdog.close()
