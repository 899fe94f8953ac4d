from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridstore.tiers.local import LocalTier

pytest_plugins = [
    "tests.fix_db",
    "tests.fix_proxy",
    "tests.fix_cluster",
    "tests.fix_webhook",
    "tests.fix_pgbouncer",
    "tests.fix_tls",
]

_ENV = (
    "HYBRIDSTORE_PRIMARY_URL",
    "SUPABASE_DB_URL",
    "DATABASE_URL",
    "HYBRIDSTORE_DATA_DIR",
    "HYBRIDSTORE_NODE_ID",
    "HYBRIDSTORE_PRIMARY_SCHEMA",
    "HYBRIDSTORE_PRIMARY_SESSION_URL",
    "HYBRIDSTORE_PRIMARY_POOLED",
    "HYBRIDSTORE_AUTO_MIGRATE",
    "HYBRIDSTORE_ADMIN_URL",
    "STORAGE_SYNC_RETRY_ATTEMPTS",
    "VITE_STORAGE_SYNC_RETRY_ATTEMPTS",
    "STORAGE_BACKUP_INTERVAL",
    "VITE_STORAGE_BACKUP_INTERVAL",
    "STORAGE_MAX_BACKUPS",
    "VITE_STORAGE_MAX_BACKUPS",
    "HYBRIDSTORE_BACKUP_PASSPHRASE",
    "HYBRIDSTORE_BACKUP_DIR",
    "HYBRIDSTORE_ALERT_WEBHOOK_URL",
    "HYBRIDSTORE_LOG_LEVEL",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests say what they configure: the machine's own environment must not point a store elsewhere."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def local_tier(tmp_path: Path) -> Iterator[LocalTier]:
    """A local tier on a fresh SQLite file, closed after the test."""
    t = LocalTier(tmp_path / "local.db")
    yield t
    t.close()
