"""The runner: runs scenarios one after the other in one sandbox and builds the report (plain data; see
`hybridstore.resilience.report` for its renderings). The CLI (``hybridstore test-resilience``) and the REST API
(``POST /api/v1/resilience/runs``) both call `run`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import redact
from ..errors import ConfigError, HybridStoreError
from .sandbox import Sandbox
from .scenario import RunContext, ScenarioResult
from .scenarios import BY_NAME, SCENARIOS

log = logging.getLogger("hybridstore.resilience")
DEFAULT_DURATION = 10.0
DEFAULT_SEED = 1
Progress = Callable[[dict[str, Any]], None]  # {"scenario", "done", "total", "step"}


@dataclass
class RunOptions:
    primary_url: str
    scenarios: Sequence[str] = field(default_factory=lambda: list(SCENARIOS))
    duration: float = DEFAULT_DURATION
    seed: int = DEFAULT_SEED
    rate: float = 100.0  # writes per second per writer (storage_load doubles it)
    base_dir: Path | None = None  # where the run's temporary directory goes (default: the system's)
    cancel: threading.Event = field(default_factory=threading.Event)  # set: the run stops as soon as it can

    def check(self) -> None:
        unknown = [n for n in self.scenarios if n not in BY_NAME]
        if unknown:
            raise ConfigError(f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
        if not self.scenarios:
            raise ConfigError("no scenario to run")
        if not self.duration > 0 or not self.rate > 0:
            raise ConfigError("duration and rate must be positive")
        if not self.primary_url:
            raise ConfigError(
                "a resilience run needs a primary: pass --primary-url or set HYBRIDSTORE_PRIMARY_URL "
                "(it creates and drops a schema of its own there; your data is never touched)"
            )


def run(options: RunOptions, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run the chosen scenarios (in the spec's order) and return the report. Raises `ConfigError` when the
    sandbox cannot be made (nothing was run then)."""
    options.check()
    names = [n for n in SCENARIOS if n in set(options.scenarios)]
    report: dict[str, Any] = {
        "seed": options.seed,
        "started_at": time.time(),
        "finished_at": None,
        "duration_per_scenario": options.duration,
        "rate": options.rate,
        "primary": redact(options.primary_url),
        "passed": False,
        "scenarios": [],
    }

    def tell(name: str, done: int, step: str) -> None:
        if progress is not None:
            progress({"scenario": name, "done": done, "total": len(names), "step": step})

    with Sandbox(options.primary_url, base_dir=options.base_dir) as sandbox:
        report["sandbox"] = {"schema": sandbox.schema, "cleaned_leftovers": sandbox.cleaned}
        for i, name in enumerate(names):
            if options.cancel.is_set():
                report["cancelled"] = True
                break
            scenario = BY_NAME[name]
            duration = max(options.duration, scenario.min_duration)
            tell(name, i, "starting")
            sandbox.begin(name)
            ctx = RunContext(
                sandbox,
                duration,
                options.seed,
                options.rate,
                step=lambda msg, name=name, i=i: tell(name, i, msg),  # type: ignore[misc]
                cancel=options.cancel,
            )
            started = time.monotonic()
            try:
                result = scenario.run(ctx)
            except (HybridStoreError, OSError, AssertionError, RuntimeError, ValueError) as exc:
                log.exception("scenario %s could not run", name)
                result = ScenarioResult(name, error=f"{type(exc).__name__}: {exc}")
                result.details["traceback"] = traceback.format_exc(limit=5)
                result.duration_s = time.monotonic() - started
            entry = result.to_dict()
            entry["summary"] = scenario.summary
            entry["duration_requested_s"] = duration
            report["scenarios"].append(entry)
            tell(name, i + 1, entry["verdict"])
    report["finished_at"] = time.time()
    report["cancelled"] = options.cancel.is_set()
    report["passed"] = not report["cancelled"] and all(s["verdict"] == "pass" for s in report["scenarios"])
    return report
