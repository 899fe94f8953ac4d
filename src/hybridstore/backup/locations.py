"""Where backups are kept: the node's directory (`Repository`) and, when the primary is a target, the primary
(`PrimaryBackupStore`). `BackupLocations` lists the union of both, fetches a backup that only the primary holds
(verified completely before it is used or registered), stores the directory's backups on the primary (pending
while it cannot be reached), and deletes and prunes on each target.

Which targets apply is the caller's (the service's settings); locking is the caller's too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from ..errors import BackupError, HybridStoreError, PrimaryUnavailableError, WrongPassphraseError
from . import policy
from .primary_store import PrimaryBackupStore
from .repository import BackupInfo, Repository, resolve_id

log = logging.getLogger("hybridstore.backup")
Progress = Callable[[int, int], None]
Verify = Callable[[Path, Progress | None], tuple[int, int, int]]  # checks a whole file: (chunks, records, ops)


class BackupLocations:
    def __init__(
        self,
        repo: Repository,
        primary: PrimaryBackupStore,
        *,
        node_id: str,
        verify: Verify,
        clock: Callable[[], float],
    ) -> None:
        self.repo = repo
        self.primary = primary
        self._node_id = node_id
        self._verify = verify
        self._clock = clock
        self.last_upload_error: str | None = None

    # -- listing ----------------------------------------------------------------------------------------------

    def on_primary(self) -> dict[str, BackupInfo] | None:
        """The backups stored on the primary by id, or ``None`` when it cannot be asked now."""
        if not self.primary.available():
            return None
        try:
            return {b.id: b for b in self.primary.stored()}
        except HybridStoreError as exc:
            log.debug("backups on the primary not listed: %s", exc)
            return None

    def list_all(self) -> list[BackupInfo]:
        """Every backup in the directory or on the primary, newest first, each with its ``locations``. While the
        primary cannot be asked, the directory's backups only (``locations`` as last known here)."""
        local = self.repo.list()
        remote = self.on_primary()
        if remote is None:
            return local
        for b in local:
            b.locations = ["local", "primary"] if b.id in remote else ["local"]
        merged = remote | {b.id: b for b in local}
        return sorted(merged.values(), key=lambda b: (b.created_at, b.id), reverse=True)

    def resolve(self, ref: str) -> str:
        """A full backup id, from an id or a unique prefix, among the directory's and the primary's backups."""
        local = self.repo.ids()
        if ref in local:
            return ref
        remote = self.on_primary()
        if remote is None:
            return self.repo.resolve(ref)
        return resolve_id(ref, set(local) | set(remote), f"{self.repo.dir} or on the primary")

    def info(self, backup_id: str) -> BackupInfo:
        """What is known about one backup (a full id)."""
        for b in self.list_all():
            if b.id == backup_id:
                return b
        return self.repo.info(backup_id)  # raises BackupNotFoundError

    # -- fetching ---------------------------------------------------------------------------------------------

    def fetch(
        self, backup_id: str, *, register: bool, progress: Progress | None = None
    ) -> tuple[Path, tuple[int, int, int]]:
        """Download a backup from the primary and verify it completely; returns the file and what the check
        found. ``register``: the file is published in the directory (with the row's pin); otherwise it is a
        temporary file of the directory that the caller removes. Nothing is registered unless it verified."""
        tmp = self.repo.tmp_path(backup_id, ".download")
        pinned = self._pinned_on_primary(backup_id)
        self.primary.download(backup_id, tmp)
        try:
            try:
                checked = self._verify(tmp, progress)
            except WrongPassphraseError:
                raise  # the caller's mistake, not the file's
            except BackupError:
                with contextlib.suppress(HybridStoreError):
                    self.primary.set_flags(backup_id, verified=False)
                raise
            if not register:
                return tmp, checked
            path = self.repo.publish(tmp, backup_id)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self.repo.set_meta(backup_id, verified=True, verified_at=self._clock(), pinned=pinned, uploaded=True)
        log.info("backup %s fetched from the primary into %s", backup_id, self.repo.dir)
        return path, checked

    def _pinned_on_primary(self, backup_id: str) -> bool:
        found = self.primary.stored([backup_id])
        return bool(found and found[0].pinned)

    @contextlib.contextmanager
    def local_copy(self, backup_id: str, *, register: bool) -> Iterator[Path]:
        """A file of the backup to read: the directory's, else one fetched from the primary (see `fetch`)."""
        path = self.repo.path(backup_id)
        if path.exists():
            yield path
            return
        fetched, _ = self.fetch(backup_id, register=register)
        try:
            yield fetched
        finally:
            if not register:
                with contextlib.suppress(OSError):
                    fetched.unlink()

    # -- storing on the primary -------------------------------------------------------------------------------

    def pending_upload(self, targets: Collection[str]) -> list[BackupInfo]:
        """The directory's backups that belong on the primary and are not there yet (verified ones only: a file
        found damaged is not spread)."""
        if "primary" not in targets:
            return []
        return [
            b
            for b in self.repo.list()
            if b.kind != "unknown" and b.verified and not self.repo.meta(b.id).get("uploaded")
        ]

    def upload_pending(self, targets: Collection[str], ids: Collection[str] | None = None) -> int:
        """Store pending backups (``ids``: only these) on the primary, primary permitting; with ``targets``
        ``("primary",)`` the directory's copy is removed once the primary has it. A failure is logged and kept
        in ``last_upload_error``; the backup stays pending and is tried again by the next call. Returns how
        many were stored."""
        if not self.primary.available():
            return 0
        done = 0
        for b in self.pending_upload(targets):
            if ids is not None and b.id not in ids:
                continue
            try:
                self.primary.upload(self.repo.path(b.id), b)
            except (HybridStoreError, OSError) as exc:
                self.last_upload_error = f"backup {b.id} not stored on the primary yet: {exc}"
                log.warning("%s; it is tried again when the primary is back", self.last_upload_error)
                return done
            self.repo.set_meta(b.id, uploaded=True, uploaded_at=self._clock())
            if "local" not in targets:
                self.repo.delete(b.id)
            done += 1
        self.last_upload_error = None
        return done

    # -- deleting and pruning ---------------------------------------------------------------------------------

    def delete(self, backup_id: str) -> BackupInfo:
        """Delete a backup from every target: the primary first (so a failure there changes nothing), then the
        directory. A backup stored on the primary is not deleted while the primary cannot be reached."""
        info = self.info(backup_id)
        reachable = self.primary.available()
        if "primary" in info.locations and not reachable:
            raise PrimaryUnavailableError(
                f"backup {backup_id} is also stored on the primary, which cannot be reached now: nothing deleted; "
                "try again when it is back"
            )
        if reachable:
            self.primary.delete([backup_id])
        if self.repo.path(backup_id).exists():
            self.repo.delete(backup_id)
        return info

    def prune(self, targets: Collection[str], max_backups: int, *, dry_run: bool) -> list[BackupInfo]:
        """Apply retention to each target on its own: the directory's backups, and this node's uploads on the
        primary (another node's uploads are its own to prune). Each returned backup says in
        ``extra["pruned_from"]`` which targets it was (or, with ``dry_run``, would be) removed from."""
        readable = [b for b in self.repo.list() if b.kind != "unknown"]  # an unreadable file is kept for a look
        doomed: dict[str, BackupInfo] = {}
        for b in policy.choose_prunable(readable, max_backups):
            assert isinstance(b, BackupInfo)
            doomed[b.id] = b
            b.extra["pruned_from"] = ["local"]
        remote: list[BackupInfo] = []
        if "primary" in targets and self.primary.available():
            try:
                mine = [b for b in self.primary.stored() if b.extra.get("stored_by") == self._node_id]
            except HybridStoreError as exc:
                log.warning("retention not applied on the primary now: %s", exc)
                mine = []
            for b in policy.choose_prunable(mine, max_backups):
                assert isinstance(b, BackupInfo)
                remote.append(b)
                doomed.setdefault(b.id, b).extra.setdefault("pruned_from", []).append("primary")
        if not dry_run:
            if remote:
                try:
                    self.primary.drop_files([b.id for b in remote])
                except HybridStoreError as exc:
                    log.warning("retention not applied on the primary now: %s", exc)
                    for b in remote:
                        doomed[b.id].extra["pruned_from"].remove("primary")
            for b in doomed.values():
                if "local" in b.extra["pruned_from"]:
                    self.repo.delete(b.id)
        return sorted(
            (b for b in doomed.values() if b.extra["pruned_from"]), key=lambda b: (b.created_at, b.id), reverse=True
        )
