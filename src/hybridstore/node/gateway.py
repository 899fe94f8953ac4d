"""`PrimaryGateway`: the one way to the primary.

Every call to the primary goes through `call()`: it is refused at once while the circuit is not closed (no
foreground call waits on a primary known to be down), its outcome is classified (`classify`) and recorded in the
circuit in one place. The gateway also runs the node's single liveness prober (`tick()`, driven by its worker or
by a test with a fake clock): probe results feed the `OutageDetector` (hysteresis), and the gateway alone trips
and closes the circuit, resets the pool after an outage, and publishes what changed:

- ``circuit_open`` / ``circuit_closed``: routing (the replayer pushes on ``circuit_closed``; backups take an
  emergency backup on ``circuit_open``);
- ``primary_down`` / ``primary_up``: a confirmed outage and its end (alerts, recovery strategies);
- ``primary_misconfigured``: the primary answers but refuses this node (authentication, missing database or
  role, permission denied), with what was refused.

Reading the gateway's state (`snapshot()`, `allow()`) never changes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..circuit import CircuitBreaker, CircuitState
from ..config import redact
from ..errors import (
    PrimaryMisconfiguredError,
    PrimaryRejectedError,
    PrimaryTimeoutError,
    PrimaryUnavailableError,
)
from ..events import EventBus
from ..worker import Worker
from .detector import OutageDetector
from .prober import PrimaryProber, ProbeResult

if TYPE_CHECKING:
    from ..tiers.primary import PrimaryTier

log = logging.getLogger("hybridstore.gateway")
T = TypeVar("T")
Outcome = Literal["ok", "timeout", "unreachable", "refused", "misconfigured"]
SUSPECT_INTERVAL = 0.25  # seconds between probes while the primary is failing
MIGRATION_BUDGET = 60.0  # seconds the prober gives a schema migration (DDL may wait for locks)
# Seconds between probes while the primary refuses this node: a grant or a URL is fixed by a person, not in
# milliseconds, and each such probe also re-checks the schema and privileges (many nodes may be refused at once).
MISCONFIGURED_INTERVAL = 2.0

# SQLSTATE classes and messages that say "this node is not allowed in", not "the primary is down".
_MISCONFIGURED_STATES = ("28000", "28P01", "3D000", "42501", "3F000")
_MISCONFIGURED_TEXT = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    'role "',
    "does not exist",
    "permission denied",
    "no pg_hba.conf entry",
    # TLS (sslmode=verify-ca / verify-full): a CA that did not sign the server's certificate, a name that does
    # not match the host, a CA file that is missing
    "certificate verify failed",
    "signature failure",
    "unable to get local issuer certificate",
    "self-signed certificate",
    "self signed certificate",
    "server certificate for",
    "root certificate file",
)


def classify(exc: BaseException) -> Outcome:
    """What a failed primary call means for the caller (pure)."""
    if isinstance(exc, PrimaryMisconfiguredError):
        return "misconfigured"
    cause: BaseException | None = exc
    while cause is not None:
        state = getattr(cause, "sqlstate", None)
        if state in _MISCONFIGURED_STATES:
            return "misconfigured"
        cause = cause.__cause__
    if isinstance(exc, PrimaryTimeoutError):
        return "timeout"
    if isinstance(exc, PrimaryUnavailableError):
        text = str(exc).lower()
        if any(t in text for t in _MISCONFIGURED_TEXT) and "could not connect" not in text:
            return "misconfigured"
        return "unreachable"
    return "refused"


class PrimaryGateway:
    def __init__(
        self,
        primary: PrimaryTier | None,
        circuit: CircuitBreaker,
        events: EventBus,
        *,
        interval: float = 0.5,
        probe_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        detector: OutageDetector | None = None,
    ) -> None:
        self._primary = primary
        self.circuit = circuit
        self._events = events
        self.interval = interval
        self._clock = clock
        self._wall = wall
        self.detector = detector or OutageDetector()
        self._prober = PrimaryProber(primary, timeout=probe_timeout) if primary is not None else None
        self._lock = threading.Lock()  # one probe round at a time
        self._first_probe = True
        self.last_probe: ProbeResult | None = None
        self.last_probe_at: float | None = None  # epoch seconds (the injected wall clock)
        self.misconfigured: str | None = None  # what the primary refused, while it refuses
        self.last_error: str | None = None
        self.probes = 0
        self.worker = Worker("hybridstore-prober", self.tick, error_delay=SUSPECT_INTERVAL)
        circuit.subscribe(self._on_circuit)

    # -- what callers see ---------------------------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return self._primary is not None

    @property
    def tier(self) -> PrimaryTier:
        """The primary tier, for read-only facts (schema, URL) and for code that runs inside `call()`."""
        if self._primary is None:
            raise PrimaryUnavailableError("no primary is configured (embedded mode)")
        return self._primary

    def allow(self) -> bool:
        """May a call use the primary now? (A configured primary and a closed circuit.)"""
        return self._primary is not None and self.circuit.allow()

    def call(self, fn: Callable[[PrimaryTier], T]) -> T:
        """Run ``fn(primary)`` if the circuit allows it, and record the outcome. Raises `PrimaryUnavailableError`
        (circuit open, unreachable, timeout; `PrimaryMisconfiguredError` when the primary refuses this node) or
        `PrimaryRejectedError` (the primary refused the operation's data: the circuit is not affected)."""
        primary = self._primary
        if primary is None:
            raise PrimaryUnavailableError("no primary is configured (embedded mode)")
        if not self.circuit.allow():
            raise PrimaryUnavailableError(f"primary unavailable (circuit {self.circuit.state}): {self.last_error}")
        try:
            result = fn(primary)
        except (PrimaryUnavailableError, PrimaryRejectedError) as exc:
            raise self.record_failure(exc) from exc.__cause__
        self.circuit.record_success()
        return result

    @contextmanager
    def session(self) -> Iterator[PrimaryTier]:
        """For work that streams or holds a connection (a backup's snapshot of the primary): admitted like
        `call()` and its failure recorded the same way, when it ends."""
        primary = self._primary
        if primary is None:
            raise PrimaryUnavailableError("no primary is configured (embedded mode)")
        if not self.circuit.allow():
            raise PrimaryUnavailableError(f"primary unavailable (circuit {self.circuit.state}): {self.last_error}")
        try:
            yield primary
        except (PrimaryUnavailableError, PrimaryRejectedError) as exc:
            raise self.record_failure(exc) from exc.__cause__
        self.circuit.record_success()

    def record_failure(self, exc: BaseException) -> BaseException:
        """Record a failed call made outside `call()` (e.g. in a worker pool); returns the error to raise."""
        outcome = classify(exc)
        self.last_error = str(exc)
        if outcome == "refused":
            return exc
        if outcome == "misconfigured":
            self._misconfigured(str(exc))
            self.circuit.record_failure(timeout=True)  # no use asking again at once: open now
            if not isinstance(exc, PrimaryMisconfiguredError):
                return PrimaryMisconfiguredError(f"primary refuses this node: {exc}")
            return exc
        self.circuit.record_failure(timeout=outcome == "timeout")
        return exc

    def record_success(self) -> None:
        self.circuit.record_success()

    def snapshot(self) -> dict[str, Any]:
        """Plain data, no I/O: the primary's state as the gateway last saw it."""
        if self._primary is None:
            return {"state": "disabled", "detail": "no primary configured (embedded mode)", "configured": False}
        d = self.detector
        probe = self.last_probe
        live = None if probe is None else probe.ok  # the last probe's answer (liveness)
        if self.misconfigured is not None:
            state, detail = "misconfigured", self.misconfigured
        elif d.in_outage:
            state, detail = "down", (probe.error if probe and not probe.ok else "answering again; confirming")
        elif not self.circuit.allow():  # calls are kept away from the primary (routing)
            state, detail = "down", f"circuit {self.circuit.state}: {self.last_error or 'recent failures'}"
        elif probe is None:
            state, detail = "unknown", "not probed yet"
        elif probe.ok:
            state, detail = "healthy", ""
        else:
            state, detail = "degraded", probe.error or self.last_error or ""
        out: dict[str, Any] = {
            "state": state,
            "detail": detail,
            "configured": True,
            "url": redact(self._primary.url),
            "schema": self._primary.schema,
            "live": live,
            "outage": d.in_outage,
            "outage_since": d.outage_since,
            "consecutive_failures": d.failures,
            "last_probe_at": self.last_probe_at,
            "circuit": self.circuit.snapshot(),
            "connection": self._connection_facts(),
        }
        if probe is not None and probe.latency_ms is not None:
            out["latency_ms"] = round(probe.latency_ms, 3)
        return out

    def _connection_facts(self) -> dict[str, Any]:
        """How this node reaches the primary (pooler mode, where limits are set, how it hears of changes)."""
        tier = self._primary
        assert tier is not None
        if tier.can_listen:
            listen = "session URL" if tier.session_url else "primary URL"
        else:
            listen = "off: polling" if tier.schema_ready else "not settled yet"
        return {
            "pooled": tier.pooled,
            "pooled_because": tier.pooled_reason or None,
            "limits": "per transaction (SET LOCAL)" if tier.per_transaction_limits else "per connection",
            "listen": listen,
            "session_url": redact(tier.session_url) if tier.session_url else None,
        }

    # -- the prober ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._primary is not None:
            self.worker.start()

    def stop(self) -> bool:
        stopped = self.worker.stop()
        if self._prober is not None:
            self._prober.close()
        return stopped

    def tick(self, *, prepare_schema: bool = True) -> float:
        """One liveness probe and what follows from it (with ``prepare_schema``, a first successful probe also
        checks or migrates the schema, with a migration's budget); returns the delay before the next."""
        if self._primary is None or self._prober is None:
            return 3600.0
        with self._lock:
            self._probe_once(prepare_schema)
        if self.misconfigured is not None:
            return max(self.interval, MISCONFIGURED_INTERVAL)
        d = self.detector
        if d.suspect or d.in_outage or not self.circuit.allow():
            return min(self.interval, SUSPECT_INTERVAL)
        return self.interval

    def probe_now(self) -> bool:
        """Probe at once, in this thread (an explicit sync request, a CLI command); True when it answered."""
        self.tick(prepare_schema=False)  # an explicit `migrate` must still see what it applies
        return self.allow()

    def _probe_once(self, prepare_schema: bool) -> None:
        assert self._primary is not None and self._prober is not None
        d = self.detector
        first, self._first_probe = self._first_probe, False
        fresh = first or d.failures > 0 or d.in_outage or self.circuit.state != "closed"
        now = self._clock()
        result = self._prober.probe(fresh=fresh, now=now)
        self.last_probe = result
        self.last_probe_at = self._wall()
        self.probes += 1
        if result.ok:
            ready = self._prepare_schema() if prepare_schema and not self._primary.schema_ready else True
            if not ready and self.misconfigured is not None:
                # It answers, but would refuse this node's calls (a missing grant or migration): keep them away,
                # so writes are queued locally at once, until a probe finds the node's role can work again.
                self.circuit.trip() if self.circuit.state == "closed" else self.circuit.record_failure()
            elif self.misconfigured is not None:
                log.info("primary accepts this node again")
                self.misconfigured = None
            if ready and (self.circuit.state != "closed" or (fresh and d.failures)):
                # Fresh connections work while the circuit was open or the pooled ones failed: the pool is stale
                # (an outage or a blip reset its connections and it backs off its reconnects). Replace it, then
                # let calls through.
                self._primary.reset_pool()
                self.circuit.record_success()
        else:
            self.last_error = result.error
            if result.exc is not None and classify(result.exc) == "misconfigured":
                self._misconfigured(result.error)
            if first or self.circuit.state != "closed":
                # At start-up (a terminal opened offline: the first write must not wait out the timeout), or
                # while the circuit is open: keep calls away from the primary.
                self.circuit.trip() if self.circuit.state == "closed" else self.circuit.record_failure()
        transition = d.observe(result.ok, self._clock(), started=result.started)
        if transition == "outage":
            self.circuit.trip()  # no foreground call waits on the primary from now on
            log.warning("primary outage confirmed: %s", result.error)
            self._events.publish("primary_down", result.error, since=d.outage_since)
        elif transition == "recovered":
            self.circuit.record_success()
            log.info("primary is back")
            self._events.publish("primary_up", "answering again")

    def _prepare_schema(self) -> bool:
        """In the prober's thread, with a long budget: the first foreground call then finds the schema current
        and the node's privileges checked (a call never waits on the primary longer than its timeout; migrations
        may). True when the tier is ready."""
        assert self._primary is not None
        try:
            self._primary.ensure_schema(budget=MIGRATION_BUDGET)
        except (PrimaryUnavailableError, PrimaryRejectedError) as exc:
            if classify(exc) == "misconfigured":
                self._misconfigured(str(exc))
            else:
                log.warning("the primary's schema could not be checked or migrated yet: %s", exc)
            return False
        return True

    def _misconfigured(self, detail: str) -> None:
        if self.misconfigured is None:
            log.error("the primary refuses this node (fix the URL or the grants): %s", detail)
            self.misconfigured = detail
            self._events.publish("primary_misconfigured", detail)
        else:
            self.misconfigured = detail

    def _on_circuit(self, old: CircuitState, new: CircuitState) -> None:
        if old == "closed" and new == "open":
            self._events.publish("circuit_open", self.last_error or "")
            self.worker.wake()  # a call just failed: probe now
        elif new == "closed":
            self._events.publish("circuit_closed")
