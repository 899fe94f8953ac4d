"""The primary's side of a node's backups: one row per backup in ``system_backups`` (metadata and a manifest
summary; the file itself is stored by `primary_store` when the primary is a target) and the backup settings in
``system_config`` under the key ``backup``.

Best effort by design: backups work with the primary down, so every method does nothing while the primary's
circuit is not closed, and a failing statement is logged, never raised. The service calls `sync` again until
it succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import HybridStoreError
from .repository import BackupInfo

if TYPE_CHECKING:
    from ..node.gateway import PrimaryGateway

log = logging.getLogger("hybridstore.backup")

_UPSERT = (
    "INSERT INTO {schema}.system_backups (id, kind, label, description, manifest, size_bytes, verified, pinned, "
    "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s)) "
    "ON CONFLICT (id) DO UPDATE SET verified = excluded.verified, pinned = excluded.pinned, "
    "size_bytes = excluded.size_bytes"
)


def row_values(b: BackupInfo) -> tuple[Any, ...]:
    """A backup's row values, in the order of `_UPSERT`'s columns: id, kind, label, description, manifest
    summary, size, verified, pinned, created_at (epoch seconds)."""
    from psycopg.types.json import Jsonb

    manifest = {
        "node_id": b.node_id,
        "source": b.source,
        "records": b.records,
        "pending_ops": b.pending_ops,
        "collections": b.collections,
        "content_bytes": b.content_bytes,
        "created_at": b.created_at,  # exact: the column's timestamp rounds to microseconds
        "compressed": b.compressed,
        "encrypted": b.encrypted,
    }
    return (b.id, b.kind, b.label, b.description, Jsonb(manifest), b.size_bytes, b.verified, b.pinned, b.created_at)


class PrimaryCatalogue:
    def __init__(self, gateway: PrimaryGateway, node_id: str) -> None:
        self._gateway = gateway
        self._node_id = node_id

    def available(self) -> bool:
        """Is the primary configured and its circuit closed (worth asking now)?"""
        return self._gateway.allow()

    def _query(self, sql: str, params: Sequence[Any] | None = None) -> list[Any]:
        """One statement through the gateway (its outcome counts in the circuit like any primary call)."""
        return self._gateway.call(lambda p: p.query(sql, params or ()))

    def load_settings(self) -> dict[str, Any] | None:
        if not self.available():
            return None
        try:
            rows = self._query("SELECT settings FROM {schema}.system_config WHERE key = 'backup'")
        except HybridStoreError as exc:
            log.debug("cannot read backup settings from the primary: %s", exc)
            return None
        return rows[0][0] if rows and isinstance(rows[0][0], dict) else None

    def save_settings(self, data: dict[str, Any]) -> None:
        if not self.available():
            return
        from psycopg.types.json import Jsonb

        try:
            self._query(
                "INSERT INTO {schema}.system_config (key, settings, updated_at) VALUES ('backup', %s, now()) "
                "ON CONFLICT (key) DO UPDATE SET settings = excluded.settings, updated_at = now()",
                (Jsonb(data),),
            )
        except HybridStoreError as exc:
            log.warning("backup settings not saved on the primary (kept locally): %s", exc)

    def sync(self, backups: Sequence[BackupInfo]) -> bool:
        """Upsert a row for each backup in this node's directory and drop rows of its backups that are gone
        from it and have no copy on the primary either. True when the primary is up to date."""
        if not self.available():
            return False
        readable = [b for b in backups if b.kind != "unknown"]
        try:
            for b in readable:
                self._query(_UPSERT, row_values(b))
            self._query(
                "DELETE FROM {schema}.system_backups WHERE manifest->>'node_id' = %s AND NOT (id = ANY(%s)) "
                "AND upload_id IS NULL",
                (self._node_id, [b.id for b in backups]),
            )
        except HybridStoreError as exc:
            log.debug("backup catalogue not mirrored to the primary: %s", exc)
            return False
        return True

    def forget(self, ids: Sequence[str]) -> None:
        """Drop the rows of backups gone from this node's directory, unless the primary stores their files."""
        if not ids or not self.available():
            return
        try:
            self._query("DELETE FROM {schema}.system_backups WHERE id = ANY(%s) AND upload_id IS NULL", (list(ids),))
        except HybridStoreError as exc:
            log.debug("deleted backups still listed on the primary: %s", exc)
