"""The node's configuration as the API shows it, secrets masked, and the few settings that can change while it runs.

**Shown** (``GET /api/v1/config``): every `StoreConfig` field as this node uses it, the HTTP service's own limits,
and whether each secret is set — never a secret itself: passwords in any URL (``postgresql://u:***@h/db``,
``password=***``; the primary's, its session URL), the alert webhook's path and query (they often carry a
token), the admin token, the backup passphrase, values of ``extra``. A conflict-strategy callable shows as
``"<callable>"``.

**Changed at run time** (``PUT /api/v1/config``, admin, audited, ``"confirm": "config"``): `RUNTIME` — the
``hybridstore`` log level, the heartbeat interval, the change-feed poll interval and the number of refusals after
which a write becomes a dead letter. They apply to this node at once and last until it restarts (set the
environment or the options for good); every other setting needs a restart. Backup settings are shared by every
node and have their own call, ``PUT /api/v1/backups/config``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..config import redact
from ..errors import ValidationError

if TYPE_CHECKING:
    from ..store import HybridStore

MASK = "***"
SECRET_WORDS = ("password", "passphrase", "token", "secret")
RUNTIME = ("log_level", "heartbeat_interval", "pull_interval", "sync_retry_attempts")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
PASSPHRASE_ENV = "HYBRIDSTORE_BACKUP_PASSPHRASE"


def mask_webhook(url: str) -> str:
    """Scheme and host only: a webhook's path or query is often its secret (``/services/T0/B0/XXXX``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    rest = "/" + MASK if (parts.path.strip("/") or parts.query) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _plain(name: str, value: Any) -> Any:
    if value is None:
        return None
    if any(word in name.lower() for word in SECRET_WORDS):
        return MASK
    if callable(value):
        return "<callable>"
    if isinstance(value, Mapping):
        return {str(k): _plain(str(k), v) for k, v in value.items()}
    if isinstance(value, str):
        return redact(value)  # any URL with a password (the primary's, its session URL, …)
    if isinstance(value, int | float | bool):
        return value
    return str(value)


def store_config(store: HybridStore) -> dict[str, Any]:
    """Every `StoreConfig` field, secrets masked (see the module docstring)."""
    cfg = store.config
    shown: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "primary_url" and value:
            shown[f.name] = redact(value)
        elif f.name == "alert_webhook_url" and value:
            shown[f.name] = mask_webhook(value)
        elif f.name == "extra":
            shown[f.name] = {str(k): MASK for k in value}
        else:
            shown[f.name] = _plain(f.name, value)
    shown["node_id"] = store.node_id  # as used (the configured one, else the persisted one)
    return shown


def runtime_settings(store: HybridStore) -> dict[str, Any]:
    """The current values of the settings `apply_runtime` changes."""
    node = store.node
    level = logging.getLogger("hybridstore").getEffectiveLevel()
    puller = node.puller
    return {
        "log_level": logging.getLevelName(level).lower(),
        "heartbeat_interval": node.heartbeat.interval,
        "pull_interval": puller.poll_interval if puller is not None else None,
        "sync_retry_attempts": node.replayer.max_rejections,
    }


def check_runtime(changes: Mapping[str, Any], store: HybridStore) -> None:
    """Refuse a change that cannot apply (`ValidationError`), before anything is changed."""
    unknown = sorted(set(changes) - set(RUNTIME))
    if unknown:
        raise ValidationError(f"{', '.join(unknown)} cannot change while the node runs: {', '.join(RUNTIME)} can")
    if "log_level" in changes and str(changes["log_level"]).lower() not in LOG_LEVELS:
        raise ValidationError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if "pull_interval" in changes and store.node.puller is None:
        raise ValidationError("this node does not pull from a primary: pull_interval does not apply")


def apply_runtime(store: HybridStore, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply run-time changes (checked first, all or none); returns the settings now."""
    check_runtime(changes, store)
    node = store.node
    if "log_level" in changes:
        logging.getLogger("hybridstore").setLevel(str(changes["log_level"]).upper())
    if "heartbeat_interval" in changes:
        node.heartbeat.interval = float(changes["heartbeat_interval"])
        node.heartbeat.worker.wake()  # the new interval counts from now, not after the old wait
    if "pull_interval" in changes and node.puller is not None:
        node.puller.poll_interval = float(changes["pull_interval"])
    if "sync_retry_attempts" in changes:
        node.replayer.max_rejections = int(changes["sync_retry_attempts"])
    return runtime_settings(store)


def effective_config(store: HybridStore, web: Mapping[str, Any]) -> dict[str, Any]:
    """What ``GET /api/v1/config`` answers: the store's configuration, the HTTP service's (``web``), which secrets
    are set, the run-time settings and their names."""
    return {
        "store": store_config(store),
        "web": {k: (MASK if v is not None and "token" in k else v) for k, v in web.items()},
        "secrets": {"backup_passphrase": MASK if os.environ.get(PASSPHRASE_ENV) else None},
        "runtime": runtime_settings(store),
        "runtime_settable": list(RUNTIME),
        "backups": "/api/v1/backups/config",
    }
