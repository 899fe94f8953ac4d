"""Primary outage detection with hysteresis. Pure: no I/O, the caller passes the time of each observation.

An outage is declared when the primary has failed ``confirm_failures`` observations in a row *and* has been
failing for at least ``confirm_seconds`` (from the start of the first failed probe). So a single blip (one
refused connection, one dropped packet) or one slow answer never declares an outage, while a primary that
refuses connections is declared down after a few fast re-probes and a black-holed one after its probes time
out. It is declared back after ``recover_successes`` answers in a row: a flapping primary does not toggle the
alert on every probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Transition = Literal["outage", "recovered"]


@dataclass
class OutageDetector:
    confirm_failures: int = 2
    confirm_seconds: float = 0.75
    recover_successes: int = 2
    in_outage: bool = False
    failures: int = 0
    successes: int = 0
    failing_since: float | None = None
    outage_since: float | None = None

    def observe(self, ok: bool, now: float, *, started: float | None = None) -> Transition | None:
        """Record one probe result (``started``: when that probe began; defaults to ``now``). Returns the
        transition it caused, if any."""
        if ok:
            self.failures = 0
            self.failing_since = None
            if not self.in_outage:
                return None
            self.successes += 1
            if self.successes >= self.recover_successes:
                self.in_outage = False
                self.outage_since = None
                self.successes = 0
                return "recovered"
            return None
        self.successes = 0
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now if started is None else min(started, now)
        if (
            not self.in_outage
            and self.failures >= self.confirm_failures
            and now - self.failing_since >= self.confirm_seconds
        ):
            self.in_outage = True
            self.outage_since = self.failing_since
            return "outage"
        return None

    @property
    def suspect(self) -> bool:
        """Failing, but not (yet) declared an outage."""
        return not self.in_outage and self.failures > 0
