"""Backup files on the primary (migration 0005): the ``primary`` target of the backup service, so any node can
list, verify, download and restore any backup, and losing a node's disk loses no backup.

A file is stored in ``backup_chunks`` in blocks of `BLOCK` bytes under a fresh upload id, in one transaction:
the blocks are streamed from disk with ``COPY`` (memory stays flat), then one statement creates or updates the
backup's ``system_backups`` row pointing at that upload (``upload_id``, ``stored_*``) and deletes the blocks of
the copy it replaces. Nothing is visible before the commit, so an interrupted upload leaves nothing behind and
never looks complete. A download reads the blocks one by one into a file and checks its size and SHA-256
against the row; the caller then verifies the backup completely before it registers or uses it.

Every statement goes through the gateway (admitted by the circuit, bounded by the primary timeout, its outcome
recorded). Unlike the catalogue, these methods raise: `UnavailableError` when the primary cannot be reached,
`BackupNotFoundError` when the primary holds no copy, `BackupTamperedError` when the stored bytes are damaged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import BackupNotFoundError, BackupTamperedError
from .catalogue import row_values
from .repository import BackupInfo

if TYPE_CHECKING:
    from ..node.gateway import PrimaryGateway

BLOCK = 1 << 20  # bytes per stored chunk
BLOCKS_PER_READ = 4  # chunks per statement of a download: fewer round trips, memory still a few MiB

_COLUMNS = (
    "id, kind, label, description, manifest, size_bytes, verified, pinned, "
    "extract(epoch FROM created_at)::float8, stored_by, extract(epoch FROM stored_at)::float8"
)
_COPY_CHUNKS = "COPY {schema}.backup_chunks (upload_id, idx, backup_id, data) FROM STDIN (FORMAT BINARY)"
_CHUNK_TYPES = ("uuid", "int4", "text", "bytea")
# After the blocks, in the same transaction: the row says where the complete copy is; a replaced copy goes.
_STORE = (
    "WITH stored AS (INSERT INTO {schema}.system_backups (id, kind, label, description, manifest, size_bytes, "
    "verified, pinned, created_at, upload_id, stored_chunks, stored_bytes, stored_sha256, stored_by, stored_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), %s, %s, %s, %s, %s, now()) "
    "ON CONFLICT (id) DO UPDATE SET verified = excluded.verified, pinned = excluded.pinned, "
    "size_bytes = excluded.size_bytes, upload_id = excluded.upload_id, stored_chunks = excluded.stored_chunks, "
    "stored_bytes = excluded.stored_bytes, stored_sha256 = excluded.stored_sha256, "
    "stored_by = excluded.stored_by, stored_at = excluded.stored_at RETURNING id), "
    "replaced AS (DELETE FROM {schema}.backup_chunks WHERE backup_id = %s AND upload_id <> %s) "
    "SELECT id FROM stored"
)
_SELECT_CHUNKS = (
    "SELECT idx, data FROM {schema}.backup_chunks WHERE upload_id = %s AND idx BETWEEN %s AND %s ORDER BY idx"
)


def read_blocks(f: BinaryIO, size: int) -> Iterator[bytes]:
    """The file's bytes in blocks of ``size`` (the last one shorter)."""
    while block := f.read(size):
        yield block


