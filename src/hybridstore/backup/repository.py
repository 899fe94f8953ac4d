"""The backup repository: a directory of self-describing backup files (``<id>.hsb``), each with a small
sidecar (``<id>.json``: verified, pinned), plus temporary files (``.tmp-*``) that only a backup in progress
owns. A backup is registered by one atomic rename after it was written, fsync'd and verified, so a crash
leaves either a complete backup or a temporary file that the next start removes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackupError, BackupNotFoundError, HybridStoreError
from .format import read_header

log = logging.getLogger("hybridstore.backup")
SUFFIX = ".hsb"
TMP_PREFIX = ".tmp-"


@dataclass
class BackupInfo:
    """What is known about one backup (plain data for the CLI, UI and API). ``locations``: where its file is
    kept, ``"local"`` (this node's directory; ``path``) and/or ``"primary"``."""

    id: str
    kind: str
    label: str
    description: str
    created_at: float
    source: str
    node_id: str
    records: int
    pending_ops: int
    collections: dict[str, int]
    content_bytes: int
    size_bytes: int
    compressed: bool
    encrypted: bool
    verified: bool = False
    verified_at: float | None = None
    pinned: bool = False
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    locations: list[str] = field(default_factory=lambda: ["local"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_header(cls, header: dict[str, Any], path: Path, meta: dict[str, Any]) -> BackupInfo:
        m = header["manifest"]
        return cls(
            id=str(header["backup_id"]),
            kind=str(header.get("kind", "manual")),
            label=str(header.get("label", "")),
            description=str(header.get("description", "")),
            created_at=float(header.get("created_at", 0.0)),
            source=str(header.get("source", "local")),
            node_id=str(header.get("node_id", "")),
            records=int(m.get("records", 0)),
            pending_ops=int(m.get("pending_ops", 0)),
            collections={name: int(c.get("records", 0)) for name, c in m.get("collections", {}).items()},
            content_bytes=int(m.get("content_bytes", 0)),
            size_bytes=path.stat().st_size,
            compressed=header.get("compression", {}).get("name") == "zstd",
            encrypted=header.get("cipher", {}).get("name") != "none",
            verified=bool(meta.get("verified", False)),
            verified_at=meta.get("verified_at"),
            pinned=bool(meta.get("pinned", False)),
            path=str(path),
            # as last known here; the service corrects it from the primary's own list when it can ask
            locations=["local", "primary"] if meta.get("uploaded") else ["local"],
        )


def resolve_id(ref: str, ids: Collection[str], where: str) -> str:
    """The one id of ``ids`` that ``ref`` names (the id itself, or a unique prefix of at least 4 characters)."""
    if ref in ids:
        return ref
    found = sorted(i for i in ids if len(ref) >= 4 and i.startswith(ref))
    if len(found) == 1:
        return found[0]
    if found:
        raise BackupError(f"backup id {ref!r} is ambiguous: {', '.join(found[:5])}")
    raise BackupNotFoundError(f"no backup {ref!r} in {where}; see `hybridstore backup list`")


class Repository:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, backup_id: str) -> Path:
        return self.dir / f"{backup_id}{SUFFIX}"

    def tmp_path(self, backup_id: str, suffix: str) -> Path:
        return self.dir / f"{TMP_PREFIX}{backup_id}{suffix}"

    def remove_stale_temporaries(self) -> int:
        """Delete what interrupted backups left (the data directory's lock says no one else is writing)."""
        removed = 0
        for p in self.dir.glob(f"{TMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
        if removed:
            log.warning("removed %d temporary file(s) of interrupted backups", removed)
        return removed

    def ids(self) -> list[str]:
        return sorted(p.name[: -len(SUFFIX)] for p in self.dir.glob(f"*{SUFFIX}") if not p.name.startswith("."))

    def resolve(self, ref: str) -> str:
        """A full backup id from an id or a unique prefix of one (at least 4 characters)."""
        return resolve_id(ref, self.ids(), str(self.dir))

    def meta(self, backup_id: str) -> dict[str, Any]:
        try:
            data = json.loads(self.dir.joinpath(f"{backup_id}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def set_meta(self, backup_id: str, **changes: Any) -> None:
        data = self.meta(backup_id) | changes
        target = self.dir / f"{backup_id}.json"
        tmp = self.tmp_path(backup_id, ".json")
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        os.replace(tmp, target)

    def info(self, backup_id: str) -> BackupInfo:
        path = self.path(backup_id)
        if not path.exists():
            raise BackupNotFoundError(f"no backup {backup_id!r} in {self.dir}")
        return BackupInfo.from_header(read_header(path), path, self.meta(backup_id))

    def list(self) -> list[BackupInfo]:
        """Every backup, newest first. A file whose header is damaged is listed as unverified with its error."""
        out: list[BackupInfo] = []
        for backup_id in self.ids():
            try:
                out.append(self.info(backup_id))
            except HybridStoreError as exc:
                path = self.path(backup_id)
                size = path.stat().st_size if path.exists() else 0
                out.append(
                    BackupInfo(
                        backup_id,
                        "unknown",
                        "",
                        "",
                        0.0,
                        "",
                        "",
                        0,
                        0,
                        {},
                        0,
                        size,
                        False,
                        False,
                        path=str(path),
                        extra={"error": str(exc)},
                    )
                )
        return sorted(out, key=lambda b: (b.created_at, b.id), reverse=True)

    def publish(self, tmp: Path, backup_id: str) -> Path:
        """Register a complete, verified backup file: atomic rename, then fsync of the directory."""
        target = self.path(backup_id)
        if target.exists():
            raise BackupError(f"backup {backup_id} already exists in the repository")
        os.replace(tmp, target)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return target

    def delete(self, backup_id: str) -> None:
        self.path(backup_id).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.dir.joinpath(f"{backup_id}.json").unlink()
