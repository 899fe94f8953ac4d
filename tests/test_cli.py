"""The command line: every command has --help and is documented; commands work end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from hybridstore.cli import app
from hybridstore.cli.app import app as typer_app

from .fix_db import primary_rows

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def commands() -> list[str]:
    from hybridstore.cli import admin, data, health, status  # noqa: F401
    from hybridstore.cli import main as _main  # noqa: F401  (importing registers the commands)

    return sorted(c.name or c.callback.__name__ for c in typer_app.registered_commands if c.callback)


def cli(*args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.output


def test_every_command_has_help_and_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    names = commands()
    assert {"set", "get", "delete", "list", "status", "sync"} <= set(names)
    for name in names:
        code, output = cli(name, "--help")
        assert code == 0 and "Usage" in output, name
        assert len(output.split("Usage")[1]) > 40, f"{name} has help text"
        assert f"`{name}`" in readme, f"README documents `{name}`"


def test_embedded_session(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    code, out = cli("-d", d, "set", "products", "p1", '{"name": "Shoe", "price": 10}')
    assert code == 0 and "queued" in out
    code, out = cli("-d", d, "get", "products", "p1")
    assert code == 0 and json.loads(out) == {"name": "Shoe", "price": 10}
    code, out = cli("-d", d, "set", "products", "p2", input="[1, 2, 3]")
    assert code == 0
    code, out = cli("-d", d, "list", "products", "--json")
    data = json.loads(out)
    assert [r["key"] for r in data["records"]] == ["p1", "p2"] and data["records"][1]["value"] == [1, 2, 3]
    code, out = cli("-d", d, "delete", "products", "p1", "--json")
    assert code == 0 and json.loads(out)["queued"] is True
    code, out = cli("-d", d, "get", "products", "p1")
    assert code == 1 and "not found" in out
    code, out = cli("-d", d, "status", "--json")
    health = json.loads(out)
    assert health["outbox"]["depth"] == 3 and health["primary"]["state"] == "disabled"
    code, out = cli("-d", d, "status")
    assert code == 0 and "outbox" in out and "journal" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "products", "p1", "not json"], "not valid JSON"),
        (["set", "bad name", "p1", "1"], "invalid collection"),
        (["--primary-url", "mysql://x/y", "status"], "postgresql://"),
        (["list", "c", "--limit", "0"], "limit"),
        (["--log-level", "loud", "status"], "log level"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    code, out = cli("-d", str(tmp_path / "d"), *args)
    assert code == 2 and "error:" in out and message in out


def test_markup_in_user_data_is_printed_as_text(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    code, out = cli("-d", d, "set", "c", "[bold]k[/]", '"[red]v[/red]"')
    assert code == 0 and "c/[bold]k[/]" in out
    code, out = cli("-d", d, "list", "c")
    assert "[bold]k[/]" in out and "[red]v[/red]" in out
    code, out = cli("-d", d, "--primary-url", "mysql://x/y", "status")
    assert code == 2 and "postgresql://" in out


def test_sync_with_primary(tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[object]) -> None:
    d = str(tmp_path / "d")
    for i in range(30):
        assert cli("-d", d, "set", "orders", f"o{i}", str(i))[0] == 0
    code, out = cli("-d", d, "--primary-url", pg_dsn, "--schema", pg_schema, "sync", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["pushed"] == 30 and report["remaining"] == 0
    assert len(primary_rows(pg, pg_schema)) == 30  # type: ignore[arg-type]
    code, out = cli("-d", d, "--primary-url", pg_dsn, "--schema", pg_schema, "set", "orders", "o99", "1")
    assert code == 0 and "saved" in out and "primary" in out


def test_migrate(tmp_path: Path, pg_dsn: str, pg_schema: str) -> None:
    args = ["-d", str(tmp_path / "d"), "--primary-url", pg_dsn, "--schema", pg_schema, "migrate", "--json"]
    code, out = cli(*args)
    assert code == 0 and json.loads(out)["applied"] == [1]
    code, out = cli(*args)
    assert code == 0 and json.loads(out)["applied"] == []
    code, out = cli("-d", str(tmp_path / "e"), "migrate")
    assert code == 2 and "no primary configured" in out
    code, out = cli(
        "-d", str(tmp_path / "f"), "--primary-url", "postgresql://postgres@127.0.0.1:1/x", "--timeout", "0.5", "migrate"
    )
    assert code == 1 and "primary unavailable" in out


def test_python_dash_m_and_console_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hybridstore", "-d", str(tmp_path / "d"), "set", "c", "k", '"v"', "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tier"] == "local"


def test_offline_command_does_not_wait_for_the_primary(tmp_path: Path) -> None:
    start = time.monotonic()
    code, out = cli(
        "-d",
        str(tmp_path / "d"),
        "--primary-url",
        "postgresql://postgres@127.0.0.1:1/x",
        "--timeout",
        "3",
        "set",
        "c",
        "k",
        "1",
    )
    assert code == 0 and "queued" in out
    assert time.monotonic() - start < 2.0, "the start-up probe found the primary down; the write went local at once"
