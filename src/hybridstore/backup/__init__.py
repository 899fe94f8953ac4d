"""Backups: compressed, encrypted, verified, restorable snapshots of a store (see docs/backups.md).

``format`` (the file), ``crypto`` (keys and sealing), ``snapshot`` (where records come from), ``repository``
(the directory of backups), ``primary_store`` (backup files on the primary), ``locations`` (both targets as
one: listing, fetching, uploading, deleting, pruning), ``catalogue`` (their rows and settings on the primary),
``policy`` (targets, retention and schedule decisions), ``settings`` (runtime config), ``lines`` (record lines
as a restore reads them), ``restore`` (validation and apply), ``service`` (`BackupService`, reached as
``store.backups``).
"""

from __future__ import annotations

from .repository import BackupInfo
from .restore import RestoreReport
from .service import BackupService, VerifyReport
from .settings import BackupSettings


def missing_dependencies() -> list[str]:
    """The packages of the ``[backup]`` extra that are not installed (empty when backups can run)."""
    import importlib.util

    return [name for name in ("cryptography", "zstandard") if importlib.util.find_spec(name) is None]


__all__ = ["BackupInfo", "BackupService", "BackupSettings", "RestoreReport", "VerifyReport", "missing_dependencies"]
