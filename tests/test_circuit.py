"""Circuit breaker and backoff: pure logic, driven by an injected clock."""

from __future__ import annotations

import random

from hybridstore.backoff import full_jitter
from hybridstore.circuit import CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_threshold_and_probes_once() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=2, reset_timeout=1.0, clock=clock)
    cb.record_failure()
    assert cb.allow()
    cb.record_failure()
    assert cb.state == "open" and not cb.allow()
    assert not cb.probe_due()
    clock.t = 1.0
    assert cb.probe_due()
    assert cb.state == "half_open"
    assert not cb.probe_due(), "only one probe at a time"
    assert not cb.allow(), "foreground calls never wait on a probing circuit"
    cb.record_success()
    assert cb.state == "closed" and cb.allow()


def test_timeout_opens_at_once_and_failed_probe_doubles_wait() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=5, reset_timeout=1.0, max_reset_timeout=3.0, clock=clock)
    cb.record_failure(timeout=True)
    assert cb.state == "open"
    clock.t = 1.0
    assert cb.probe_due()
    cb.record_failure()
    assert cb.state == "open"
    assert cb.seconds_until_probe() == 2.0
    clock.t = 3.0
    assert cb.probe_due()
    cb.record_failure()
    assert cb.seconds_until_probe() == 3.0, "capped"
    clock.t = 6.0
    assert cb.probe_due()
    cb.record_success()
    assert cb.snapshot()["reset_timeout_s"] == 1.0
    assert cb.snapshot()["times_opened"] == 3


def test_success_resets_consecutive_failures() -> None:
    cb = CircuitBreaker(failure_threshold=2, clock=FakeClock())
    cb.record_failure()
    cb.record_success()
    cb.record_failure()
    assert cb.state == "closed"


def test_full_jitter_bounds() -> None:
    rng = random.Random(7)
    for attempt in range(20):
        ceiling = min(5.0, 0.1 * 2**attempt)
        delays = [full_jitter(attempt, base=0.1, cap=5.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8, "spreads over the whole range"


def test_listeners_see_every_transition_outside_the_lock() -> None:
    now = [0.0]
    cb = CircuitBreaker(failure_threshold=2, reset_timeout=1.0, clock=lambda: now[0])
    seen: list[tuple[str, str]] = []

    def listener(old: str, new: str) -> None:
        seen.append((old, new))
        cb.snapshot()  # may call back into the breaker: the lock is not held
        raise RuntimeError("a faulty listener must not break the breaker")

    cb.subscribe(listener)
    cb.record_failure()
    assert seen == []
    cb.record_failure()
    now[0] = 1.5
    assert cb.probe_due()
    cb.record_success()
    cb.trip()
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("closed", "open")]
