"""Every scenario runs against the real store (real PostgreSQL, real SQLite files, real processes) with a short
duration and a fixed seed, and passes with the figures the spec asks for; and each one has teeth: run against a
deliberately broken store (a test-only fault hook, `hybridstore.faults`) it fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridstore import faults
from hybridstore.resilience import SCENARIOS
from hybridstore.resilience.runner import RunOptions, run
from hybridstore.resilience.scenarios import BY_NAME

pytestmark = [pytest.mark.resilience, pytest.mark.slow]
SEED = 20261130
DURATION = 2.0  # each scenario raises it to its own floor


@pytest.fixture
def no_faults() -> Iterator[None]:
    faults.disable()
    yield
    faults.disable()


def run_one(pg_dsn: str, tmp_path: Path, name: str, **options: Any) -> dict[str, Any]:
    report = run(RunOptions(pg_dsn, scenarios=[name], duration=DURATION, seed=SEED, base_dir=tmp_path, **options))
    assert [s["name"] for s in report["scenarios"]] == [name]
    scenario = dict(report["scenarios"][0])
    if scenario["details"].get("skipped"):  # disk_full without root: the report says why
        pytest.skip(scenario["details"]["skipped"])
    return scenario


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_passes_against_the_real_store(pg_dsn: str, tmp_path: Path, name: str, no_faults: None) -> None:
    s = run_one(pg_dsn, tmp_path, name)
    failed = [c for c in s["criteria"] if not c["passed"]]
    assert s["verdict"] == "pass", (s["error"], failed, s["problems"])
    assert s["ops"] > 0 and s["acknowledged"] > 0
    assert s["lost"] == 0 and s["duplicated"] == 0 and s["converged"]
    assert 0 < s["availability"] <= 1
    assert s["criteria"] and all(c["text"] for c in s["criteria"])
    assert s["p50_ms"] is not None and s["p99_ms"] >= s["p50_ms"]
    assert list(tmp_path.iterdir()) == [], "the run removed its temporary directory"


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_fails_against_a_broken_store(pg_dsn: str, tmp_path: Path, name: str, no_faults: None) -> None:
    fault = BY_NAME[name].teeth
    faults.enable(fault)
    s = run_one(pg_dsn, tmp_path, name)
    in_children = name in ("node_crash", "primary_down_local_corrupt")  # the fault fired in node processes
    assert in_children or faults.fired[fault] > 0, f"{fault} did its damage"
    assert s["verdict"] == "fail", f"{name} did not notice {fault}: {s['criteria']}"
    assert s["lost"] > 0 or not s["converged"] or s["phantom"] > 0, s["criteria"]
