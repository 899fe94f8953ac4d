"""``hybridstore backup …`` end to end on an embedded store; every subcommand has help and is documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hybridstore.cli import admin, app, data, status  # noqa: F401  (importing registers the commands)
from hybridstore.cli.backup import backup_app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def cli(*args: str, input: str | None = None) -> tuple[int, str]:
    """Exit code and output: standard output only under --json (logs and notes go to standard error)."""
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_every_backup_command_has_help_and_docs() -> None:
    docs = (ROOT / "docs" / "backups.md").read_text()
    readme = (ROOT / "README.md").read_text()
    names = sorted(c.name or "" for c in backup_app.registered_commands)
    assert set(names) >= {
        "create",
        "list",
        "show",
        "verify",
        "restore",
        "export",
        "import",
        "delete",
        "prune",
        "config",
    }
    assert "`backup …`" in readme
    for name in names:
        code, output = cli("backup", name, "--help")
        assert code == 0 and len(output.split("Usage")[1]) > 40, name
        assert f"backup {name}" in docs, f"docs/backups.md documents `backup {name}`"


def test_backup_commands_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "cli secret")
    d = str(tmp_path / "d")
    for i in range(5):
        assert cli("-d", d, "set", "products", f"p{i}", json.dumps({"i": i}))[0] == 0
    code, out = cli("-d", d, "backup", "config", "--encrypt", "--max-backups", "3", "--json")
    assert code == 0 and json.loads(out)["encrypt"] is True and json.loads(out)["max_backups"] == 3
    code, out = cli("-d", d, "backup", "create", "--label", "[b]first[/b]", "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["records"] == 5 and info["encrypted"] and info["label"] == "[b]first[/b]"
    bid = info["id"]
    code, out = cli("-d", d, "backup", "list")
    assert code == 0 and bid[-8:] in out, "the short id: the id's random end"
    code, out = cli("-d", d, "backup", "show", bid[:8])
    assert code == 0 and "[b]first[/b]" in out, "labels are printed as text, not markup"
    code, out = cli("-d", d, "backup", "show", bid[:8], "--json")
    assert json.loads(out)["collections"] == {"products": 5}
    code, out = cli("-d", d, "backup", "verify", bid, "--json")
    assert code == 0 and json.loads(out)["records"] == 5
    cli("-d", d, "set", "products", "p1", '"changed"')
    code, out = cli("-d", d, "backup", "restore", bid, "--dry-run", "--json")
    plan = json.loads(out)
    assert plan["totals"] == {"added": 0, "overwritten": 1, "skipped": 0, "unchanged": 4}
    code, out = cli("-d", d, "backup", "restore", bid, "-c", "products", "-k", "p1", "--yes")
    assert code == 0 and "1 record written" in out
    code, out = cli("-d", d, "get", "products", "p1")
    assert json.loads(out) == {"i": 1}
    code, out = cli("-d", d, "backup", "export", bid, str(tmp_path / "out.hsb"), "--json")
    assert code == 0 and Path(json.loads(out)["path"]).exists()
    code, out = cli("-d", d, "backup", "delete", bid, "--yes")
    assert code == 0
    code, out = cli("-d", d, "backup", "import", str(tmp_path / "out.hsb"), "--json")
    assert code == 0 and json.loads(out)["id"] == bid
    code, out = cli("-d", d, "backup", "prune", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["deleted"] == []
    code, out = cli("-d", d, "backup", "list", "--json")
    assert {b["kind"] for b in json.loads(out)} == {"manual", "pre_restore"}
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", "wrong")
    code, out = cli("-d", d, "backup", "verify", bid)
    assert code == 2 and "wrong passphrase" in out


@pytest.mark.parametrize(
    ("args", "message", "exit_code"),
    [
        (["backup", "config", "--max-backups", "0"], "max_backups", 2),
        (["backup", "config", "--source", "cloud"], "source", 2),
        (["backup", "show", "nope1234"], "no backup", 1),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, args: list[str], message: str, exit_code: int) -> None:
    assert cli("-d", str(tmp_path / "d"), "set", "c", "k", "1")[0] == 0  # reading commands need a store
    code, out = cli("-d", str(tmp_path / "d"), *args)
    assert code == exit_code and message in out


def test_not_a_backup_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("shopping list\n")
    code, out = cli("-d", str(tmp_path / "d"), "backup", "import", str(f))
    assert code == 2 and "not a hybridstore backup" in out
