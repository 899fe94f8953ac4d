"""``hybridstore test-resilience``: the table, the JSON and HTML reports, and the exit code (0 only if every scenario
passed; 1 when one failed; 2 for a bad command)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hybridstore import faults
from hybridstore.cli import app

pytestmark = [pytest.mark.resilience, pytest.mark.slow]
runner = CliRunner()
FIELDS = {
    "name",
    "verdict",
    "criteria",
    "ops",
    "acknowledged",
    "lost",
    "duplicated",
    "converged",
    "availability",
    "p50_ms",
    "p99_ms",
    "detection_s",
    "recovery_s",
}


@pytest.fixture
def no_faults() -> Iterator[None]:
    faults.disable()
    yield
    faults.disable()


def test_reports_and_exit_code_zero(tmp_path: Path, pg_dsn: str, no_faults: None) -> None:
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    args = ["test-resilience", "--primary-url", pg_dsn, "-s", "blackhole", "--duration", "2", "--seed", "4"]
    result = runner.invoke(app, [*args, "--json", str(out), "--html", str(page)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert json.loads(result.stdout) == report, "under --json standard output holds the report"
    assert {"seed", "started_at", "scenarios"} <= report.keys() and report["seed"] == 4
    (s,) = report["scenarios"]
    assert s.keys() >= FIELDS and s["verdict"] == "pass" and s["lost"] == 0
    html = page.read_text()
    assert html.startswith("<!doctype html>") and "blackhole" in html and "<svg" in html

    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "blackhole" in table.stdout and "pass" in table.stdout


def test_a_failed_scenario_exits_1(tmp_path: Path, pg_dsn: str, no_faults: None) -> None:
    faults.enable(faults.OUTBOX_DROP)  # a broken store
    args = ["test-resilience", "--primary-url", pg_dsn, "-s", "primary_outage", "--duration", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "fail" in result.stdout and "no acknowledged write lost" in result.stdout


def test_bad_commands_exit_2(pg_dsn: str) -> None:
    result = runner.invoke(app, ["test-resilience", "--primary-url", pg_dsn, "-s", "nope"])
    assert result.exit_code == 2 and "unknown scenario" in result.output
    result = runner.invoke(
        app, ["--json", "test-resilience", "-s", "primary_outage"], env={"HYBRIDSTORE_PRIMARY_URL": ""}
    )
    assert result.exit_code == 2
