"""BackupService: manual, scheduled, emergency and pre-restore backups of one store; verify, restore, export,
import, delete, prune; runtime settings. Reached as ``store.backups``.

Scheduled and emergency backups run in the service's own worker (``hybridstore-backups``), started when the
store runs background work. An emergency backup is requested by the gateway's ``circuit_open`` event (the
listener only sets a flag; the backup is taken in the service's thread) and is taken from the node's own
state (SQLite + outbox + journal), so it holds what has not reached the primary. Only one backup or restore
runs at a time.

Each backup is kept on the ``targets`` of the settings: the node's directory, the primary, or both (the default
when a primary is configured). A manual backup is stored on the primary at once when it can be reached; any
other, or one the primary could not take, stays pending and is stored by the service's thread, which the
gateway's ``circuit_closed`` / ``primary_up`` wake. Listing, verifying, restoring and exporting see the backups
of both targets (see `locations`), so any node can use any node's backups.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    BackupError,
    ConfigError,
    HybridStoreError,
    LocalStoreError,
    PrimaryUnavailableError,
    UnavailableError,
    WrongPassphraseError,
)
from ..events import Event
from ..model import StoredRow, new_op_id
from ..validation import encode_value
from ..worker import Worker
from . import crypto, policy, restore, settings
from .catalogue import PrimaryCatalogue
from .format import (
    CHUNK_TARGET,
    BackupReader,
    BodyWriter,
    assemble,
    check_written,
    read_header,
    rewrite_header,
)
from .locations import BackupLocations
from .primary_store import PrimaryBackupStore
from .repository import BackupInfo, Repository
from .snapshot import source_sections

if TYPE_CHECKING:
    from ..node.core import BulkWriter, NodeCore
    from ..tiers.primary import PrimaryTier

log = logging.getLogger("hybridstore.backup")
Progress = Callable[[int, int], None]
KINDS = ("manual", "scheduled", "emergency", "pre_restore", "imported")
DIR_ENV = "HYBRIDSTORE_BACKUP_DIR"
ZSTD_LEVEL = 3
IDLE_WAIT = 60.0
RETRY_AFTER = 300.0  # seconds before a failed scheduled backup is tried again
EMPTY_RECHECK = 5.0  # seconds between checks of an empty node for its first scheduled backup
SETTINGS_REFRESH = 60.0  # seconds between reads of the shared settings (another node may have changed them)


@dataclass
class VerifyReport:
    """Result of `BackupService.verify_backup`: everything checked, nothing wrong (errors raise)."""

    id: str
    chunks: int
    records: int
    pending_ops: int
    content_bytes: int
    size_bytes: int
    duration_s: float


class BackupService:
    """See the module docstring. ``clock`` (epoch seconds) is injectable so schedules are tested instantly."""

    def __init__(
        self,
        node: NodeCore,
        *,
        writer: BulkWriter,
        directory: str | os.PathLike[str] | None = None,
        passphrase: str | None = None,
        clock: Callable[[], float] = time.time,
        kdf: crypto.KdfParams | None = None,
        start: bool | None = None,
    ) -> None:
        self._node = node
        self._writer = writer
        self.repo = Repository(Path(directory or os.environ.get(DIR_ENV) or node.data_dir / "backups"))
        self._passphrase = passphrase
        self.clock = clock
        self.kdf = kdf or crypto.KdfParams()
        self.emergency_min_interval = 600.0  # seconds between two emergency backups (a flapping primary)
        self.chunk_target = CHUNK_TARGET  # plaintext bytes per chunk
        self._lock = threading.RLock()
        self.worker = Worker("hybridstore-backups", self._run_once, error_delay=IDLE_WAIT)
        self._emergency_requested = False
        self._last_emergency: float | None = None
        self._settings: settings.BackupSettings | None = None
        self._settings_read_at = float("-inf")
        self.last_error: str | None = None
        self.counts = dict.fromkeys(("created", "failed", "restored", "pruned"), 0)
        self.catalogue = PrimaryCatalogue(node.gateway, node.node_id)
        self._catalogue_dirty = True  # system_backups on the primary may lag behind the repository
        self.locations = BackupLocations(
            self.repo,
            PrimaryBackupStore(node.gateway, node.node_id),
            node_id=node.node_id,
            verify=lambda path, progress: self._verify_file(path, passphrase=self.passphrase, progress=progress),
            clock=lambda: self.clock(),
        )
        # the newest scheduled backup of this node that the directory may no longer hold (targets=primary)
        self._scheduled_elsewhere: float | None = None
        self._asked_primary_for_schedule = False
        self._retry_at = 0.0  # after a failed scheduled backup: not again before this time (clock())
        self.repo.remove_stale_temporaries()
        self._section: dict[str, Any] | None = None
        node.events.subscribe(self._on_circuit_open, "circuit_open")
        node.events.subscribe(self._on_local_swapped, "local_swapped")
        node.events.subscribe(self._on_primary_back, "circuit_closed", "primary_up")
        node.on_close(self.stop)
        node.status.provide("backups", self.status_section)
        if start if start is not None else node.config.background:
            self.start()

    # -- lifecycle and background work ------------------------------------------------------------------------

    @property
    def passphrase(self) -> str | None:
        return self._passphrase or os.environ.get(crypto.PASSPHRASE_ENV) or None

    def start(self) -> None:
        """Start the service's thread (scheduled and emergency backups). Started during an outage, it takes an
        emergency backup at once: the outage began before it could see the circuit open."""
        if not self.worker.running and not self.worker.stopping:
            gateway = self._node.gateway
            if gateway.configured and not gateway.allow():
                self._emergency_requested = True
            self.worker.start()

    def stop(self) -> bool:
        return self.worker.stop(timeout=60)

    def _on_circuit_open(self, event: Event) -> None:
        # Called in whatever thread saw the failure: only note the request, the work happens in our thread.
        self._emergency_requested = True
        self.worker.wake()

    def _on_local_swapped(self, event: Event) -> None:
        # A rebuilt local store: a backup that failed on the broken file is due again now, not in five minutes.
        if self.last_error is not None:
            self._retry_at = 0.0
            self.worker.wake()

    def _on_primary_back(self, event: Event) -> None:
        # pending uploads are stored by our thread, not by the one that saw the primary answer
        self.worker.wake()

    def _run_once(self) -> float:
        try:
            self.tick()
            self._refresh_section()
            wait = min(IDLE_WAIT, self.seconds_until_due())
        except Exception as exc:  # never die silently
            log.exception("backup service round failed")
            self.last_error = str(exc)
            wait = IDLE_WAIT
        return max(wait, 0.05)

    def tick(self) -> list[BackupInfo]:
        """One round of background work, now: an emergency backup if one was requested, a scheduled backup
        if one is due (at most one: a catch-up after downtime), the catalogue mirrored to the primary, pending
        backups stored on the primary. Returns the backups taken."""
        taken: list[BackupInfo | None] = []
        cfg = self.get_config()
        if self._emergency_requested:
            self._emergency_requested = False
            now = self.clock()
            recent = self._last_emergency is not None and now - self._last_emergency < self.emergency_min_interval
            if cfg.enabled and cfg.automatic and not recent:
                self._last_emergency = now
                reason = "taken when the primary became unavailable"
                taken.append(self._guarded("emergency", "Emergency backup", reason))
        if cfg.enabled and cfg.automatic and self.seconds_until_due() == 0:
            if self._node_is_empty():
                # Nothing to keep yet (a new node): a backup of nothing would only fill the repository. Look
                # again soon: the first records deserve their first backup.
                self._retry_at = self.clock() + EMPTY_RECHECK
            else:
                taken.append(self._guarded("scheduled", "Scheduled backup", ""))
        self._mirror_catalogue(changed=False)
        self._store_off_node()
        return [t for t in taken if t is not None]

    def _guarded(self, kind: str, label: str, description: str) -> BackupInfo | None:
        try:
            info = self._create(kind, label, description)
        except (HybridStoreError, OSError) as exc:  # OSError: ENOSPC and friends from our own file writes
            self.last_error = f"{kind} backup failed: {exc}"
            log.error("%s; trying again in %.0f s", self.last_error, RETRY_AFTER)
            if kind == "scheduled":
                self._retry_at = self.clock() + RETRY_AFTER  # a full disk must not become a busy loop
            self._node.events.publish("backup_failed", self.last_error, backup_kind=kind)
            return None
        self.last_error = None
        self._node.events.publish("backup_taken", f"{kind} backup {info.id}", backup_kind=kind, id=info.id)
        if kind == "scheduled":
            self.prune()
        return info

    def _node_is_empty(self) -> bool:
        local = self._node.slot.tier
        if local is None or len(self._node.journal):
            return False
        try:
            return local.count_live() == 0 and local.outbox_stats()[0] == 0
        except LocalStoreError:
            return False

    def seconds_until_due(self) -> float:
        cfg = self.get_config()
        if not (cfg.enabled and cfg.automatic):
            return IDLE_WAIT
        scheduled = [b.created_at for b in self.repo.list() if b.kind == "scheduled"]
        if self._scheduled_elsewhere is None and not self._asked_primary_for_schedule and self.catalogue.available():
            # once: the directory may not hold this node's last scheduled backup (targets=primary, a new disk)
            self._asked_primary_for_schedule = True
            remote = self.locations.on_primary() or {}
            mine = [b.created_at for b in remote.values() if b.kind == "scheduled" and b.node_id == self._node.node_id]
            self._scheduled_elsewhere = max(mine, default=None)
        if self._scheduled_elsewhere is not None:
            scheduled.append(self._scheduled_elsewhere)
        now = self.clock()
        due = policy.seconds_until_due(max(scheduled, default=None), now, cfg.interval_hours * 3600)
        return max(due, self._retry_at - now)

    # -- settings ---------------------------------------------------------------------------------------------

    @property
    def _config_path(self) -> Path:
        return self.repo.dir / "config.json"

    def get_config(self) -> settings.BackupSettings:
        """The current settings: the newer of the local mirror and the primary's ``system_config`` row, else the
        environment's defaults."""
        now = self.clock()
        stale = now - self._settings_read_at >= SETTINGS_REFRESH and self.catalogue.available()
        if self._settings is None or stale:
            self._settings_read_at = now
            base = settings.env_defaults()
            local_copy = self._read_settings("config.json", self._local_config, base)
            shared = self._read_settings("system_config", self.catalogue.load_settings, base)
            newest = max((base, local_copy, shared), key=lambda s: -1.0 if s is None else s.updated_at)
            assert newest is not None
            if (
                shared is not None
                and newest is shared
                and (local_copy is None or local_copy.updated_at < newest.updated_at)
            ):
                self._save_local_copy(shared)  # an offline node then uses the same settings as the others
            self._settings = newest
        return self._settings

    def _read_settings(
        self, where: str, load: Callable[[], dict[str, Any] | None], base: settings.BackupSettings
    ) -> settings.BackupSettings | None:
        try:
            stored = load()
            return None if stored is None else settings.BackupSettings.from_dict(stored, base, strict=False)
        except ConfigError as exc:  # a damaged or hand-edited copy must not stop backups
            log.error("ignoring the backup settings in %s: %s", where, exc)
            return None

    def _save_local_copy(self, new: settings.BackupSettings) -> None:
        try:
            settings.save_local(self._config_path, new)
        except OSError as exc:
            log.warning("backup settings not mirrored locally (%s): an offline node may use older ones", exc)

    def _local_config(self) -> dict[str, Any] | None:
        return settings.load_local(self._config_path)

    def update_config(self, **changes: Any) -> settings.BackupSettings:
        """Validate and apply settings (``enabled``, ``automatic``, ``interval_hours``, ``max_backups``,
        ``compress``, ``encrypt``, ``source``, ``targets``); persisted locally and on the primary when
        reachable."""
        new = settings.BackupSettings.from_dict({**changes, "updated_at": self.clock()}, self.get_config())
        if new.encrypt and changes.get("encrypt") and not self.passphrase:
            # Only when turning encryption on: changing an unrelated setting must not need the passphrase.
            raise ConfigError(f"encrypt=True needs a passphrase: set {crypto.PASSPHRASE_ENV}")
        if new.targets == "primary" and not self._node.gateway.configured:
            raise ConfigError("targets=primary needs a primary: this node has none (use local or both)")
        settings.save_local(self._config_path, new)
        self._settings = new
        self.catalogue.save_settings(new.to_dict())
        self.worker.wake()
        return new

    def _targets(self) -> tuple[str, ...]:
        """Where backups are kept now: ``("local",)``, ``("primary",)`` or both (from the ``targets`` setting)."""
        return policy.kept_on(self.get_config().targets, self._node.gateway.configured)

    def _keeps_local(self) -> bool:
        return "local" in self._targets()

    # -- creating ---------------------------------------------------------------------------------------------

    def create_manual_backup(
        self, label: str = "Manual backup", description: str = "", *, progress: Progress | None = None
    ) -> BackupInfo:
        """Take a backup now (written, fsync'd and verified before it is registered), and store it on the
        primary now when that is a target and can be reached (else it is pending: see `tick`)."""
        if not isinstance(label, str) or not isinstance(description, str) or len(label) > 200:
            raise ConfigError("label (at most 200 characters) and description must be text")
        info = self._create("manual", label, description, progress=progress)
        if self._store_off_node([info.id]):
            info.locations = list(self._targets())
            info.path = info.path if "local" in info.locations else ""
        self.prune()
        return info

    def _create(
        self, kind: str, label: str, description: str, *, progress: Progress | None = None, source: str | None = None
    ) -> BackupInfo:
        try:
            info = self._create_checked(kind, label, description, progress, source)
        except BaseException:
            self.counts["failed"] += 1
            raise
        self.counts["created"] += 1
        if kind == "scheduled":
            self._scheduled_elsewhere = max(info.created_at, self._scheduled_elsewhere or info.created_at)
        log.info("%s backup %s: %d records, %d bytes", kind, info.id, info.records, info.size_bytes)
        self._mirror_catalogue()
        return info

    def _create_checked(
        self, kind: str, label: str, description: str, progress: Progress | None, source: str | None
    ) -> BackupInfo:
        cfg = self.get_config()
        if not cfg.enabled and kind != "pre_restore":
            raise BackupError("backups are disabled (turn them on with `hybridstore backup config --enabled`)")
        if cfg.encrypt:
            crypto.require_crypto()
            if not self.passphrase:
                raise ConfigError(f"backups are set to be encrypted: set {crypto.PASSPHRASE_ENV}")
        wanted = source or cfg.source
        if kind == "emergency":
            wanted = "local"
        elif wanted == "auto":
            wanted = "primary" if self.catalogue.available() else "local"
        with self._lock:
            try:
                return self._write_backup(kind, label, description, wanted, cfg, progress)
            except UnavailableError as exc:
                if wanted != "primary" or cfg.source == "primary":
                    raise
                log.warning("backup from the primary failed (%s); taking it from the local copy", exc)
            return self._write_backup(kind, label, description, "local", cfg, progress)

    def _estimate_records(self) -> int:
        local = self._node.slot.tier
        if local is None:
            return 0
        try:
            return local.count_live()
        except LocalStoreError:
            return 0

    def _write_backup(
        self,
        kind: str,
        label: str,
        description: str,
        source: str,
        cfg: settings.BackupSettings,
        progress: Progress | None,
    ) -> BackupInfo:
        if source != "primary":
            return self._write_backup_from(None, kind, label, description, cfg, progress)
        with self._node.gateway.session() as primary:  # admitted by the circuit, its outcome recorded
            return self._write_backup_from(primary, kind, label, description, cfg, progress)

    def _write_backup_from(
        self,
        primary: PrimaryTier | None,
        kind: str,
        label: str,
        description: str,
        cfg: settings.BackupSettings,
        progress: Progress | None,
    ) -> BackupInfo:
        node = self._node
        backup_id = new_op_id().replace("-", "")
        id_bytes = bytes.fromhex(backup_id)
        local = node.slot.tier
        if primary is None and (local is None or node.slot.held is not None):
            # A copy of a file flagged broken (or of none) must never be what a later rebuild starts from.
            raise BackupError(
                "no backup taken from the local store: it is not usable "
                f"({node.slot.held or node.slot.error or 'being rebuilt'}); the journal keeps new writes meanwhile"
            )
        db_path = local.path if local is not None and node.slot.held is None else None
        source, sections = source_sections(
            "primary" if primary is not None else "local",
            primary=primary,
            db_path=db_path,
            journal=node.journal.entries(),
        )
        header: dict[str, Any] = {
            "format": 1,
            "backup_id": backup_id,
            "kind": kind,
            "label": label,
            "description": description,
            "created_at": self.clock(),
            "node_id": node.node_id,
            "source": source,
            "compression": {"name": "zstd", "level": ZSTD_LEVEL} if cfg.compress else {"name": "none"},
        }
        data_key = None
        if cfg.encrypt:
            data_key = crypto.new_data_key()
            header["cipher"] = crypto.wrap_key(data_key, self.passphrase or "", id_bytes, self.kdf)
        else:
            header["cipher"] = {"name": "none"}
        sealer = crypto.ChunkSealer(data_key)
        body_tmp = self.repo.tmp_path(backup_id, ".body")
        final_tmp = self.repo.tmp_path(backup_id, ".hsb")
        total = max(1, self._estimate_records()) if progress is not None else 1  # a count costs a full scan
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            with open(body_tmp, "wb", buffering=1 << 20) as out:
                writer = BodyWriter(
                    out,
                    backup_id=id_bytes,
                    sealer=sealer,
                    zstd_level=ZSTD_LEVEL if cfg.compress else None,
                    chunk_target=self.chunk_target,
                )
                done = 0
                try:
                    for section, lines, count in sections():
                        writer.add(section, lines, count)
                        if progress is not None and section[0] == "collection":
                            done += count
                            progress(min(done, total), max(total, done))
                    stats = writer.finish()
                except BaseException:
                    writer.abort()
                    raise
            header["manifest"] = stats.manifest()
            assemble(final_tmp, header, sealer, body_tmp)
            body_tmp.unlink()
            timings["write_s"] = time.perf_counter() - started
            check_written(final_tmp, header, stats)  # before it is published (round trips checked as written)
            path = self.repo.publish(final_tmp, backup_id)
            timings["verify_s"] = time.perf_counter() - started - timings["write_s"]
        except BaseException:
            for p in (body_tmp, final_tmp):
                with contextlib.suppress(OSError):
                    p.unlink()
            raise
        self.repo.set_meta(backup_id, verified=True, verified_at=self.clock(), pinned=False)
        info = BackupInfo.from_header(header, path, self.repo.meta(backup_id))
        info.extra.update((k, round(v, 3)) for k, v in timings.items())
        return info

    # -- reading ----------------------------------------------------------------------------------------------

    def list_backups(self) -> list[BackupInfo]:
        """Every backup in the repository or on the primary (any node's), newest first; ``locations`` says where
        each is kept. While the primary cannot be reached: the repository's."""
        return self.locations.list_all()

    def get_backup(self, backup_id: str) -> BackupInfo:
        """One backup by id (or a unique prefix of at least 4 characters); `BackupNotFoundError` if absent."""
        return self.locations.info(self.locations.resolve(backup_id))

    def _verify_file(
        self, path: Path, *, passphrase: str | None, progress: Progress | None = None
    ) -> tuple[int, int, int]:
        """Decrypt, decompress and check every chunk and section; returns (chunks, records, ops)."""
        with BackupReader(path, passphrase) as reader:
            total = reader.body_bytes
            done = 0

            def step(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(done, total)

            for _ in reader.sections(step):
                pass
            m = reader.manifest
            return int(m["chunks"]), int(m["records"]), int(m["pending_ops"])

    def check_file(self, path: str | os.PathLike[str], *, progress: Progress | None = None) -> tuple[int, int, int]:
        """Verify any backup file (in the repository or not) without registering it: (chunks, records, ops)."""
        return self._verify_file(Path(path), passphrase=self.passphrase, progress=progress)

    def verify_backup(self, backup_id: str, *, progress: Progress | None = None) -> VerifyReport:
        """Check a backup completely (decrypt, decompress, checksums). Raises `BackupTamperedError` /
        `WrongPassphraseError`; on success the backup is marked verified."""
        start = time.monotonic()
        bid = self.locations.resolve(backup_id)
        path = self.repo.path(bid)
        if not path.exists():
            return self._verify_on_primary(bid, start, progress)
        try:
            chunks, records, ops = self._verify_file(path, passphrase=self.passphrase, progress=progress)
        except WrongPassphraseError:
            raise  # the caller's mistake, not the file's: what is known about the backup stays as it was
        except BackupError:
            self.repo.set_meta(bid, verified=False)
            self._mirror_catalogue()
            raise
        self.repo.set_meta(bid, verified=True, verified_at=self.clock())
        self._mirror_catalogue()
        info = self.repo.info(bid)
        return VerifyReport(bid, chunks, records, ops, info.content_bytes, info.size_bytes, time.monotonic() - start)

    def _verify_on_primary(self, bid: str, start: float, progress: Progress | None) -> VerifyReport:
        """Verify a backup only the primary holds: download, check everything; kept in the repository when it
        is a target (a damaged copy is never registered, and is marked unverified on the primary)."""
        keep = self._keeps_local()
        with self._lock:
            path, (chunks, records, ops) = self.locations.fetch(bid, register=keep, progress=progress)
        try:
            size = path.stat().st_size
            content = int(read_header(path)["manifest"].get("content_bytes", 0))
        finally:
            if not keep:
                with contextlib.suppress(OSError):
                    path.unlink()
        if keep:
            self._mirror_catalogue()
        else:
            self.locations.primary.set_flags(bid, verified=True)
        return VerifyReport(bid, chunks, records, ops, content, size, time.monotonic() - start)

    def read_records(self, backup_id: str) -> Iterator[tuple[str, str, Any]]:
        """Every (section kind, section name, parsed line) of a verified-on-the-fly backup: for inspection."""
        import json

        bid = self.locations.resolve(backup_id)
        with (
            self.locations.local_copy(bid, register=self._keeps_local()) as path,
            BackupReader(path, self.passphrase) as reader,
        ):
            for (kind, name), body in reader.sections():
                for line in body.split(b"\n")[:-1]:
                    yield kind, name, json.loads(line)

    # -- restoring --------------------------------------------------------------------------------------------

    def restore_backup(
        self,
        backup_id: str,
        *,
        overwrite: bool = True,
        validate_data: bool = True,
        collections: Collection[str] | None = None,
        keys: Collection[str] | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
        diff_limit: int = 1000,
    ) -> restore.RestoreReport:
        """Restore a backup (all of it, or some ``collections`` / ``keys``) through the normal write path.
        ``overwrite=False`` keeps records that exist; ``validate_data`` checks the whole backup before writing
        anything; ``dry_run`` only reports what would change. A pre-restore backup is taken first."""
        self._node.check_open()
        bid = self.locations.resolve(backup_id)
        selection = restore.Selection.of(collections, keys)
        report = restore.RestoreReport(bid, dry_run, overwrite)
        start = time.monotonic()
        with self._lock, self.locations.local_copy(bid, register=self._keeps_local()) as path:
            checks = None
            if validate_data:
                with BackupReader(path, self.passphrase) as reader:
                    _, checks = restore.validate(reader, selection, self._node.config.max_value_bytes, None)
            with BackupReader(path, self.passphrase) as reader:
                if not dry_run:
                    pre = self._create(
                        "pre_restore", f"Before restoring {bid}", f"automatic safety backup before restoring {bid}"
                    )
                    report.pre_restore_backup = pre.id
                restore.apply(
                    self._node,
                    self._writer,
                    reader,
                    selection,
                    report,
                    diff_limit=diff_limit,
                    progress=progress,
                    checks=checks,
                )
        if not dry_run:
            self.counts["restored"] += 1
            self._push_restored(report)
            if report.pre_restore_backup:
                self._store_off_node([report.pre_restore_backup])
        report.duration_s = time.monotonic() - start
        return report

    def _push_restored(self, report: restore.RestoreReport) -> None:
        """Restored records reach the primary (and so the other nodes) promptly, as any write does: the
        replayer's worker pushes them; without one (a CLI command, ``background=False``) they are pushed now."""
        node = self._node
        if node.config.background or not report.written or not node.gateway.configured:
            node.sync.wake()
            return
        pushed = node.sync.drain()
        report.pushed = pushed.pushed + pushed.duplicates + pushed.superseded
        report.still_queued = pushed.remaining
        if pushed.errors:
            log.warning("restored records stay queued until the primary takes them: %s", pushed.errors[-1])

    # -- moving, deleting, pruning ----------------------------------------------------------------------------

    def export_backup(self, backup_id: str, path: str | os.PathLike[str]) -> Path:
        """Copy a backup file out (verified first, fsync'd, atomically renamed into place); a backup only the
        primary holds is downloaded (and verified) first."""
        bid = self.locations.resolve(backup_id)
        with self.locations.local_copy(bid, register=self._keeps_local()) as src:
            return self._export_file(src, bid, Path(path))

    def _export_file(self, src: Path, bid: str, target: Path) -> Path:
        if target.is_dir():
            target = target / f"{bid}.hsb"
        self._verify_file(src, passphrase=self.passphrase)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            with open(src, "rb") as f, open(tmp, "wb") as out:
                while block := f.read(1 << 20):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise BackupError(f"cannot export to {target}: {exc}") from exc
        return target

    def import_backup(self, path: str | os.PathLike[str], *, progress: Progress | None = None) -> BackupInfo:
        """Copy a backup file into the repository; it is verified completely before it is registered."""
        src = Path(path)
        header = read_header(src)
        bid = str(header.get("backup_id", ""))
        if not bid or len(bid) != 32:
            raise BackupError(f"{src} has no valid backup id")
        if self.repo.path(bid).exists():
            raise BackupError(f"backup {bid} is already in the repository")
        tmp = self.repo.tmp_path(bid, ".hsb")
        with self._lock:
            try:
                with open(src, "rb") as f, open(tmp, "wb") as out:
                    while block := f.read(1 << 20):
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                self._verify_file(tmp, passphrase=self.passphrase, progress=progress)
                self.repo.publish(tmp, bid)
            except OSError as exc:
                raise BackupError(f"cannot import {src}: {exc}") from exc
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            self.repo.set_meta(bid, verified=True, verified_at=self.clock(), pinned=False, imported=True)
        self._mirror_catalogue()
        self._store_off_node([bid])
        return self.locations.info(bid)

    def delete_backup(self, backup_id: str) -> BackupInfo:
        """Delete a backup from every target (pinned and emergency ones too: this is an explicit request). One
        stored on the primary is not deleted while the primary cannot be reached (`PrimaryUnavailableError`)."""
        with self._lock:
            info = self.locations.delete(self.locations.resolve(backup_id))
        self.catalogue.forget([info.id])
        self._mirror_catalogue()
        return info

    def pin_backup(self, backup_id: str, pinned: bool = True) -> BackupInfo:
        """Pin (or unpin) a backup: pinned backups are never pruned automatically (on any target)."""
        bid = self.locations.resolve(backup_id)
        if self.repo.path(bid).exists():
            self.repo.set_meta(bid, pinned=pinned)
            self._mirror_catalogue()  # the row's pin follows
        else:
            self.locations.primary.set_flags(bid, pinned=pinned)
        return self.locations.info(bid)

    def prune(self, *, dry_run: bool = False) -> list[BackupInfo]:
        """Apply retention to each target: remove manual and scheduled backups beyond ``max_backups`` (never the
        newest verified backup, never emergency, pre-restore or pinned ones) from the repository, and from the
        primary among this node's uploads. Returns what was (or, with ``dry_run``, would be) removed;
        ``extra["pruned_from"]`` says from which targets."""
        with self._lock:
            gone = self.locations.prune(self._targets(), self.get_config().max_backups, dry_run=dry_run)
            if not dry_run:
                self.counts["pruned"] += len(gone)
        if gone and not dry_run:
            log.info("pruned %d backup(s)", len(gone))
            self.catalogue.forget([b.id for b in gone])
            self._mirror_catalogue()
        return gone

    def rotate_passphrase(self, new_passphrase: str, *, old_passphrase: str | None = None) -> list[str]:
        """Re-wrap the data key of every encrypted backup under ``new_passphrase`` (bodies are not re-encrypted;
        each file is rewritten, verified with the new passphrase, then replaces the old one). Set
        HYBRIDSTORE_BACKUP_PASSPHRASE to the new one afterwards. Returns the ids re-wrapped."""
        old = old_passphrase or self.passphrase
        done: list[str] = []
        with self._lock:
            encrypted = [b for b in self.locations.list_all() if b.encrypted]
            if any("primary" in b.locations for b in encrypted) and not self.catalogue.available():
                raise PrimaryUnavailableError(
                    "some encrypted backups are stored on the primary, which cannot be reached now: nothing "
                    "re-wrapped; try again when it is back"
                )
            keep = self._keeps_local()
            for info in encrypted:
                # the file as read with the old passphrase (a backup only the primary holds is fetched first)
                with self.locations.local_copy(info.id, register=keep) as src:
                    self._rewrap(src, info, old, new_passphrase)
                done.append(info.id)
        return done

    def _rewrap(self, src: Path, info: BackupInfo, old: str | None, new_passphrase: str) -> None:
        with BackupReader(src, old) as reader:
            header = dict(reader.header)
            data_key = crypto.unwrap_key(header["cipher"], old, bytes.fromhex(info.id))
        header["cipher"] = crypto.wrap_key(data_key, new_passphrase, bytes.fromhex(info.id), self.kdf)
        tmp = self.repo.tmp_path(info.id, ".hsb")
        try:
            rewrite_header(src, tmp, header, crypto.ChunkSealer(data_key))
            self._verify_file(tmp, passphrase=new_passphrase)
            os.replace(tmp, src)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if "primary" not in info.locations:
            return
        in_repo = src == self.repo.path(info.id)
        try:
            self.locations.primary.upload(src, info)  # replaces the primary's copy atomically
        except (HybridStoreError, OSError) as exc:
            if not in_repo:
                raise
            log.warning("backup %s re-wrapped here, not yet on the primary (stored later): %s", info.id, exc)
            self.repo.set_meta(info.id, uploaded=False)  # pending: the next upload replaces the old copy

    def stats(self) -> dict[str, Any]:
        """Plain data: counts and sizes by kind, where backups are kept, newest backup, next scheduled backup,
        settings, errors."""
        backups = self.locations.list_all()
        targets = self._targets()
        by_kind: dict[str, int] = {}
        for b in backups:
            by_kind[b.kind] = by_kind.get(b.kind, 0) + 1
        newest = backups[0] if backups else None
        return {
            "directory": str(self.repo.dir),
            "count": len(backups),
            "by_kind": by_kind,
            "total_bytes": sum(b.size_bytes for b in backups),
            "newest": None if newest is None else {"id": newest.id, "kind": newest.kind, "at": newest.created_at},
            "verified": sum(1 for b in backups if b.verified),
            "targets": list(targets),
            "locations": {t: sum(1 for b in backups if t in b.locations) for t in ("local", "primary")},
            "pending_upload": len(self.locations.pending_upload(targets)),
            "last_upload_error": self.locations.last_upload_error,
            "next_scheduled_in_s": round(self.seconds_until_due(), 1),
            "config": self.get_config().to_dict(),
            "counts": dict(self.counts),
            "last_error": self.last_error,
            "running": self.worker.running,
        }

    def status_section(self) -> dict[str, Any] | None:
        """The ``backups`` section of the node's status snapshot: what the last round saw (no I/O)."""
        return self._section

    def _refresh_section(self) -> None:
        backups = self.repo.list()
        scheduled = [b for b in backups if b.kind == "scheduled"]
        self._section = {
            "count": len(backups),
            "last_at": backups[0].created_at if backups else None,
            "last_scheduled_at": scheduled[0].created_at if scheduled else None,
            "pending_upload": len(self.locations.pending_upload(self._targets())),
            "next_scheduled_in_s": round(self.seconds_until_due(), 1),
            "last_error": self.last_error,
            "running": self.worker.running,
        }

    # -- the primary's catalogue (system_backups) -------------------------------------------------------------

    def _store_off_node(self, ids: Collection[str] | None = None) -> int:
        """Store pending backups (``ids``: only these) on the primary when it is a target and can be reached;
        what fails stays pending for the next round. Returns how many were stored."""
        targets = self._targets()
        if "primary" not in targets:
            return 0
        with self._lock:
            return self.locations.upload_pending(targets, ids)

    def _mirror_catalogue(self, *, changed: bool = True) -> None:
        """Bring ``system_backups`` up to date, primary permitting (retried by the service's thread)."""
        self._catalogue_dirty = self._catalogue_dirty or changed
        if self._catalogue_dirty and self.catalogue.sync(self.repo.list()):
            self._catalogue_dirty = False


def newest_backup_rows(service: BackupService, *, max_value_bytes: int) -> Iterator[StoredRow] | None:
    """The records of the newest verified backup (for a rebuild while the primary is unreachable), or ``None``
    when there is none."""
    newest = next((b for b in service.list_backups() if b.verified), None)
    if newest is None:
        return None
    log.info("rebuilding from backup %s (%s, taken at %s)", newest.id, newest.kind, newest.created_at)

    def rows() -> Iterator[StoredRow]:
        for kind, collection, line in service.read_records(newest.id):
            if kind == "collection":
                key, value, version, hlc, origin, updated_at = line
                value_json = encode_value(value, max_bytes=max_value_bytes)
                yield StoredRow(collection, key, value_json, version, hlc, origin, updated_at)

    return rows()
