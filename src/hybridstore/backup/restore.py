"""Restore: check a backup's content, compare it with the store's current state, write what differs through
the store's normal write path (queued writes that reach the primary and the other nodes).

A restore reads the backup twice: a validation pass (every chunk authenticated, every section's count and
SHA-256, every selected line valid JSON of the right shape, every key and value acceptable to the store)
before anything is written, then the apply pass. So a damaged or tampered backup changes nothing.

The validation pass leaves a `ChunkCheck` per chunk: the apply pass refuses a chunk whose bytes changed since,
and takes the keys and value texts of a chunk proven canonical straight from its lines (see `lines`), with no
parsing and no encoding. When every selected chunk is proven canonical and the backup's content comes to at most
`KEEP_BYTES`, the validation pass keeps the keys and value texts it cut (`Validated`) and the apply pass writes
those without reading the file again (no second decompression and hashing: about a tenth of a restore's CPU
time); a larger backup is read twice, so a restore's memory stays bounded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BackupTamperedError, LocalStoreError, PrimaryUnavailableError
from ..errors import ValidationError as StoreValidationError
from ..validation import check_collection, encode_value
from .format import BackupReader
from .lines import ChunkCheck, check_keys, cut_lines, parse, split, verbatim

if TYPE_CHECKING:
    from ..node.core import BulkWriter, NodeCore

Progress = Callable[[int, int], None]
BATCH = 1000
# A backup's content (bytes of lines) up to which the validation pass keeps what it cut for the apply pass: Python
# holds the records in about 1.2 times their lines' bytes (a key and a value string each), on top of the
# restore's usual memory (a chunk at a time).
KEEP_BYTES = 64 << 20
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


def _pick(recs: list[list[Any]], selection: Selection) -> list[tuple[str, Any]]:
    """(key, value) of each selected record."""
    keys = selection.keys
    return [(r[0], r[1]) for r in recs if keys is None or r[0] in keys]


def _select(keys: list[str], texts: list[str], selection: Selection) -> list[tuple[str, str]]:
    wanted = selection.keys
    if wanted is None:
        return list(zip(keys, texts, strict=True))
    return [(k, t) for k, t in zip(keys, texts, strict=True) if k in wanted]


@dataclass(frozen=True)
class Validated(ChunkCheck):
    """A `ChunkCheck` that also holds the chunk's collection and its selected records as (key, canonical value
    text), cut by the validation pass: `apply` writes these instead of reading the chunk again."""

    collection: str = ""
    records: list[tuple[str, str]] = field(default_factory=list)


def validate(
    reader: BackupReader, selection: Selection, max_value_bytes: int, progress: Progress | None
) -> tuple[int, list[ChunkCheck]]:
    """The validation pass; returns how many records are selected and a `ChunkCheck` per chunk of a selected
    collection (in file order, for `apply`): all of them `Validated` when every chunk is proven canonical and
    the backup's content (its manifest's ``content_bytes``) comes to at most `KEEP_BYTES`. Raises
    `BackupTamperedError` (damage) or `ValidationError` (a record the store would refuse) before anything is
    written."""
    total = selection.total(reader.manifest)
    done = 0
    checks: list[ChunkCheck] = []
    content = reader.manifest.get("content_bytes")
    small = type(content) is int and content <= KEEP_BYTES  # the whole content bounds the selected lines
    kept: list[Validated] | None = [] if small else None  # None once something cannot be kept: then nothing is
    for (kind, name), body in reader.sections():
        if kind != "collection" or not selection.wants(name):
            continue
        check_collection(name)
        lines = split(body, name)
        recs = parse(lines, name)
        keys, texts = cut_lines(lines)
        fast = verbatim(recs, keys, texts, max_value_bytes)  # proves the values fit too, and the cut keys exact
        done += _check_records(recs, keys if fast else None, selection, max_value_bytes)
        checks.append(ChunkCheck(reader.digest, fast))
        if kept is not None and fast:
            kept.append(Validated(reader.digest, fast, name, _select(keys, texts, selection)))
        else:
            kept = None
        if progress is not None:
            progress(done, total)
    return done, checks if kept is None else list[ChunkCheck](kept)


def _check_records(
    recs: list[list[Any]], cut_keys: list[str] | None, selection: Selection, max_value_bytes: int
) -> int:
    """Check the selected records of a parsed chunk (keys, and values unless ``cut_keys`` is given: the chunk's
    keys when `verbatim` proved the chunk, values included); returns how many are selected."""
    if cut_keys is not None:
        wanted = selection.keys
        keys = cut_keys if wanted is None else [k for k in cut_keys if k in wanted]
        check_keys(keys)
        return len(keys)
    records = _pick(recs, selection)
    check_keys([k for k, _ in records])
    if not _values_fit(records, max_value_bytes):
        for _, value in records:
            encode_value(value, max_bytes=max_value_bytes)  # raises the exact error
    return len(records)


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


def _encoded(
    body: bytes, name: str, selection: Selection, check: ChunkCheck | None, digest: bytes, max_bytes: int
) -> list[tuple[str, str]]:
    """(key, canonical value text) of each selected record of a chunk (read with ``digest``): cut from its lines
    when the validation pass proved that exact (``check.verbatim``), else parsed and encoded value by value."""
    if check is not None and check.digest != digest:
        raise BackupTamperedError(f"collection {name!r}: the backup changed between validation and restore")
    lines = split(body, name)
    if check is not None and check.verbatim:
        return _select(*cut_lines(lines), selection)
    return [(key, encode_value(value, max_bytes=max_bytes)) for key, value in _pick(parse(lines, name), selection)]


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
    checks: list[ChunkCheck] | None = None,
) -> None:
    """The apply pass: classify every selected record against the current state and, unless ``dry_run``,
    write the added and overwritten ones through the node's write path (``writer.set_many_encoded``). Values are
    compared as canonical JSON text first (the common case, no decoding), then as values (a primary's ``jsonb``
    text is spaced differently; key order does not matter). ``checks``: what `validate` returned for the same
    selection (``None``: nothing validated, every chunk is parsed and checked here)."""
    started = time.monotonic()
    total = selection.total(reader.manifest)
    max_bytes = node.config.max_value_bytes
    done = 0
    if checks and all(isinstance(c, Validated) for c in checks):  # kept by the validation pass: no second read
        for kept in checks:
            assert isinstance(kept, Validated)
            done = _apply_records(
                node, writer, kept.collection, kept.records, report, diff_limit, (done, total, progress)
            )
        report.duration_s += time.monotonic() - started
        return
    index = 0
    for (kind, name), body in reader.sections():
        if kind != "collection" or not selection.wants(name):
            continue
        check_collection(name)
        if checks is not None and index >= len(checks):
            raise BackupTamperedError("the backup changed between validation and restore")
        check = None if checks is None else checks[index]
        index += 1
        records = _encoded(body, name, selection, check, reader.digest, max_bytes)
        done = _apply_records(node, writer, name, records, report, diff_limit, (done, total, progress))
    report.duration_s += time.monotonic() - started


def _apply_records(
    node: NodeCore,
    writer: BulkWriter,
    name: str,
    records: list[tuple[str, str]],
    report: RestoreReport,
    diff_limit: int,
    tally: tuple[int, int, Progress | None],
) -> int:
    """Classify and write the records of one chunk of collection ``name``, `BATCH` at a time, reporting progress
    after each batch (``tally``: records done before, records selected, the progress callback); returns how many
    records are done after these."""
    done, total, progress = tally
    counts = report.collections.setdefault(name, dict.fromkeys(ACTIONS, 0))
    for start in range(0, len(records), BATCH):
        batch = records[start : start + BATCH]
        current = current_texts(node, name, [k for k, _ in batch])
        writes = _classify(name, batch, current, counts, report, diff_limit)
        if writes and not report.dry_run:
            writer.set_many_encoded(name, writes)
            report.written += len(writes)
        done += len(batch)
        if progress is not None:
            progress(done, total)
    return done


def _classify(
    name: str,
    batch: list[tuple[str, str]],
    current: dict[str, str],
    counts: dict[str, int],
    report: RestoreReport,
    diff_limit: int,
) -> list[tuple[str, str]]:
    """Count each record of ``batch`` under its action, note it in the diff; returns the records to write."""
    if not current:  # none of these keys exists: all added (a restore into an empty store)
        counts["added"] += len(batch)
        room = diff_limit - len(report.diff)
        report.diff.extend({"action": "added", "collection": name, "key": k} for k, _ in batch[: max(room, 0)])
        report.diff_truncated = report.diff_truncated or len(batch) > room
        return batch
    writes: list[tuple[str, str]] = []
    for key, text in batch:
        now = current.get(key)
        if now is None:
            action = "added"
        elif now == text or _same_value(now, json.loads(text)):
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
    return writes


def _same_value(current_text: str, value: Any) -> bool:
    """Equal values of the same JSON types (``1 == 1.0 == True`` in Python; a restore must still rewrite a value
    whose JSON type changed)."""
    current = json.loads(current_text)
    return bool(current == value) and json.dumps(current, sort_keys=True) == json.dumps(value, sort_keys=True)
