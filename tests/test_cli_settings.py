"""Settings from the command line and the environment: write mode, read policy, largest value, conflict
strategies per collection (parsed once, in `config.resolve`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hybridstore.cli import app
from hybridstore.config import parse_strategies, resolve
from hybridstore.errors import ConfigError

runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_resolve_reads_the_environment() -> None:
    env = {
        "HYBRIDSTORE_WRITE_MODE": "local_first",
        "HYBRIDSTORE_READ_POLICY": "local_first",
        "HYBRIDSTORE_MAX_VALUE_BYTES": "2048",
        "HYBRIDSTORE_CONFLICT_STRATEGY": "merge",
        "HYBRIDSTORE_CONFLICT_STRATEGIES": " orders=manual, carts=merge ,",
    }
    config = resolve(env=env)
    assert (config.write_mode, config.read_policy, config.max_value_bytes) == ("local_first", "local_first", 2048)
    assert config.conflict_strategy == "merge"
    assert dict(config.conflict_strategies) == {"orders": "manual", "carts": "merge"}
    explicit = resolve(env=env, write_mode="write_through", max_value_bytes=10, conflict_strategies={"a": "manual"})
    assert explicit.write_mode == "write_through" and explicit.max_value_bytes == 10
    assert dict(explicit.conflict_strategies) == {"a": "manual"}, "an explicit option replaces its variable"
    assert resolve(env={"HYBRIDSTORE_WRITE_MODE": ""}).write_mode == "write_through", "empty is unset"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HYBRIDSTORE_WRITE_MODE": "fast"}, "HYBRIDSTORE_WRITE_MODE must be write_through or local_first"),
        ({"HYBRIDSTORE_READ_POLICY": "any"}, "HYBRIDSTORE_READ_POLICY"),
        ({"HYBRIDSTORE_MAX_VALUE_BYTES": "1M"}, "HYBRIDSTORE_MAX_VALUE_BYTES must be a number of bytes"),
        ({"HYBRIDSTORE_MAX_VALUE_BYTES": "0"}, "max_value_bytes must be at least 1"),
        ({"HYBRIDSTORE_CONFLICT_STRATEGIES": "orders"}, "'orders' is not COLLECTION=STRATEGY"),
        ({"HYBRIDSTORE_CONFLICT_STRATEGIES": "orders=best"}, "strategy 'best' for 'orders'"),
        ({"HYBRIDSTORE_CONFLICT_STRATEGIES": "a=merge,a=manual"}, "named twice"),
        ({"HYBRIDSTORE_CONFLICT_STRATEGY": "newest"}, "HYBRIDSTORE_CONFLICT_STRATEGY"),
    ],
)
def test_bad_environment_is_a_config_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(env=env)


def test_parse_strategies() -> None:
    assert parse_strategies("") == {}
    assert parse_strategies("orders=manual,carts=merge") == {"orders": "manual", "carts": "merge"}
    with pytest.raises(ConfigError, match="--x"):
        parse_strategies("=manual", source="--x")


def test_cli_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = str(tmp_path / "d")
    assert cli("-d", d, "set", "c", "k", "1")[0] == 0
    code, out = cli("-d", d, "--write-mode", "local_first", "--read-policy", "local_first", "status", "--json")
    status = json.loads(out)
    assert code == 0 and (status["write_mode"], status["read_policy"]) == ("local_first", "local_first")
    monkeypatch.setenv("HYBRIDSTORE_READ_POLICY", "local_first")
    code, out = cli("-d", d, "status", "--json")
    assert json.loads(out)["read_policy"] == "local_first"
    code, out = cli("-d", d, "--max-value-bytes", "8", "set", "c", "k", '"more than eight bytes"')
    assert code == 2 and "error:" in out and "8" in out
    monkeypatch.setenv("HYBRIDSTORE_MAX_VALUE_BYTES", "8")
    code, out = cli("-d", d, "set", "c", "k", '"more than eight bytes"')
    assert code == 2
    code, out = cli("-d", d, "--max-value-bytes", "100", "set", "c", "k", '"more than eight bytes"')
    assert code == 0, "the option wins over the variable"
    monkeypatch.setenv("HYBRIDSTORE_CONFLICT_STRATEGIES", "orders=manual,carts=merge")
    result = runner.invoke(app, ["-d", d, "--log-level", "debug", "get", "c", "k"])
    assert "'orders': 'manual'" in result.stderr and "'carts': 'merge'" in result.stderr
    args = ["-d", d, "--log-level", "debug", "--conflict-strategy", "merge", "--conflict-strategy", "a=manual,b=merge"]
    result = runner.invoke(app, [*args, "get", "c", "k"])
    assert "conflicts merge (per collection: {'a': 'manual', 'b': 'merge'})" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--write-mode", "fast"], "write_mode must be"),
        (["--read-policy", "any"], "read_policy must be"),
        (["--conflict-strategy", "orders=best"], "--conflict-strategy: strategy 'best'"),
        (["--conflict-strategy", "bogus"], "conflict strategy must be one of"),
        (["--max-value-bytes", "0"], "max_value_bytes must be at least 1"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    d = str(tmp_path / "d")
    code, out = cli("-d", d, *args, "set", "c", "k", "1")
    assert code == 2 and message in out
    assert not (tmp_path / "d").exists(), "a bad option is reported before anything is created"
