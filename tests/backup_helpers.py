"""Helpers for the backup tests: a fast KDF, a dump of a store's live records, and a frame walker."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import hybridstore
from hybridstore.backup import BackupService
from hybridstore.backup.crypto import KdfParams
from hybridstore.backup.format import FRAME, HEADER_SHA_BYTES, HEADER_TAG_BYTES, PREAMBLE, read_header

FAST_KDF = KdfParams(n=2**4, r=8, p=1)  # tests only: the real default costs ~0.1 s per key


def service(store: hybridstore.HybridStore, **options: Any) -> BackupService:
    options.setdefault("kdf", FAST_KDF)
    options.setdefault("start", False)
    return BackupService(store.node, writer=store.node.router, **options)


def dump(store: hybridstore.HybridStore, collections: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in collections:
        after = None
        rows: dict[str, Any] = {}
        while True:
            page = store.list(c, limit=1000, after=after)
            rows.update((r.key, r.value) for r in page)
            if page.next_after is None:
                break
            after = page.next_after
        if rows:
            out[c] = rows
    return out


def frames(path: Path) -> list[tuple[int, int]]:
    """(offset, length incl. the 5-byte frame header) of every chunk of a backup file."""
    data = path.read_bytes()
    (_, _, hlen) = PREAMBLE.unpack(data[: PREAMBLE.size])
    pos = PREAMBLE.size + hlen + HEADER_SHA_BYTES
    if read_header(path)["cipher"]["name"] != "none":
        pos += HEADER_TAG_BYTES
    out = []
    while pos < len(data):
        (length, _flags) = FRAME.unpack(data[pos : pos + FRAME.size])
        out.append((pos, FRAME.size + length))
        pos += FRAME.size + length
    return out


def flip(data: bytes, i: int, mask: int = 0x01) -> bytes:
    return data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]


__all__ = ["FAST_KDF", "dump", "flip", "frames", "service", "struct"]
