"""The node's local socket: the same app (`create_app`) served on a Unix socket in the data directory
(``<data dir>/node.sock``), so the CLI on the same machine can attach to a running node (``hybridstore status``,
``health``, ``set`` … while ``serve`` runs; see ``cli/attach.py``).

**Authentication is the file's ownership.** The socket is created owner-only (mode 0600, set before it listens,
so there is no moment it accepts anyone else): only the user the node runs as (and root) can connect, the same
people who can read and write the data directory's files anyway. A request that arrives on it is marked
(`LocalPeer`) and `AuthMiddleware` admits it with every scope, as the actor ``local:<user>`` in the audit log;
the mark is put there by the server, never read from the request, so nothing sent over TCP can claim it.

Unix socket paths are limited to about 100 bytes; a deeper data directory is reached through
``/proc/self/fd/<directory fd>/node.sock`` (Linux), by the server and the client alike (`short_path`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no import of Starlette at run time: the CLI uses `socket_path` without the web extra
    from starlette.types import ASGIApp, Receive, Scope, Send

SOCKET_FILE = "node.sock"
LOCAL_PEER_KEY = "hybridstore.local_peer"  # set in the ASGI scope of requests that came in on the socket
MAX_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on BSDs


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / SOCKET_FILE


def local_actor() -> str:
    """The audit log's actor for a request that came in on the socket: the user this process runs as."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"local:uid-{os.getuid()}"


class LocalPeer:
    """Wraps the app served on the socket: marks every request as a local peer's (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, LOCAL_PEER_KEY: True}
        await self.app(scope, receive, send)


@contextlib.contextmanager
def short_path(path: Path) -> Iterator[str]:
    """A path to ``path`` short enough for a Unix socket address: itself, or one through an open descriptor of
    its directory (kept open for the block's duration)."""
    text = str(path)
    if len(text.encode()) <= MAX_PATH or not Path("/proc/self/fd").is_dir():
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind(data_dir: str | os.PathLike[str]) -> socket.socket:
    """A Unix socket bound at ``<data dir>/node.sock``, mode 0600, not yet listening (the server listens).

    Call it only while holding the data directory's lock: a socket file found there is a dead node's (stale)
    and is replaced."""
    path = socket_path(data_dir)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_path(path) as address:
            sock.bind(address)
        os.chmod(path, 0o600)  # before listen(): until then every connection is refused
    except BaseException:
        sock.close()
        raise
    return sock


def remove(data_dir: str | os.PathLike[str]) -> None:
    """Remove the socket file (when the node stops)."""
    path = socket_path(data_dir)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