class PrimaryBackupStore:
    """The primary as a place to keep backup files (see the module docstring)."""

    def __init__(self, gateway: PrimaryGateway, node_id: str, *, block_size: int = BLOCK) -> None:
        self._gateway = gateway
        self._node_id = node_id
        self.block_size = block_size

    def available(self) -> bool:
        """Is the primary configured and its circuit closed (worth asking now)?"""
        return self._gateway.allow()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._gateway.call(lambda p: p.query(sql, params))

    def _query_binary(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._gateway.call(lambda p: p.query_binary(sql, params))

    # -- listing ----------------------------------------------------------------------------------------------

    def stored(self, ids: Sequence[str] | None = None) -> list[BackupInfo]:
        """Every backup with a complete copy on the primary (``ids``: only these), as `BackupInfo` with
        ``locations=["primary"]`` and no path."""
        sql = f"SELECT {_COLUMNS} FROM {{schema}}.system_backups WHERE upload_id IS NOT NULL"
        params: tuple[Any, ...] = ()
        if ids is not None:
            sql += " AND id = ANY(%s)"
            params = (list(ids),)
        return [_info_from_row(r) for r in self._query(sql, params)]

    # -- upload -----------------------------------------------------------------------------------------------

    def upload(self, path: Path, info: BackupInfo) -> None:
        """Store the (verified) file at ``path`` on the primary, in one transaction; when it returns, the copy is
        complete. A copy stored before (e.g. before a passphrase rotation) is replaced atomically."""
        upload_id = uuid.uuid4()
        sha = hashlib.sha256()
        sent = [0, 0]  # blocks, bytes

        def rows() -> Iterator[tuple[Any, ...]]:
            with open(path, "rb") as f:
                for block in read_blocks(f, self.block_size):
                    sha.update(block)
                    yield (upload_id, sent[0], info.id, block)
                    sent[0] += 1
                    sent[1] += len(block)

        def store() -> tuple[str, tuple[Any, ...]]:
            stored = (upload_id, sent[0], sent[1], sha.hexdigest(), self._node_id)
            return _STORE, (*row_values(info), *stored, info.id, upload_id)

        blocks = -(-path.stat().st_size // self.block_size)
        self._gateway.call(
            # each block within the primary timeout (the tier's watchdog); the whole within one timeout per block
            lambda p: p.copy_in(_COPY_CHUNKS, _CHUNK_TYPES, rows(), store, budget=p.timeout * (2 + blocks))
        )

    # -- download ---------------------------------------------------------------------------------------------

    def download(self, backup_id: str, target: Path) -> None:
        """Write the primary's copy of a backup to ``target`` (fsync'd), checking its size and SHA-256 against
        what the upload recorded. ``target`` is removed if anything fails. The caller verifies the file."""
        rows = self._query(
            "SELECT upload_id, stored_chunks, stored_bytes, stored_sha256 FROM {schema}.system_backups "
            "WHERE id = %s AND upload_id IS NOT NULL",
            (backup_id,),
        )
        if not rows:
            raise BackupNotFoundError(f"backup {backup_id} is not stored on the primary")
        upload_id, chunks, size, expected = rows[0]
        sha = hashlib.sha256()
        written = 0
        try:
            with open(target, "wb") as out:
                for first in range(0, chunks, BLOCKS_PER_READ):
                    wanted = list(range(first, min(chunks, first + BLOCKS_PER_READ)))
                    found = self._query_binary(_SELECT_CHUNKS, (upload_id, wanted[0], wanted[-1]))
                    if [int(r[0]) for r in found] != wanted:
                        missing = sorted(set(wanted) - {int(r[0]) for r in found})
                        raise BackupTamperedError(
                            f"backup {backup_id} on the primary is incomplete: chunk(s) {missing} of {chunks} missing"
                        )
                    for _, block in found:
                        sha.update(block)
                        written += len(block)
                        out.write(block)
                    del found  # memory stays at one read's blocks
                out.flush()
                os.fsync(out.fileno())
            if written != size or sha.hexdigest() != expected:
                raise BackupTamperedError(
                    f"backup {backup_id} on the primary is damaged: its bytes do not match the checksum recorded "
                    "when it was uploaded (delete it, or restore another backup)"
                )
        except BaseException:
            with contextlib.suppress(OSError):
                target.unlink()
            raise

    # -- removing ---------------------------------------------------------------------------------------------

    def delete(self, ids: Sequence[str]) -> None:
        """Remove these backups from the primary altogether: their files and their rows."""
        if ids:
            self._query(
                "WITH gone AS (DELETE FROM {schema}.system_backups WHERE id = ANY(%s)) "
                "DELETE FROM {schema}.backup_chunks WHERE backup_id = ANY(%s)",
                (list(ids), list(ids)),
            )

    def drop_files(self, ids: Sequence[str]) -> None:
        """Remove only the stored files of these backups (retention of the primary target); their rows stay
        as listings of the copies nodes still hold, and the catalogue drops a row when no node does."""
        if ids:
            self._query(
                "WITH cleared AS (UPDATE {schema}.system_backups SET upload_id = NULL, stored_chunks = NULL, "
                "stored_bytes = NULL, stored_sha256 = NULL, stored_by = NULL, stored_at = NULL WHERE id = ANY(%s)) "
                "DELETE FROM {schema}.backup_chunks WHERE backup_id = ANY(%s)",
                (list(ids), list(ids)),
            )

    def set_flags(self, backup_id: str, **flags: bool) -> None:
        """Set ``verified`` and/or ``pinned`` on the primary's row of a backup."""
        for name, value in flags.items():
            if name not in ("verified", "pinned"):
                raise ValueError(f"unknown backup flag {name!r}")
            self._query(f"UPDATE {{schema}}.system_backups SET {name} = %s WHERE id = %s", (value, backup_id))


def _info_from_row(r: Sequence[Any]) -> BackupInfo:
    bid, kind, label, description, manifest, size, verified, pinned, created_at, stored_by, stored_at = r
    m: dict[str, Any] = manifest if isinstance(manifest, dict) else {}
    return BackupInfo(
        id=bid,
        kind=kind or "manual",
        label=label or "",
        description=description or "",
        created_at=float(m.get("created_at", created_at or 0.0)),
        source=str(m.get("source", "")),
        node_id=str(m.get("node_id", "")),
        records=int(m.get("records", 0)),
        pending_ops=int(m.get("pending_ops", 0)),
        collections={str(k): int(v) for k, v in dict(m.get("collections", {})).items()},
        content_bytes=int(m.get("content_bytes", 0)),
        size_bytes=int(size or 0),
        compressed=bool(m.get("compressed", False)),
        encrypted=bool(m.get("encrypted", False)),
        verified=bool(verified),
        pinned=bool(pinned),
        locations=["primary"],
        extra={"stored_by": stored_by, "stored_at": stored_at},
    )
