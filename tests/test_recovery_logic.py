"""The recovery service's pure parts: outage hysteresis, raise-once / resolve-once alerts, overall state."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridstore.recovery import AlertBook, OutageDetector
from hybridstore.recovery.health import overall_state
from hybridstore.recovery.history import RecoveryHistory


def feed(d: OutageDetector, samples: list[tuple[float, bool]]) -> list[tuple[float, str]]:
    out = []
    for t, ok in samples:
        tr = d.observe(ok, t)
        if tr:
            out.append((t, tr))
    return out


def test_refused_primary_declared_after_two_failures_spanning_the_confirm_time() -> None:
    d = OutageDetector(confirm_failures=2, confirm_seconds=0.5)
    # probes every 0.25 s once failing
    assert feed(d, [(0.0, True), (0.5, False), (0.75, False), (1.0, True), (1.25, False), (1.5, False)]) == []
    assert d.suspect and not d.in_outage
    assert feed(d, [(1.75, False)]) == [(1.75, "outage")]
    assert d.outage_since == 1.25 and d.in_outage


def test_a_single_blip_or_slow_probe_never_declares() -> None:
    d = OutageDetector(confirm_failures=2, confirm_seconds=0.5)
    samples = []
    t = 0.0
    for i in range(200):  # a failure every third probe, never two in a row
        samples.append((t, i % 3 != 0))
        t += 0.25
    assert feed(d, samples) == []
    # one probe that took 3 s (started long ago) is one failure: not enough alone
    d2 = OutageDetector(confirm_failures=2, confirm_seconds=0.5)
    assert d2.observe(False, 10.0, started=7.0) is None
    assert d2.observe(True, 10.25) is None and not d2.suspect


def test_black_holed_probe_counts_from_its_start() -> None:
    d = OutageDetector(confirm_failures=2, confirm_seconds=0.5)
    assert d.observe(False, 1.5, started=0.5) is None  # timed out after 1 s
    assert d.observe(False, 1.75, started=0.5) == "outage"  # still waiting: failing for 1.25 s


def test_recovery_needs_consecutive_successes_no_flapping() -> None:
    d = OutageDetector(confirm_failures=2, confirm_seconds=0.5, recover_successes=2)
    assert feed(d, [(0, False), (0.25, False), (0.5, False)]) == [(0.5, "outage")]
    flapping = [(0.75, True), (1.0, False), (1.25, True), (1.5, False), (1.75, True), (2.0, False)]
    assert feed(d, flapping) == [], "alternating answers keep the outage, no toggling"
    assert feed(d, [(2.25, True), (2.5, True)]) == [(2.5, "recovered")]
    assert not d.in_outage and d.failures == 0


def test_alert_raised_once_resolved_once_and_history_survives(tmp_path: Path) -> None:
    now = [1000.0]
    seen: list[tuple[str, str]] = []

    class Sink:
        def deliver(self, event: str, alert: object) -> None:
            seen.append((event, alert.kind))  # type: ignore[attr-defined]

    history = RecoveryHistory(tmp_path / "recovery.db")
    book = AlertBook(store=history, sinks=[Sink()], node_id="n1", clock=lambda: now[0])
    for _ in range(5):
        book.update("primary_outage", True, message="down", severity="critical")
        now[0] += 1
    book.update("low_storage", True, message="low")
    for _ in range(3):
        book.update("primary_outage", False, resolution="back")
    assert seen == [("raised", "primary_outage"), ("raised", "low_storage"), ("resolved", "primary_outage")]
    outage = [a for a in book.list() if a.kind == "primary_outage"]
    assert len(outage) == 1 and outage[0].raised_at == 1000.0 and outage[0].resolved_at == 1005.0
    assert [a.kind for a in book.list(active=True)] == ["low_storage"]
    assert [a.kind for a in book.list(active=False)] == ["primary_outage"]
    history.close()

    # a new process: the still-active alert is not raised again, only resolved when its condition ends
    history = RecoveryHistory(tmp_path / "recovery.db")
    seen.clear()
    again = AlertBook(store=history, sinks=[Sink()], clock=lambda: now[0])
    assert [a.kind for a in again.list(active=True)] == ["low_storage"]
    assert again.update("low_storage", True, message="low") is None
    resolved = again.update("low_storage", False)
    assert resolved is not None and resolved.resolved_at == now[0]
    assert seen == [("resolved", "low_storage")]
    assert len(again.list()) == 2
    history.close()


@pytest.mark.parametrize(
    ("states", "outage", "recovering", "expected"),
    [
        ({"primary": "healthy", "local": "healthy", "journal": "healthy"}, False, False, "healthy"),
        ({"primary": "degraded", "local": "healthy", "journal": "healthy"}, False, False, "degraded"),
        ({"primary": "down", "local": "healthy", "journal": "healthy"}, True, False, "outage"),
        ({"primary": "healthy", "local": "healthy", "journal": "healthy"}, False, True, "recovering"),
        ({"primary": "disabled", "local": "down", "journal": "down"}, False, False, "outage"),
        ({"primary": "disabled", "local": "down", "journal": "healthy"}, False, False, "degraded"),
        ({"primary": "healthy", "dead_letters": "unknown"}, False, False, "healthy"),
    ],
)
def test_overall_state(states: dict[str, str], outage: bool, recovering: bool, expected: str) -> None:
    components = {k: {"state": v} for k, v in states.items()}
    assert overall_state(components, outage=outage, recovering=recovering) == expected


def test_sync_counts_from_either_shape() -> None:
    from hybridstore.recovery.service import sync_counts_from

    engine = {"dead_letters": 2, "conflicts": {"manual": {"open": 4, "resolved": 3}, "merge": {"open": 1}}}
    assert sync_counts_from(engine) == {"dead_letters": 2, "unresolved_conflicts": 5}
    assert sync_counts_from({"dead_letters": 0, "unresolved_conflicts": 7}) == {
        "dead_letters": 0,
        "unresolved_conflicts": 7,
    }
    assert sync_counts_from({"conflicts": None}) == {"dead_letters": None, "unresolved_conflicts": None}
