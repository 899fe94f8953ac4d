"""JournalTier: the last resort when SQLite itself fails. An append-only file of JSON lines, each line
``<crc32 hex> <json>``, fsync'd before the write is acknowledged. Replayed into SQLite when it works again.

A torn last line (the process died mid-append) is detected by its checksum and cut off on open; it was never
acknowledged. A bad line elsewhere is counted and reported by `health()` (the disk damaged it).
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from .. import faults
from ..errors import JournalError
from ..model import Op, StoredRow, TierName
from .base import TierHealth, TierState
from .keyrange import key_range


def _encode(op: Op) -> bytes:
    payload = json.dumps(op.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def _decode(line: bytes) -> Op | None:
    """The op in a journal line, or ``None`` if the line is damaged."""
    if len(line) < 10 or line[8:9] != b" " or not line.endswith(b"\n"):
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        return Op.from_json(json.loads(payload))
    except (ValueError, KeyError, TypeError):
        return None


def _fsync_dir(path: Path) -> None:
    """Make a file's creation or rename durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournalTier:
    """Append-only journal. Thread-safe. Keeps an in-memory index so reads see journaled writes."""

    name: TierName = "journal"

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._latest: dict[tuple[str, str], Op] = {}
        self._unsynced: list[bytes] = []  # test-only (hybridstore.faults): lines held back in memory
        self.damaged_lines = 0
        self.last_error: str | None = None
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes() if self.path.exists() else b""
        except OSError as exc:
            raise JournalError(f"cannot read journal {self.path}: {exc}") from exc
        good_end = 0
        pos = 0
        for line in data.splitlines(keepends=True):
            pos += len(line)
            op = _decode(line)
            if op is None:
                self.damaged_lines += 1
                continue
            good_end = pos
            self._remember(op)
        if good_end < len(data):
            # Whatever follows the last good line was never acknowledged (torn append): cut it off so the next
            # append starts on a clean line.
            self.damaged_lines -= len(data[good_end:].splitlines())
            try:
                with open(self.path, "r+b") as f:
                    f.truncate(good_end)
                    os.fsync(f.fileno())
            except OSError as exc:
                raise JournalError(f"cannot repair journal {self.path}: {exc}") from exc

    def _remember(self, op: Op) -> None:
        self._ops.append(op)
        k = (op.collection, op.key)
        prev = self._latest.get(k)
        if prev is None or op.hlc > prev.hlc:
            self._latest[k] = op

    # -- Tier and Journal protocols ---------------------------------------------------------------------------

    def put(self, op: Op) -> StoredRow:
        with self._lock:
            prev = self._latest.get((op.collection, op.key))
            if prev is not None and prev.hlc >= op.hlc:
                return self._as_row(prev)
            line = _encode(op)
            if faults.active and faults.JOURNAL_NO_FSYNC in faults.active:
                self._hold_back(line)  # test-only: a broken journal (see hybridstore.faults)
                self._remember(op)
                return self._as_row(op)
            try:
                new = not self.path.exists()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                    if self._fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                if new and self._fsync:
                    _fsync_dir(self.path.parent)
            except OSError as exc:
                self.last_error = str(exc)
                raise JournalError(f"cannot append to journal {self.path}: {exc}") from exc
            self._remember(op)
            return self._as_row(op)

    def _hold_back(self, line: bytes) -> None:
        """Test-only (`hybridstore.faults`): acknowledge a line without writing it (a clean `close` writes it)."""
        self._unsynced.append(line)
        faults.due(faults.JOURNAL_NO_FSYNC)

    def get(self, collection: str, key: str) -> StoredRow | None:
        with self._lock:
            op = self._latest.get((collection, key))
        return None if op is None else self._as_row(op)

    def scan(self, collection: str, *, prefix: str = "", after: str | None = None, limit: int = 100) -> list[StoredRow]:
        low, inclusive, high = key_range(prefix, after)
        with self._lock:
            keys = sorted(
                k
                for (c, k), op in self._latest.items()
                if c == collection
                and not op.deleted
                and (k >= low if inclusive else k > low)
                and (high is None or k < high)
            )[:limit]
            return [self._as_row(self._latest[(collection, k)]) for k in keys]

    def pending_rows(
        self, collection: str, *, prefix: str = "", after: str | None = None, upper: str | None = None
    ) -> list[StoredRow]:
        """Every journaled row in a key range ending at ``upper`` (inclusive), tombstones included."""
        low, inclusive, high = key_range(prefix, after)
        with self._lock:
            ops = [
                op
                for (c, k), op in self._latest.items()
                if c == collection
                and (k >= low if inclusive else k > low)
                and (high is None or k < high)
                and (upper is None or k <= upper)
            ]
        return [self._as_row(op) for op in sorted(ops, key=lambda o: o.key)]

    def health(self) -> TierHealth:
        with self._lock:
            entries = len(self._ops)
        state: TierState = "degraded" if self.damaged_lines or self.last_error else "healthy"
        detail = f"{self.damaged_lines} damaged line(s)" if self.damaged_lines else (self.last_error or "")
        return TierHealth("journal", state, detail, extra={"entries": entries, "path": str(self.path)})

    def close(self) -> None:
        if self._unsynced:  # test-only (hybridstore.faults): a clean close writes what was held back
            with self._lock, open(self.path, "ab") as f:
                f.write(b"".join(self._unsynced))
                self._unsynced.clear()

    # -- replay -----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ops)

    def entries(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def clear(self, replayed: int) -> None:
        """Forget the first ``replayed`` entries (they are now safe in SQLite) by rewriting the journal with the
        rest. Atomic: a crash leaves either the old or the new journal, and replay is idempotent."""
        with self._lock:
            rest = self._ops[replayed:]
            tmp = self.path.with_suffix(".tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(b"".join(_encode(op) for op in rest))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                _fsync_dir(self.path.parent)
            except OSError as exc:
                raise JournalError(f"cannot rewrite journal {self.path}: {exc}") from exc
            self._ops = []
            self._latest = {}
            self._unsynced.clear()  # test-only (hybridstore.faults): the rewrite holds them now
            for op in rest:
                self._remember(op)

    @staticmethod
    def _as_row(op: Op) -> StoredRow:
        return StoredRow(
            op.collection, op.key, op.value_json, op.base_version, op.hlc, op.origin, op.created_at or time.time()
        )


if TYPE_CHECKING:  # mypy checks that the tier fulfils every protocol it claims
    from .base import Journal, PendingRows, Tier

    def _protocols(tier: JournalTier) -> tuple[Tier, Journal, PendingRows]:
        return tier, tier, tier
