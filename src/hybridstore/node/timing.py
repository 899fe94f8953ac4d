"""Time and randomness as dependencies: the composition root passes one `TimeSource` to every service, so tests
can drive schedules, backoffs and timeouts with a fake clock instead of sleeping."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TimeSource:
    monotonic: Callable[[], float] = time.monotonic  # for durations and schedules
    wall: Callable[[], float] = time.time  # epoch seconds, for what people read
    rng: random.Random = field(default_factory=random.Random)  # backoff jitter


class FakeClock:
    """A clock that moves only when told: ``monotonic`` and ``wall`` advance together."""

    def __init__(self, start: float = 1_000_000.0, wall_start: float = 1_800_000_000.0) -> None:
        self._mono = start
        self._offset = wall_start - start

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._mono + self._offset

    def advance(self, seconds: float) -> None:
        self._mono += seconds

    def source(self, seed: int = 0) -> TimeSource:
        return TimeSource(self.monotonic, self.wall, random.Random(seed))
