"""What scripts rely on: exit codes (0 done, 1 failed or found nothing, 2 fix the command), ``--json`` on every
command with errors as JSON too, ``--version``, ``-y/--yes``, and ``--timeout`` honoured below 2 s."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hybridstore
from hybridstore.cli import app
from hybridstore.cli.backup import short_ids
from hybridstore.cli.logs import PoolStateFilter

from .fix_proxy import Proxy
from .test_cli import commands

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
CONFIRMING = (["deadletters", "discard"], ["backup", "restore"], ["backup", "delete"])


def cli(*args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout if "--json" in args else result.output


def store(tmp_path: Path) -> str:
    d = str(tmp_path / "d")
    assert cli("-d", d, "set", "c", "k", '{"n": 1}')[0] == 0
    return d


def test_every_command_takes_json_and_confirming_ones_take_yes() -> None:
    for name in commands():
        code, output = cli(*name.split(), "--help")
        if name == "serve":  # a server, not a report: what it prints is its log
            assert code == 0
            continue
        assert code == 0 and "--json" in output, f"{name} takes --json"
    for args in CONFIRMING:
        code, output = cli(*args, "--help")
        assert "--yes" in output and "-y" in output, args


def test_version() -> None:
    code, output = cli("--version")
    assert code == 0 and output.strip() == f"hybridstore {hybridstore.__version__}"


@pytest.mark.parametrize(
    ("args", "code", "kind", "message"),
    [
        (["get", "c", "nope"], 1, "NotFound", "not found"),
        (["set", "c", "k", "{bad"], 2, "UsageError", "not valid JSON"),
        (["set", "bad name", "k", "1"], 2, "ValidationError", "invalid collection"),
        (["list", "c", "--limit", "x"], 2, "UsageError", "--limit"),
        (["list", "c", "--no-such-option"], 2, "UsageError", "no-such-option"),
        (["conflicts", "show", "1"], 1, "PrimaryUnavailableError", "needs a primary"),
        (["backup", "show", "zzzzzzzz"], 1, "BackupNotFoundError", "no backup"),
        (["deadletters", "discard", "1"], 2, "UsageError", "--yes"),
        (["--log-level", "loud", "status"], 2, "UsageError", "log level"),
    ],
)
def test_errors_are_json_under_json(tmp_path: Path, args: list[str], code: int, kind: str, message: str) -> None:
    d = store(tmp_path)
    got, output = cli("-d", d, *args, "--json")
    error = json.loads(output)["error"]
    assert got == code and error["type"] == kind and message in error["message"], output


def test_bad_input_exits_2_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "right")
    d = store(tmp_path)
    assert cli("-d", d, "backup", "config", "--encrypt")[0] == 0
    first = json.loads(cli("-d", d, "backup", "create", "--json")[1])
    second = json.loads(cli("-d", d, "backup", "create", "--json")[1])
    assert first["short_id"] != second["short_id"] and len(first["short_id"]) == 8
    a, b = first["id"], second["id"]
    common = a[: next(i for i in range(len(a)) if a[i] != b[i])]
    assert len(common) >= 4, "time-ordered ids share their start"
    code, output = cli("-d", d, "backup", "show", common[:8])
    assert code == 2 and "ambiguous" in output
    code, output = cli("-d", d, "backup", "show", first["short_id"], "--json")
    assert code == 0 and json.loads(output)["id"] == first["id"]
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "wrong")
    code, output = cli("-d", d, "backup", "verify", first["short_id"])
    assert code == 2 and "wrong passphrase" in output
    assert "verifying" not in output, "no progress bar is left above the error"
    garbage = tmp_path / "garbage.hsb"
    garbage.write_bytes(b"\x00" * 100)
    code, output = cli("-d", d, "backup", "import", str(garbage))
    assert code == 2 and "not a hybridstore backup" in output


def test_short_ids_are_unique_endings() -> None:
    ids = ["0190aaaa00000000000000001234abcd", "0190aaaa00000000000000091234abcd", "0190aaab000000000000000055555555"]
    shorts = short_ids(ids)
    assert shorts == {ids[0]: "01234abcd", ids[1]: "91234abcd", ids[2]: "55555555"}
    assert len(set(shorts.values())) == 3


def test_confirming_commands_ask_only_on_a_terminal(tmp_path: Path) -> None:
    d = store(tmp_path)
    for args in (["backup", "delete", "abcd1234"], ["backup", "restore", "abcd1234"]):
        code, output = cli("-d", d, *args)
        assert code == 2 and "--yes" in output and "not a terminal" in output, args
        code, output = cli("-d", d, *args, "-y")
        assert code == 1 and "no backup" in output, "-y confirms; then the id is looked up"


def test_sync_exits_1_while_writes_remain(tmp_path: Path) -> None:
    d = store(tmp_path)
    code, output = cli("-d", d, "sync")
    assert code == 1 and "1 write will stay queued" in output and "no primary configured" in output
    code, output = cli("-d", d, "sync", "--json")
    assert code == 1 and json.loads(output)["remaining"] == 1


def test_health_exits_1_during_an_outage(tmp_path: Path) -> None:
    d = store(tmp_path)
    refused = "postgresql://u@127.0.0.1:1/x"
    code, output = cli("-d", d, "--primary-url", refused, "health", "--json")
    status = json.loads(output)
    assert status["overall"] == "outage" and status["components"]["primary"]["state"] == "down" and code == 1
    code, output = cli("-d", d, "--primary-url", refused, "health")
    assert code == 1 and "outage" in output
    code, output = cli("-d", d, "health", "--watch", "--interval", "0.01", "--count", "2", "--json")
    lines = [json.loads(line) for line in output.splitlines()]
    assert code == 0 and [s["overall"] for s in lines] == ["healthy", "healthy"]


def test_timeout_below_two_seconds_is_honoured(tmp_path: Path, proxy: Proxy, proxied_dsn: str) -> None:
    d = store(tmp_path)
    proxy.blackhole()
    start = time.monotonic()
    code, output = cli("-d", d, "--primary-url", proxied_dsn, "--timeout", "0.3", "set", "c", "k", "2")
    took = time.monotonic() - start
    assert code == 0 and "queued" in output
    assert took < 1.2, f"--timeout 0.3 took {took:.2f}s"
    code, output = cli("-d", d, "get", "c", "k")
    assert code == 0 and json.loads(output.splitlines()[-1]) == 2, "the next command waits for the last one to close"
    start = time.monotonic()
    code, output = cli("-d", d, "--primary-url", proxied_dsn, "--timeout", "0.3", "health", "--json")
    took = time.monotonic() - start
    assert code == 1 and json.loads(output)["overall"] == "outage"
    assert took < 2.0, f"health with --timeout 0.3 took {took:.2f}s"
    assert cli("-d", d, "get", "c", "k")[0] == 0  # waits for the last command's close (the directory lock)
    # the same as a process: it exits without waiting for the probe's connection attempt
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [sys.executable, "-m", "hybridstore", "-d", d, "--primary-url", proxied_dsn, "--timeout", "0.3"]
    start = time.monotonic()
    done = subprocess.run([*args, "set", "c", "k", "3"], capture_output=True, text=True, env=env, check=False)
    took = time.monotonic() - start
    refused_start = time.monotonic()  # the same work against a primary that refuses at once (psycopg imported too)
    base = [sys.executable, "-m", "hybridstore", "-d", d, "--primary-url", "postgresql://u@127.0.0.1:1/x"]
    subprocess.run([*base, "set", "c", "k", "4"], capture_output=True, env=env, check=True)
    baseline = time.monotonic() - refused_start
    assert done.returncode == 0, done.stderr
    assert took - baseline < 1.0, f"took {took:.2f}s, {baseline:.2f}s with a primary that refuses at once"


def test_pool_warnings_once_per_state_change() -> None:
    pool_filter = PoolStateFilter(logging.WARNING)

    def record(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("psycopg.pool", level, "pool.py", 1, msg, ("p", "refused"), None)

    failed = "error connecting in %r: %s"
    assert [pool_filter.filter(record(failed)) for _ in range(12)] == [True] + [False] * 11
    back = record("adding new connection to the pool", logging.INFO)
    assert pool_filter.filter(back) is False, "an info record below the CLI's level"
    assert "again" in back.getMessage()
    assert pool_filter.filter(record(failed)) is True, "a new outage is logged again"
    assert PoolStateFilter(logging.INFO).filter(record("adding new connection to the pool", logging.INFO))


def test_debug_log_level_says_what_the_cli_does(tmp_path: Path) -> None:
    d = store(tmp_path)
    result = runner.invoke(app, ["-d", d, "--log-level", "debug", "get", "c", "k"])
    assert result.exit_code == 0
    assert "hybridstore.cli" in result.stderr and "opened node" in result.stderr and "data dir" in result.stderr
    result = runner.invoke(app, ["-d", d, "get", "c", "k"])
    assert result.stderr == ""


def test_progress_bars_appear_with_work_and_vanish_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from hybridstore.cli import output

    def run(fail: bool, update: bool = True) -> str:
        buffer = io.StringIO()
        monkeypatch.setattr(output, "err", Console(file=buffer, width=80))
        with contextlib.suppress(RuntimeError), output.progress_bars(quiet=False) as bars:
            if update:
                bars.update("working", 5, 10)
            if fail:
                raise RuntimeError("the error message follows")
        return buffer.getvalue()

    assert "working" in run(fail=False) and "5/10" in run(fail=False)
    assert "working" not in run(fail=True), "a failed command leaves no bar above its error"
    assert run(fail=False, update=False) == "", "no work, no bar"
