"""Configuration comes from arguments, then the environment, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridstore import ConfigError
from hybridstore.config import load_node_id, redact, resolve


def test_url_precedence() -> None:
    env = {
        "HYBRIDSTORE_PRIMARY_URL": "postgresql://a/x",
        "SUPABASE_DB_URL": "postgresql://b/x",
        "DATABASE_URL": "postgresql://c/x",
    }
    assert resolve(env=env).primary_url == "postgresql://a/x"
    assert resolve(env={k: v for k, v in env.items() if k != "HYBRIDSTORE_PRIMARY_URL"}).primary_url == (
        "postgresql://b/x"
    )
    assert resolve(env={"DATABASE_URL": "postgresql://c/x"}).primary_url == "postgresql://c/x"
    assert resolve(primary_url="postgresql://arg/x", env=env).primary_url == "postgresql://arg/x"
    assert resolve(env={}).primary_url is None


def test_data_dir_node_id_and_retry_attempts(tmp_path: Path) -> None:
    env = {
        "HYBRIDSTORE_DATA_DIR": str(tmp_path),
        "HYBRIDSTORE_NODE_ID": "till-3",
        "VITE_STORAGE_SYNC_RETRY_ATTEMPTS": "5",
        "HYBRIDSTORE_PRIMARY_SCHEMA": "shop",
    }
    cfg = resolve(env=env)
    assert cfg.data_dir == tmp_path and cfg.node_id == "till-3"
    assert cfg.sync_retry_attempts == 5 and cfg.primary_schema == "shop"
    assert resolve(env={**env, "STORAGE_SYNC_RETRY_ATTEMPTS": "2"}).sync_retry_attempts == 2
    with pytest.raises(ConfigError, match="integer"):
        resolve(env={"STORAGE_SYNC_RETRY_ATTEMPTS": "three"})


def test_node_id_generated_once(tmp_path: Path) -> None:
    first = load_node_id(tmp_path)
    assert first == load_node_id(tmp_path)
    (tmp_path / "node_id").write_text("bad id!\n")
    with pytest.raises(ConfigError):
        load_node_id(tmp_path)


def test_redact_hides_passwords() -> None:
    assert redact("postgresql://user:s3cret@db.example:5432/x") == "postgresql://user:***@db.example:5432/x"
    assert "s3cret" not in redact("host=db password=s3cret dbname=x")


def test_transaction_pooler_detection() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from hybridstore.tiers.primary import PrimaryTier, is_pooled

    assert is_pooled(conninfo_to_dict("postgresql://u:p@aws-0-eu.pooler.supabase.com:6543/postgres"))
    assert is_pooled(conninfo_to_dict("postgresql://u@db.example:6543/x"))
    assert not is_pooled(conninfo_to_dict("postgresql://u@db.abc.supabase.co:5432/postgres"))
    pooled = PrimaryTier("postgresql://u@127.0.0.1:6543/x", timeout=1.0)
    direct = PrimaryTier("postgresql://u@127.0.0.1:5432/x", timeout=1.0)
    try:
        assert pooled.pooled and "statement_timeout" not in pooled._conninfo
        assert not direct.pooled and "statement_timeout=1000" in direct._conninfo
    finally:
        pooled.close()
        direct.close()
