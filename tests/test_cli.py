"""The command line: every command has --help and is documented; commands work end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

import hybridstore
from hybridstore.cli import app
from hybridstore.cli.app import app as typer_app
from hybridstore.migrations import primary_migrations

from .faults import refuse_poison
from .fix_db import primary_rows

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def commands() -> list[str]:
    from hybridstore.cli import admin, backup, conflicts, data, health, status  # noqa: F401  (importing registers them)

    names = [c.name or c.callback.__name__ for c in typer_app.registered_commands if c.callback]
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        names += [f"{group.name} {c.name}" for c in group.typer_instance.registered_commands]
    return sorted(names)


def cli(*args: str, input: str | None = None) -> tuple[int, str]:
    """Exit code and output: standard output only under --json (logs and notes go to standard error)."""
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_every_command_has_help_and_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    names = commands()
    assert {"set", "get", "delete", "list", "status", "sync"} <= set(names)
    assert {"conflicts list", "conflicts resolve", "deadletters retry"} <= set(names)
    for name in names:
        code, output = cli(*name.split(), "--help")
        assert code == 0 and "Usage" in output, name
        assert len(output.split("Usage")[1]) > 40, f"{name} has help text"
        # a command group may be documented as a whole in the README (its page in docs/ lists each command)
        assert f"`{name}`" in readme or f"`{name.split()[0]} …`" in readme, f"README documents `{name}`"


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
    # Embedded: one queued op per key (the delete of p1 replaced its set), for the day a primary is configured.
    assert health["outbox"]["depth"] == 2 and health["primary"]["state"] == "disabled"
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
    assert cli("-d", str(tmp_path / "d"), "set", "c", "k", "1")[0] == 0  # reading commands need a store
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
    every = [m.version for m in primary_migrations()]
    assert code == 0 and json.loads(out)["applied"] == every and every[:2] == [1, 2]
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


def test_conflicts_and_dead_letters(
    tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = str(tmp_path / "d")
    opts = {"primary_schema": pg_schema, "conflict_strategies": {"orders": "manual"}, "background": False}
    with hybridstore.open(pg_dsn, data_dir=tmp_path / "other", **opts) as other:
        other.set("orders", "o1", {"status": "new"})
        other.set("orders", "o2", {"status": "new"})
        with hybridstore.open(pg_dsn, data_dir=d, write_mode="local_first", **opts) as node:
            node.sync_now()
            node.set("orders", "o1", {"status": "mine"})  # queued
            node.set("orders", "o2", {"status": "mine too"})
            other.set("orders", "o1", {"status": "theirs"})  # meanwhile on the primary
            other.set("orders", "o2", {"status": "theirs too"})
            assert node.sync_now().conflicts == 2
            node.set("c", "bad", {"poison": True})
            refuse_poison(pg, pg_schema)
            for _ in range(3):
                node.sync_now()
    base = ["-d", d, "--primary-url", pg_dsn, "--schema", pg_schema]
    code, out = cli(*base, "conflicts", "list", "--json")
    found = sorted(json.loads(out), key=lambda c: c["key"])
    assert code == 0 and len(found) == 2 and found[0]["local"] == {"status": "mine"}
    cid, cid2 = str(found[0]["id"]), str(found[1]["id"])
    # without --choice: asked on a terminal (here, a fake one), with the conflict shown first
    monkeypatch.setattr("hybridstore.cli.conflicts.interactive", lambda: True)
    result = runner.invoke(app, [*base, "conflicts", "resolve", cid2, "--json"], input="keep\nremote\n")
    answer = result.stdout[result.stdout.index("{") :]  # the test runner echoes the typed answers to stdout
    assert result.exit_code == 0 and json.loads(answer) == {"id": int(cid2), "choice": "remote", "write": None}
    assert '"theirs too"' in result.stderr and "answer local, remote or value" in result.stderr
    monkeypatch.undo()
    code, out = cli(*base, "conflicts", "list")
    assert code == 0 and "orders/o1" in out and "manual" in out
    code, out = cli(*base, "conflicts", "show", cid)
    assert code == 0 and '"theirs"' in out and '"mine"' in out and '"new"' in out
    code, out = cli(*base, "conflicts", "resolve", cid, "--choice", "value")
    assert code == 2 and "--value" in out
    code, out = cli(*base, "conflicts", "resolve", cid, "--choice", "value", "--value", "{not json")
    assert code == 2 and "not JSON" in out
    code, out = cli(
        *base, "conflicts", "resolve", cid, "--choice", "value", "--value", '{"status": "merged"}', "--actor", "carol"
    )
    assert code == 0 and "resolved" in out
    assert primary_rows(pg, pg_schema, "orders")["o1"][0] == {"status": "merged"}
    code, out = cli(*base, "conflicts", "resolve", cid)
    assert code == 2 and "--choice is required" in out, "never a silent default when nobody can be asked"
    code, out = cli(*base, "conflicts", "resolve", cid, "--choice", "local")
    assert code == 1 and "already resolved" in out
    code, out = cli(*base, "conflicts", "list")
    assert code == 0 and "no open conflicts" in out

    code, out = cli(*base, "deadletters", "list", "--json")
    letters = json.loads(out)
    assert code == 0 and [x["key"] for x in letters] == ["bad"]
    code, out = cli(*base, "deadletters", "list")
    assert code == 0 and "poison" in out and "bad" in out
    pg.execute(f'DROP TRIGGER no_poison ON "{pg_schema}".records')
    code, out = cli(*base, "deadletters", "retry", str(letters[0]["id"]))
    assert code == 0 and "written again" in out
    assert primary_rows(pg, pg_schema, "c")["bad"][0] == {"poison": True}
    code, out = cli(*base, "deadletters", "discard", "999", "--yes")
    assert code == 1 and "no dead letter" in out
    code, out = cli(*base, "sync", "--full", "--json")
    assert code == 0 and json.loads(out)["remaining"] == 0
    code, out = cli(*base, "sync", "--full")
    assert code == 0 and "pulled" in out
