"""Runtime backup settings: validated, persisted in the primary's ``system_config`` (key ``backup``) and
mirrored in the repository's ``config.json``; defaults from ``STORAGE_BACKUP_INTERVAL`` (hours, 24) and
``STORAGE_MAX_BACKUPS`` (30), also with the ``VITE_`` prefix."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SOURCES = ("auto", "local", "primary")
TARGETS = ("local", "primary", "both")
# The original platform's camelCase names are accepted too.
_ALIASES = {"intervalHours": "interval_hours", "maxBackups": "max_backups"}


@dataclass(frozen=True)
class BackupSettings:
    """``enabled``: backups may be taken at all; ``automatic``: scheduled backups every ``interval_hours``
    (and emergency backups on an outage); ``max_backups``: how many manual + scheduled backups automatic
    pruning keeps; ``compress``: zstd; ``encrypt``: AES-256-GCM (needs HYBRIDSTORE_BACKUP_PASSPHRASE);
    ``source``: ``auto`` (the primary when reachable, else local), ``local`` or ``primary``; ``targets``: where
    each backup is kept — ``local`` (the node's directory), ``primary`` (its tables) or ``both`` (on a node
    without a primary, ``both`` means the directory only)."""

    enabled: bool = True
    automatic: bool = True
    interval_hours: float = 24.0
    max_backups: int = 30
    compress: bool = True
    encrypt: bool = False
    source: str = "auto"
    targets: str = "both"
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        for name in ("enabled", "automatic", "compress", "encrypt"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"backup setting {name} must be true or false, not {getattr(self, name)!r}")
        hours = self.interval_hours
        if isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 < hours <= 24 * 365:
            raise ConfigError(f"backup interval_hours must be a number of hours in (0, 8760], not {hours!r}")
        n = self.max_backups
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
            raise ConfigError(f"backup max_backups must be an integer from 1 to 100000, not {n!r}")
        if self.source not in SOURCES:
            raise ConfigError(f"backup source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.targets not in TARGETS:
            raise ConfigError(f"backup targets must be one of {', '.join(TARGETS)}, not {self.targets!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base: BackupSettings | None = None, *, strict: bool = True
    ) -> BackupSettings:
        """``base`` with the fields of ``data`` applied. Unknown names are a `ConfigError`, or ignored with
        ``strict=False`` (settings saved by a newer version)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for name, value in data.items():
            name = _ALIASES.get(name, name)
            if name not in fields:
                if not strict:
                    continue
                raise ConfigError(f"unknown backup setting {name!r}; known: {', '.join(sorted(fields))}")
            changes[name] = value
        if isinstance(changes.get("interval_hours"), int) and not isinstance(changes["interval_hours"], bool):
            changes["interval_hours"] = float(changes["interval_hours"])
        return dataclasses.replace(base or cls(), **changes)


def _env_number(env: Mapping[str, str], name: str, default: float, kind: type) -> Any:
    for key in (name, f"VITE_{name}"):
        raw = env.get(key)
        if raw:
            try:
                return kind(raw)
            except ValueError:
                raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a number'}, not {raw!r}") from None
    return default


def env_defaults(env: Mapping[str, str] | None = None) -> BackupSettings:
    env = os.environ if env is None else env
    return BackupSettings(
        interval_hours=float(_env_number(env, "STORAGE_BACKUP_INTERVAL", 24.0, float)),
        max_backups=int(_env_number(env, "STORAGE_MAX_BACKUPS", 30, int)),
    )


def load_local(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read backup settings {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def save_local(path: Path, settings: BackupSettings) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings.to_dict(), indent=2) + "\n", encoding="utf-8")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
