"""``hybridstore health`` / ``alerts`` / ``status``: the recovery service from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import hybridstore
from hybridstore.cli import app

for _module in ("admin", "data", "health", "status"):  # importing them registers the commands
    __import__(f"hybridstore.cli.{_module}")

runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    """Exit code and output: standard output only under --json (logs and notes go to standard error)."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_health_json_and_table(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    code, out = cli("-d", d, "set", "c", "k", '"[bold]not markup[/]"')
    assert code == 0
    code, out = cli("-d", d, "health", "--json")
    assert code == 0
    status = json.loads(out)
    assert status["overall"] == "healthy"
    c = status["components"]
    assert c["primary"]["state"] == "disabled" and c["local"]["state"] == "healthy"
    assert c["local"]["quick_check"]["ok"] is True and c["sync"]["outbox_depth"] == 1
    assert c["disk"]["free_bytes"] > 0 and c["conflicts"]["available"] is False
    code, out = cli("-d", d, "health")
    assert code == 0 and "overall: healthy" in out and "local" in out and "1 pending" in out


def test_health_watch_stops_after_count(tmp_path: Path) -> None:
    assert cli("-d", str(tmp_path / "d"), "set", "c", "k", "1")[0] == 0
    code, out = cli("-d", str(tmp_path / "d"), "health", "--watch", "--interval", "0.05", "--count", "3")
    assert code == 0 and "overall" in out


def test_health_during_outage_exits_1(tmp_path: Path) -> None:
    # a primary that refuses connections: the one-shot check sees it down (not yet declared: degraded)
    assert cli("-d", str(tmp_path / "d"), "set", "c", "k", "1")[0] == 0
    code, out = cli("-d", str(tmp_path / "d"), "--primary-url", "postgresql://u@127.0.0.1:1/x", "health", "--json")
    status = json.loads(out)
    assert status["components"]["primary"]["state"] in ("degraded", "down")
    assert status["overall"] in ("degraded", "outage") and code == (1 if status["overall"] == "outage" else 0)


def test_alerts_and_status(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with hybridstore.open(data_dir=d, low_storage_bytes=1 << 60, background=False) as store:
        store.recovery.check()
        assert [a.kind for a in store.recovery.alerts(active=True)] == ["low_storage"]
    code, out = cli("-d", str(d), "alerts", "--json")
    assert code == 0
    alerts = json.loads(out)
    assert [(a["kind"], a["active"]) for a in alerts] == [("low_storage", True)]
    assert {"kind", "severity", "message", "raised_at", "resolved_at"} <= set(alerts[0])
    code, out = cli("-d", str(d), "alerts")
    assert code == 0 and "low_storage" in out and "active" in out
    code, out = cli("-d", str(d), "alerts", "--resolved", "--json")
    assert json.loads(out) == []
    # status runs a check (default threshold: enough space) and shows the overall state
    code, out = cli("-d", str(d), "status", "--json")
    assert code == 0 and json.loads(out)["overall"] == "healthy"
    code, out = cli("-d", str(d), "status")
    assert "overall: healthy" in out
