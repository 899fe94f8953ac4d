"""Store configuration: explicit arguments first, then the environment, then defaults.

Environment: ``HYBRIDSTORE_PRIMARY_URL`` (else ``SUPABASE_DB_URL``, else ``DATABASE_URL``),
``HYBRIDSTORE_DATA_DIR``, ``HYBRIDSTORE_NODE_ID``, ``HYBRIDSTORE_PRIMARY_SCHEMA``,
``STORAGE_SYNC_RETRY_ATTEMPTS`` (also ``VITE_STORAGE_SYNC_RETRY_ATTEMPTS``), ``HYBRIDSTORE_ALERT_WEBHOOK_URL``,
``HYBRIDSTORE_WRITE_MODE``, ``HYBRIDSTORE_READ_POLICY``, ``HYBRIDSTORE_MAX_VALUE_BYTES``,
``HYBRIDSTORE_CONFLICT_STRATEGY`` (the default strategy), ``HYBRIDSTORE_CONFLICT_STRATEGIES``
(``"orders=manual,carts=merge"``), ``HYBRIDSTORE_LOG_LEVEL`` (see `apply_log_level`),
``HYBRIDSTORE_AUTO_MIGRATE`` (``0`` / ``1``: `StoreConfig.migrate`), ``HYBRIDSTORE_PRIMARY_SESSION_URL`` (a
session-keeping address used only for LISTEN), ``HYBRIDSTORE_PRIMARY_POOLED`` (``0`` / ``1``: force pooled mode).
An option passed to `resolve` wins over its variable; a variable that is set but empty counts as unset.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from .errors import ConfigError
from .merge import STRATEGIES, StrategyTable
from .validation import DEFAULT_MAX_VALUE_BYTES

WriteMode = Literal["write_through", "local_first"]
ReadPolicy = Literal["primary_first", "local_first"]
NODE_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
DEFAULT_DATA_DIR = "./data"


@dataclass(frozen=True)
class StoreConfig:
    primary_url: str | None = None
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    node_id: str | None = None
    primary_schema: str = "hybridstore"
    primary_pooled: bool | None = None  # None: detect a transaction-mode pooler (from the URL, else its behaviour)
    # An address that keeps one server session per client (Supabase's direct or session-pooler address), used
    # only for LISTEN when primary_url goes through a transaction pooler: notifications stay real time.
    primary_session_url: str | None = None
    migrate: bool = True  # apply the primary's migrations when its schema is behind (needs DDL privileges)
    write_mode: WriteMode = "write_through"
    read_policy: ReadPolicy = "primary_first"
    primary_timeout: float = 2.0
    synchronous: str = "NORMAL"
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    batch_size: int = 1000
    coalesce: bool = True  # a write replaces its key's queued op not yet sent (one push per key after an outage)
    retry_base: float = 0.05
    retry_cap: float = 5.0
    sync_retry_attempts: int = 3
    circuit_failures: int = 2
    circuit_reset: float = 0.5
    circuit_reset_max: float = 10.0
    background: bool = True
    conflict_strategy: Any = "last_wins"  # "last_wins" | "merge" | "manual" | callable(base, local, remote)
    conflict_strategies: Mapping[str, Any] = field(default_factory=dict)  # per collection
    pull: bool = True  # keep the local copy up to date from the primary's change feed
    pull_interval: float = 2.0  # seconds between polls of the change feed (notifications wake it sooner)
    listen: bool = True  # LISTEN for change notifications (off behind a transaction-mode pooler)
    backups: bool = True  # with background work: scheduled and emergency backups (needs the [backup] extra)
    extra: Mapping[str, str] = field(default_factory=dict)
    # recovery service (health monitor, alerts, strategies): see hybridstore.recovery
    auto_recover: bool = True
    health_interval: float = 0.5
    alert_webhook_url: str | None = None
    low_storage_bytes: int = 100 * 1024 * 1024
    sync_failure_after: float = 300.0
    conflicts_alert_at: int = 100
    quick_check_interval: float = 300.0
    heartbeat_interval: float = 15.0  # seconds between this node's heartbeat rows on the primary (`store.nodes()`)

    def __post_init__(self) -> None:
        if self.write_mode not in ("write_through", "local_first"):
            raise ConfigError(f"write_mode must be 'write_through' or 'local_first', not {self.write_mode!r}")
        if self.read_policy not in ("primary_first", "local_first"):
            raise ConfigError(f"read_policy must be 'primary_first' or 'local_first', not {self.read_policy!r}")
        if self.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {self.synchronous!r}")
        StrategyTable(self.conflict_strategy, self.conflict_strategies)  # validates
        for name in (
            "primary_timeout",
            "retry_base",
            "retry_cap",
            "circuit_reset",
            "circuit_reset_max",
            "pull_interval",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("max_value_bytes", "batch_size", "circuit_failures", "sync_retry_attempts"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("health_interval", "sync_failure_after", "quick_check_interval", "heartbeat_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if self.low_storage_bytes < 0 or self.conflicts_alert_at < 1:
            raise ConfigError("low_storage_bytes must be >= 0 and conflicts_alert_at >= 1")
        if self.alert_webhook_url is not None:
            check_webhook_url(self.alert_webhook_url)
        if self.node_id is not None and not NODE_ID_RE.fullmatch(self.node_id):
            raise ConfigError(f"invalid node id {self.node_id!r}: 1-64 letters, digits, '_' or '-'")


def check_webhook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"alert webhook URL must be an http:// or https:// URL, not {url!r}")
    return url


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    for key in (name, f"VITE_{name}"):
        raw = env.get(key)
        if raw:
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"{key} must be an integer, not {raw!r}") from None
    return default


def parse_strategies(text: str, *, source: str = "HYBRIDSTORE_CONFLICT_STRATEGIES") -> dict[str, str]:
    """``"orders=manual, carts=merge"`` → ``{"orders": "manual", "carts": "merge"}``; ``source`` names where the
    text came from in the `ConfigError` a malformed entry raises."""
    table: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        collection, sep, strategy = (part.strip() for part in item.partition("="))
        if not sep or not collection or not strategy:
            raise ConfigError(f"{source}: {item.strip()!r} is not COLLECTION=STRATEGY (e.g. orders=manual,carts=merge)")
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"{source}: strategy {strategy!r} for {collection!r} must be one of {', '.join(STRATEGIES)}"
            )
        if collection in table:
            raise ConfigError(f"{source}: collection {collection!r} is named twice")
        table[collection] = strategy
    return table


def _env_choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = env.get(name, "").strip()
    if raw and raw not in choices:
        raise ConfigError(f"{name} must be {' or '.join(choices)}, not {raw!r}")
    return raw or None


def _env_flag(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true or false), not {raw!r}")


def _env_settings(env: Mapping[str, str], options: dict[str, object]) -> None:
    """Fill ``options`` from the environment where the caller did not pass them."""
    found: dict[str, object | None] = {
        "write_mode": _env_choice(env, "HYBRIDSTORE_WRITE_MODE", ("write_through", "local_first")),
        "read_policy": _env_choice(env, "HYBRIDSTORE_READ_POLICY", ("primary_first", "local_first")),
        "conflict_strategy": _env_choice(env, "HYBRIDSTORE_CONFLICT_STRATEGY", STRATEGIES),
        "conflict_strategies": parse_strategies(env.get("HYBRIDSTORE_CONFLICT_STRATEGIES", "")) or None,
        "alert_webhook_url": env.get("HYBRIDSTORE_ALERT_WEBHOOK_URL") or None,
        "primary_schema": env.get("HYBRIDSTORE_PRIMARY_SCHEMA") or None,
        "primary_session_url": env.get("HYBRIDSTORE_PRIMARY_SESSION_URL") or None,
        "migrate": _env_flag(env, "HYBRIDSTORE_AUTO_MIGRATE"),
        "primary_pooled": _env_flag(env, "HYBRIDSTORE_PRIMARY_POOLED"),
    }
    raw = env.get("HYBRIDSTORE_MAX_VALUE_BYTES", "").strip()
    if raw:
        try:
            found["max_value_bytes"] = int(raw)
        except ValueError:
            raise ConfigError(f"HYBRIDSTORE_MAX_VALUE_BYTES must be a number of bytes, not {raw!r}") from None
    for name, value in found.items():
        if value is not None and name not in options:
            options[name] = value


def resolve(
    *,
    primary_url: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    node_id: str | None = None,
    env: Mapping[str, str] | None = None,
    **options: object,
) -> StoreConfig:
    env = os.environ if env is None else env
    if isinstance(data_dir, str) and not data_dir.strip():
        raise ConfigError("data_dir is empty: pass a directory (or None for $HYBRIDSTORE_DATA_DIR, else ./data)")
    url = primary_url or env.get("HYBRIDSTORE_PRIMARY_URL") or env.get("SUPABASE_DB_URL") or env.get("DATABASE_URL")
    directory = Path(data_dir or env.get("HYBRIDSTORE_DATA_DIR") or DEFAULT_DATA_DIR)
    options.setdefault("sync_retry_attempts", _env_int(env, "STORAGE_SYNC_RETRY_ATTEMPTS", 3))
    _env_settings(env, options)
    try:
        return StoreConfig(
            primary_url=url or None,
            data_dir=directory,
            node_id=node_id or env.get("HYBRIDSTORE_NODE_ID") or None,
            **options,  # type: ignore[arg-type]
        )
    except TypeError as exc:
        raise ConfigError(f"unknown option: {exc}") from None


def load_node_id(data_dir: Path) -> str:
    """The node id persisted in ``data_dir/node_id``, created once."""
    path = data_dir / "node_id"
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        if not NODE_ID_RE.fullmatch(existing):
            raise ConfigError(f"{path} holds an invalid node id {existing!r}")
        return existing
    node = "n" + uuid.uuid4().hex[:12]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return node


def redact(url: str) -> str:
    """The URL without its password, for logs and status output."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", re.sub(r"password=\S+", "password=***", url))


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def apply_log_level(level: str | None = None, env: Mapping[str, str] | None = None) -> None:
    """Set the ``hybridstore`` logger's level from ``level`` or ``HYBRIDSTORE_LOG_LEVEL`` (nothing if neither)."""
    env = os.environ if env is None else env
    raw = level or env.get("HYBRIDSTORE_LOG_LEVEL")
    if not raw:
        return
    if raw.upper() not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {raw!r}: use debug, info, warning, error or critical")
    logging.getLogger("hybridstore").setLevel(raw.upper())
