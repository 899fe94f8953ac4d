"""A PgBouncer of the test's own, in transaction mode, in front of the test server.

Debian's ``pgbouncer`` package; it refuses to run as root, so it runs as the ``postgres`` user (started directly
as that user, not through ``runuser``, so that a stopped pgbouncer does not stop a parent too) with its files in
a directory of its own. It listens on a free local port that says nothing about pooling (not 6543), so a store
must tell from the server's behaviour that it talks to a transaction-mode pooler. ``kill()`` (SIGKILL),
``freeze()`` / ``thaw()`` (SIGSTOP / SIGCONT) and ``start()`` let a test break it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from .fix_cluster import _free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class PgBouncer:
    def __init__(
        self, target_dsn: str, *, ignore_options: bool = True, pool_size: int = 10, pool_mode: str = "transaction"
    ) -> None:
        if not os.path.exists(PGBOUNCER):
            raise RuntimeError("these tests need PgBouncer: apt-get install pgbouncer (Debian's package)")
        parts = urlsplit(target_dsn)
        self.target_host = parts.hostname or "127.0.0.1"
        self.target_port = parts.port or 5432
        self.dir = Path(tempfile.mkdtemp(prefix="hs-pgb-"))
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        self.ignore_options = ignore_options
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        self._write_config()
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            for f in self.dir.iterdir():
                shutil.chown(f, "postgres", "postgres")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def _write_config(self) -> None:
        ignore = (
            "ignore_startup_parameters = extra_float_digits, options\n"
            if self.ignore_options
            else ("ignore_startup_parameters = extra_float_digits\n")
        )
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.target_host} port={self.target_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.dir}\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
            "server_check_delay = 0\n" + ignore
        )

    def url(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by this PgBouncer's."""
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    def start(self) -> None:
        cmd = [PGBOUNCER, str(self.dir / "pgbouncer.ini")]
        who: dict[str, Any] = {"user": "postgres", "group": "postgres", "extra_groups": []} if self._as_postgres else {}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **who)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"pgbouncer exited at start: {err}{self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"pgbouncer did not listen on {self.port}: {self.log()}")

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: every client connection drops at once."""
        self._signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)
        with socket.socket() as s:  # the listening port is free again
            deadline = time.monotonic() + 5
            while s.connect_ex(("127.0.0.1", self.port)) == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        (self.dir / "pgbouncer.pid").unlink(missing_ok=True)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing answers (the kernel still accepts and acknowledges)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text()[-2000:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pgbouncer(pg_dsn: str) -> Iterator[PgBouncer]:
    """Transaction mode, ``ignore_startup_parameters = options`` (a common setting)."""
    bouncer = PgBouncer(pg_dsn)
    try:
        yield bouncer
    finally:
        bouncer.close()


@pytest.fixture
def pgbouncer_strict(pg_dsn: str) -> Iterator[PgBouncer]:
    """Transaction mode with PgBouncer's default: the ``options`` startup parameter is refused."""
    bouncer = PgBouncer(pg_dsn, ignore_options=False)
    try:
        yield bouncer
    finally:
        bouncer.close()


__all__ = ["PgBouncer"]
