"""Restore: check a backup's content, compare it with the store's current state, write what differs through
the store's normal write path (queued writes that reach the primary and the other nodes).

A restore reads the backup twice: a validation pass (every chunk authenticated, every section's count and
SHA-256, every selected line valid JSON of the right shape, every key and value acceptable to the store)
before anything is written, then the apply pass. So a damaged or tampered backup changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BackupTamperedError, LocalStoreError, PrimaryUnavailableError
from ..errors import ValidationError as StoreValidationError
from ..validation import check_collection, check_key, encode_value
from .format import BackupReader

if TYPE_CHECKING:
    from ..node.core import BulkWriter, NodeCore

Progress = Callable[[int, int], None]
BATCH = 1000
_encode_all = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
ACTIONS = ("added", "overwritten", "skipped", "unchanged")


@dataclass
class RestoreReport:
    """What a restore did (or, with ``dry_run``, would do): counts per collection of records ``added`` (absent
    now), ``overwritten`` (present with another value), ``skipped`` (present, ``overwrite=False``) and
    ``unchanged`` (present with the same value: nothing to write), and a per-key diff (first ``diff_limit``)."""

    backup_id: str
    dry_run: bool
    overwrite: bool
    collections: dict[str, dict[str, int]] = field(default_factory=dict)
    diff: list[dict[str, str]] = field(default_factory=list)
    diff_truncated: bool = False
    written: int = 0
    pushed: int = 0  # written records the restore itself pushed to the primary (a node without background work)
    still_queued: int | None = None  # writes waiting for the primary after the restore's own push (if it made one)
    pre_restore_backup: str | None = None
    duration_s: float = 0.0

    def total(self, action: str) -> int:
        return sum(c.get(action, 0) for c in self.collections.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = {a: self.total(a) for a in ACTIONS}
        return data


@dataclass(frozen=True)
class Selection:
    collections: frozenset[str] | None = None
    keys: frozenset[str] | None = None

    @classmethod
    def of(cls, collections: Collection[str] | None, keys: Collection[str] | None) -> Selection:
        if isinstance(collections, str) or isinstance(keys, str):
            raise StoreValidationError("collections and keys must be lists of names, not a single string")
        return cls(None if collections is None else frozenset(collections), None if keys is None else frozenset(keys))

    def wants(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def total(self, manifest: dict[str, Any]) -> int:
        return sum(c["records"] for n, c in manifest.get("collections", {}).items() if self.wants(n))


def _records(body: bytes, collection: str, selection: Selection) -> Iterator[tuple[str, Any]]:
    """(key, value) of each selected record line; `BackupTamperedError` on a line of the wrong shape.

    The lines of a chunk are parsed as one JSON array (one call instead of one per line); a line that is not
    exactly one JSON value changes the number of elements (or breaks the array) and is refused."""
    if not body:
        return
    try:
        recs = json.loads(b"[" + body[:-1].replace(b"\n", b",") + b"]")
    except ValueError:
        raise BackupTamperedError(f"collection {collection!r}: a record line is not valid JSON") from None
    if len(recs) != body.count(b"\n"):
        raise BackupTamperedError(f"collection {collection!r}: a record line is not exactly one JSON value")
    keys = selection.keys
    for rec in recs:
        if not (
            type(rec) is list
            and len(rec) == 6
            and type(rec[0]) is str
            and type(rec[2]) is int
            and type(rec[3]) is str
            and type(rec[4]) is str
        ):
            raise BackupTamperedError(f"collection {collection!r}: a record line has the wrong shape")
        if keys is None or rec[0] in keys:
            yield rec[0], rec[1]


def validate(reader: BackupReader, selection: Selection, max_value_bytes: int, progress: Progress | None) -> int:
    """The validation pass; returns how many records are selected. Raises `BackupTamperedError` (damage) or
    `ValidationError` (a record the store would refuse) before anything is written."""
    total = selection.total(reader.manifest)
    done = 0
    for (kind, name), body in reader.sections():
        if kind != "collection" or not selection.wants(name):
            continue
        check_collection(name)
        records = list(_records(body, name, selection))
        for key, _ in records:
            check_key(key)
        if not _values_fit(records, max_value_bytes):
            for _, value in records:
                encode_value(value, max_bytes=max_value_bytes)  # raises the exact error
        done += len(records)
        if progress is not None:
            progress(done, total)
    return done


def _values_fit(records: list[tuple[str, Any]], max_value_bytes: int) -> bool:
    """True when every value is one `encode_value` accepts, decided with one encoding of them all: JSON
    without NaN or Infinity, valid Unicode, no NUL, and all of them together within the limit (so each is).
    False means "check them one by one" (a large float, a NUL escape, a large chunk, or an error)."""
    try:
        text = _encode_all([v for _, v in records])
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError):
        return False
    return size <= max_value_bytes and "e+" not in text and "\\u0000" not in text


def current_texts(node: NodeCore, collection: str, keys: list[str]) -> dict[str, str]:
    """The node's live values for ``keys`` (as JSON text) as a read would see them: journal, then the node's
    pending writes, then the primary (when its circuit is closed), then the local copy. Raises `LocalStoreError`
    when the local copy cannot be read: guessing "absent" would let a restore with ``overwrite=False`` overwrite."""
    texts: dict[str, str | None] = {}
    from_primary = False
    gateway = node.gateway
    if node.config.read_policy == "primary_first" and gateway.allow():
        try:
            rows = gateway.call(lambda p: p.get_many(collection, keys))
        except PrimaryUnavailableError:
            pass
        else:
            from_primary = True
            texts.update((r.key, r.value_json) for r in rows)
    local = node.slot.tier
    if local is None and not from_primary:
        raise LocalStoreError(
            f"cannot compare with the current values: the local store is not usable ({node.slot.error})"
        )
    if local is not None:
        for r in local.get_many(collection, keys):
            if not from_primary or r.synced_at is None:
                texts[r.key] = r.value_json
    if len(node.journal):
        for k in keys:
            j = node.journal.get(collection, k)
            if j is not None:
                texts[k] = j.value_json
    return {k: v for k, v in texts.items() if v is not None}


def apply(
    node: NodeCore,
    writer: BulkWriter,
    reader: BackupReader,
    selection: Selection,
    report: RestoreReport,
    *,
    diff_limit: int,
    progress: Progress | None,
) -> None:
    """The apply pass: classify every selected record against the current state and, unless ``dry_run``,
    write the added and overwritten ones through the node's write path (``writer.set_many_encoded``). Values are
    compared as canonical JSON text first (the common case, no decoding), then as values (a primary's ``jsonb``
    text is spaced differently; key order does not matter)."""
    started = time.monotonic()
    total = selection.total(reader.manifest)
    max_bytes = node.config.max_value_bytes
    done = 0
    for (kind, name), body in reader.sections():
        if kind != "collection" or not selection.wants(name):
            continue
        check_collection(name)
        counts = report.collections.setdefault(name, dict.fromkeys(ACTIONS, 0))
        records = list(_records(body, name, selection))
        for start in range(0, len(records), BATCH):
            batch = records[start : start + BATCH]
            current = current_texts(node, name, [k for k, _ in batch])
            writes: list[tuple[str, str]] = []
            for key, value in batch:
                text = encode_value(value, max_bytes=max_bytes)
                now = current.get(key)
                if now is None:
                    action = "added"
                elif now == text or _same_value(now, value):
                    action = "unchanged"
                elif report.overwrite:
                    action = "overwritten"
                else:
                    action = "skipped"
                counts[action] += 1
                if action in ("added", "overwritten"):
                    writes.append((key, text))
                if action != "unchanged":
                    if len(report.diff) < diff_limit:
                        report.diff.append({"action": action, "collection": name, "key": key})
                    else:
                        report.diff_truncated = True
            if writes and not report.dry_run:
                writer.set_many_encoded(name, writes)
                report.written += len(writes)
            done += len(batch)
            if progress is not None:
                progress(done, total)
    report.duration_s += time.monotonic() - started


def _same_value(current_text: str, value: Any) -> bool:
    """Equal values of the same JSON types (``1 == 1.0 == True`` in Python; a restore must still rewrite a value
    whose JSON type changed)."""
    current = json.loads(current_text)
    return bool(current == value) and json.dumps(current, sort_keys=True) == json.dumps(value, sort_keys=True)
