"""The data directory as the command line sees it, checked before a store is opened.

- Commands that only read (``status``, ``get``, ``list`` …) never create a store: a directory that does not exist
  or holds no store is a mistake in ``--data-dir`` / ``HYBRIDSTORE_DATA_DIR``, and says so (exit code 2).
- A data directory this process may not write (read-only, or owned by someone else), or one in use by a running
  process, can still be inspected: reading commands open a snapshot copy of it (`snapshot`), never the files.
- A path that is a file, lies under a file, or is empty is refused with a message, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

# Files a store creates when it is first opened; any one of them means "a store lives here".
STORE_MARKERS = ("local.db", "journal.log", "node_id")
# What a snapshot copies: the SQLite databases (consistently, through SQLite), the journal and the node id.
_DATABASES = ("local.db", "recovery.db")
_FILES = ("journal.log", "node_id")


def location_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a data directory at all (a file, under a file, empty), or ``None``."""
    if str(path) == "":
        return "the data directory is empty (''): pass a directory with --data-dir or HYBRIDSTORE_DATA_DIR"
    if path.exists() and not path.is_dir():
        return f"data directory {path} is a file, not a directory: check --data-dir / HYBRIDSTORE_DATA_DIR"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"data directory {path} lies under {parent}, which is a file, not a directory"
            break
    return None


def holds_store(path: Path) -> bool:
    return any((path / name).exists() for name in STORE_MARKERS)


def writable(path: Path) -> bool:
    """May this process create, lock and change the files of the data directory ``path`` (an existing one)?"""
    if not os.access(path, os.W_OK | os.X_OK):
        return False
    files = [path / "lock", *(path / name for name in (*_DATABASES, *_FILES))]
    return all(os.access(f, os.W_OK) for f in files if f.exists())


def readable(path: Path) -> str | None:
    """Why the files of the data directory ``path`` cannot be read (for a snapshot), or ``None``."""
    if not os.access(path, os.R_OK | os.X_OK):
        return f"cannot read data directory {path}: permission denied"
    for name in (*_DATABASES, *_FILES):
        f = path / name
        if f.exists() and not os.access(f, os.R_OK):
            return f"cannot read {f}: permission denied"
    return None


def lock_holder(path: Path) -> int | None:
    """The process id of the store holding the data directory ``path`` (written in its ``lock`` file), if known."""
    try:
        text = (path / "lock").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def snapshot(path: Path, backups: Path) -> Iterator[Path]:
    """A temporary copy of the store in ``path``, removed afterwards: SQLite files through SQLite's online backup
    (consistent even while another process writes them), the journal and node id as files, and the backup
    repository ``backups`` as ``backups/`` of links to its finished files — never the directory itself, whose
    temporary files belong to whoever is writing a backup there. Opening the copy changes nothing in ``path``."""
    with tempfile.TemporaryDirectory(prefix="hybridstore-snapshot-", ignore_cleanup_errors=True) as tmp:
        target = Path(tmp)
        for name in _DATABASES:
            if (path / name).exists():
                _copy_database(path / name, target / name)
        for name in _FILES:
            if (path / name).exists():
                shutil.copyfile(path / name, target / name)
        (target / "backups").mkdir()
        if backups.is_dir():
            for item in backups.iterdir():
                if not item.name.startswith(".") and item.suffix in (".hsb", ".json") and item.is_file():
                    (target / "backups" / item.name).symlink_to(item.resolve())
        yield target


def _copy_database(source: Path, target: Path) -> None:
    try:
        src = sqlite3.connect(f"file:{quote(str(source.resolve()))}?mode=ro", uri=True, timeout=5.0)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error:
        # SQLite cannot read it in place (a write-ahead log it may not index in a read-only directory, or a
        # damaged file): copy the files as they are; opening the copy recovers or reports the damage.
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        for suffix in ("", "-wal"):
            if source.with_name(source.name + suffix).exists():
                shutil.copyfile(source.with_name(source.name + suffix), target.with_name(target.name + suffix))


__all__ = ["STORE_MARKERS", "holds_store", "location_problem", "lock_holder", "readable", "snapshot", "writable"]
