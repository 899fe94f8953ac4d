"""A TCP proxy between the store and PostgreSQL that a test can cut, black-hole and restore.

- ``cut()``: new connections are refused (the listener is closed) and open ones are reset.
- ``blackhole()``: connections are accepted and bytes are read, but nothing is ever forwarded or answered.
- ``restore()``: traffic flows again (open connections stay dead; clients reconnect).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from random import Random
from urllib.parse import urlsplit, urlunsplit

import pytest

_rng = Random()


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.port = 0
        self._listener: socket.socket | None = None
        self._listen()
        self.accepted = 0

    def _listen(self) -> None:
        # A port outside the ephemeral range: after cut() closes the listener, an ephemeral port could be handed to
        # some outgoing connection in the meantime and restore() could not bind it again.
        for _ in range(100):
            port = self.port or _rng.randrange(20000, 32000)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                if self.port:
                    time.sleep(0.05)  # restore(): our own port, briefly busy; try again
                continue
            break
        else:
            raise OSError("no free port for the test proxy")
        sock.listen(64)
        self.port = port
        self._listener = sock
        threading.Thread(target=self._accept_loop, args=(sock,), name="proxy-accept", daemon=True).start()

    def url(self, dsn: str) -> str:
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "blackhole":
                self._track(client)
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._track(client)
            self._track(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.append(sock)

    def _swallow(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):
            while not self._stop.is_set():
                r, _, _ = select.select([sock], [], [], 0.2)
                if r and not sock.recv(65536):
                    return

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                r, _, _ = select.select([a, b], [], [], 0.2)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    if self.mode == "pass":
                        peers[s].sendall(data)
                    # blackhole: read and drop, both ways
        except (OSError, ValueError):  # ValueError: the socket was closed by cut()/restore()
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def _reset_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()

    def cut(self) -> None:
        self.mode = "cut"
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._reset_all()

    def blackhole(self) -> None:
        if self._listener is None:
            self._listen()
        self.mode = "blackhole"

    def restore(self) -> None:
        if self.mode == "blackhole":
            self._reset_all()  # connections that swallowed data are out of sync; a real network would time out
        self.mode = "pass"
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        self._reset_all()


@pytest.fixture
def proxy(pg_dsn: str) -> Iterator[Proxy]:
    parts = urlsplit(pg_dsn)
    p = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield p
    p.close()


@pytest.fixture
def proxied_dsn(proxy: Proxy, pg_dsn: str) -> str:
    return proxy.url(pg_dsn)


__all__ = ["Proxy"]
