"""The one error tree of hybridstore.

Branches are grouped by what the caller does next: retry later (`UnavailableError`), rebuild
(`CorruptionError`), fix the input (`ValidationError`), fix the configuration (`ConfigError`).
"""

from __future__ import annotations


class HybridStoreError(Exception):
    """Root of every error hybridstore raises on purpose."""


class UnavailableError(HybridStoreError):
    """A tier could not be reached in time; retrying later may succeed."""


class PrimaryUnavailableError(UnavailableError):
    """The primary PostgreSQL is down, unreachable, too slow, or its circuit is open."""


class PrimaryTimeoutError(PrimaryUnavailableError):
    """The primary did not answer within the configured timeout (slow or black-holed)."""


class PrimaryMisconfiguredError(PrimaryUnavailableError):
    """The primary answers but refuses this node: authentication, database, role or a privilege is wrong. Writes
    are queued locally; fix the URL or the grants (the message names what was refused)."""


class PrimaryRejectedError(HybridStoreError):
    """The primary refused the operation itself (not a connectivity problem); retrying will not help."""


class LocalStoreError(HybridStoreError):
    """The local SQLite tier failed (I/O error, full disk, locked beyond the timeout)."""


class CorruptionError(LocalStoreError):
    """A local file is corrupt; the store can be rebuilt from the primary, journal and outbox."""


class JournalError(HybridStoreError):
    """The emergency journal could not be written or read; nothing was acknowledged."""


class StorageExhaustedError(UnavailableError):
    """Every tier refused the write (primary, SQLite and journal); the write was NOT saved."""


class ConflictError(HybridStoreError):
    """A write conflicts with a newer version on the primary."""


class ValidationError(HybridStoreError, ValueError):
    """Bad input (collection name, key or value); nothing was written."""


class ConfigError(HybridStoreError, ValueError):
    """Bad configuration (URL, option, environment variable); fix it and open the store again."""


class StoreLockedError(ConfigError):
    """The data directory is already open in another process."""


class ClosedError(HybridStoreError):
    """The store was used after `close()`."""


class BackupError(HybridStoreError):
    """A backup could not be created, read or restored."""


class BackupTamperedError(BackupError):
    """A backup file failed its integrity checks: it was changed, truncated or reordered."""


class WrongPassphraseError(BackupError):
    """The passphrase does not open this backup."""


class NotABackupError(BackupError):
    """The file is not a hybridstore backup at all (wrong magic bytes or far too short)."""


class BackupNotFoundError(BackupError):
    """No backup with this id in the repository."""
