"""Streamed uploads: a request body written to a temporary file in the data directory as it arrives, never held
in memory whole (``POST /api/v1/backups/import``).

The file is ``<data dir>/.upload-<random>.part``, owner-only; `Upload` removes it when the work that uses it ends,
and when the client goes away mid-upload, so a failed upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from starlette.requests import Request

from .problems import WebError

BINARY_TYPES = ("application/octet-stream", "application/vnd.hybridstore.backup")
FLUSH_BYTES = 1 << 20  # received bytes are written in pieces of about this size (one worker-thread call each)


class Upload:
    """A received body in a file of its own (see the module docstring)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


async def receive_file(request: Request, directory: Path, run: Callable[[Callable[[], Any]], Awaitable[Any]]) -> Upload:
    """Stream the body of ``request`` into a new file in ``directory`` (415 unless it is sent as binary); blocking
    file work goes through ``run`` (a worker thread). The body size limit applies as it arrives."""
    media = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if media not in BINARY_TYPES:
        raise WebError(
            415, "unsupported-media-type", "Unsupported media type", "send the file as application/octet-stream"
        )
    fd, name = await run(lambda: tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=directory))
    path = Path(name)
    size = 0
    try:
        f: BinaryIO = os.fdopen(fd, "wb")
        with f:
            pending: list[bytes] = []
            buffered = 0
            async for chunk in request.stream():
                if not chunk:
                    continue
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= FLUSH_BYTES:
                    data, pending, buffered = b"".join(pending), [], 0
                    await run(functools.partial(f.write, data))
                    size += len(data)
            if pending:
                data = b"".join(pending)
                await run(functools.partial(f.write, data))
                size += len(data)
            await run(functools.partial(_sync, f))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    if size == 0:
        path.unlink()
        raise WebError(400, "empty-body", "Empty body", "send the backup file as the request body")
    return Upload(path, size)
