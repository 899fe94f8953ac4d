"""The data directory: reading commands never create a store, unusable paths are clear errors (exit code 2),
a read-only or busy data directory can still be inspected, and `hybridstore.open` raises `ConfigError`."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hybridstore
from hybridstore.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
READING = [
    ["status"],
    ["health"],
    ["get", "c", "k"],
    ["list", "c"],
    ["alerts"],
    ["conflicts", "list"],
    ["deadletters", "list"],
    ["backup", "list"],
    ["backup", "show", "abcd1234"],
]


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout if "--json" in args else result.output


def as_root_without_override(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as root without the capability to ignore file permissions: a read-only directory is then
    read-only for it too (root can write anything otherwise)."""
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", sys.executable, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False, timeout=60)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to drop CAP_DAC_OVERRIDE"
)


@pytest.mark.parametrize("args", READING, ids=" ".join)
def test_reading_commands_never_create_a_store(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "typo"
    code, out = cli("-d", str(missing), *args)
    assert code == 2 and "does not exist" in out and "never creates" in out
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = cli("-d", str(empty), *args)
    assert code == 2 and "holds no hybridstore store" in out
    assert list(empty.iterdir()) == []


def test_writing_command_creates_the_store_and_says_so(tmp_path: Path) -> None:
    d = tmp_path / "new"
    code, out = cli("-d", str(d), "set", "c", "k", "1")
    assert code == 0 and f"created a new store in {d}" in out
    code, out = cli("-d", str(d), "set", "c", "k", "2")
    assert code == 0 and "created" not in out
    code, out = cli("-d", str(d), "get", "c", "k")
    assert code == 0 and out.strip() == "2"


@pytest.mark.parametrize("args", [["status"], ["set", "c", "k", "1"], ["get", "c", "k", "--json"]], ids=" ".join)
def test_unusable_paths_are_clear_errors(tmp_path: Path, args: list[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    for path, message in (
        (str(afile), "is a file, not a directory"),
        (str(afile / "sub"), f"lies under {afile}, which is a file"),
        ("", "empty"),
    ):
        code, out = cli("-d", path, *args)
        assert code == 2, (path, out)
        if "--json" in args:
            error = json.loads(out)["error"]
            assert error["type"] in ("ConfigError", "UsageError") and message in error["message"]
        else:
            assert "error:" in out and message in out and "Traceback" not in out
    assert afile.read_text() == "not a directory\n"


def test_a_busy_data_directory_can_be_inspected(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with hybridstore.open(data_dir=d, background=False) as running:
        running.set("c", "k", {"n": 1})
        code, out = cli("-d", str(d), "get", "c", "k", "--json")
        assert code == 0 and json.loads(out)["value"] == {"n": 1}
        code, out = cli("-d", str(d), "status", "--json")
        status = json.loads(out)
        assert code == 0 and status["outbox"]["depth"] == 1 and status["data_dir"] == str(d)
        code, out = cli("-d", str(d), "set", "c", "k", "2")
        assert code == 2 and "in use by another process" in out
        assert running.get("c", "k").value == {"n": 1}  # type: ignore[union-attr]
        info = running.backups.create_manual_backup("taken by the running store")
        in_progress = d / "backups" / ".tmp-0123abcd.body"  # a backup the running store is writing now
        in_progress.write_bytes(b"half a backup")
        code, out = cli("-d", str(d), "backup", "list", "--json")
        assert code == 0 and [b["id"] for b in json.loads(out)] == [info.id]
        assert in_progress.exists(), "the snapshot never touches the running store's backup repository"


@needs_root
def test_a_read_only_data_directory_can_be_inspected(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    d = base / "d"
    with hybridstore.open(data_dir=d, background=False) as store:
        store.set("c", "k", {"n": 1})
        store.set("c", "k2", 2)
    for p in [d, *d.iterdir()]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in d.iterdir())
    try:
        result = as_root_without_override("-m", "hybridstore", "-d", str(d), "get", "c", "k", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["value"] == {"n": 1}
        result = as_root_without_override("-m", "hybridstore", "-d", str(d), "status", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["outbox"]["depth"] == 2
        result = as_root_without_override("-m", "hybridstore", "-d", str(d), "list", "c")
        assert result.returncode == 0 and "k2" in result.stdout and "snapshot" in result.stderr
        result = as_root_without_override("-m", "hybridstore", "-d", str(d), "set", "c", "k", "3")
        assert result.returncode == 2 and "not writable" in result.stderr and "Traceback" not in result.stderr
        result = as_root_without_override(
            "-c", f"import hybridstore; hybridstore.open(data_dir={str(d)!r}, background=False)"
        )
        assert "ConfigError" in result.stderr and "not writable" in result.stderr
        assert sorted((p.name, p.stat().st_mtime_ns) for p in d.iterdir()) == before, "nothing in it changed"
    finally:
        for p in [d, *d.iterdir()]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_open_on_an_unusable_path_raises_config_error(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path, message in ((afile, "is a file"), (afile / "sub", "lies under")):
        with pytest.raises(hybridstore.ConfigError, match=message):
            hybridstore.open(data_dir=path, background=False)
    with pytest.raises(hybridstore.ConfigError, match="empty"):
        hybridstore.open(data_dir="", background=False)
