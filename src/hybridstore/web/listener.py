"""`serve_local_socket(store)`: an application that opened a store itself serves the node's local socket
(``<data dir>/node.sock``, see `local_socket`) from a thread, so ``hybridstore status``, ``health``, ``set`` …
attach to it while it runs, exactly as they do to ``hybridstore serve``::

    store = hybridstore.open(url, data_dir="data")
    hybridstore.web.serve_local_socket(store)   # stopped when the store closes

Only the socket is served (no TCP port, so no API key is needed or created): whoever can connect to it is the
data directory's owner. It runs `create_app(store)` under uvicorn in a daemon thread with an event loop of its
own, and stops (letting requests in flight and jobs finish) before the store closes.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from . import local_socket

if TYPE_CHECKING:
    from ..store import HybridStore

log = logging.getLogger("hybridstore.web")


class LocalSocketServer:
    """See the module docstring. `start` once; `stop` is idempotent (and runs when the store closes)."""

    def __init__(self, store: HybridStore, *, jobs_timeout: float = 60.0, **app_options: Any) -> None:
        self.store = store
        self.jobs_timeout = jobs_timeout
        self._options = app_options
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._ctx: Any = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def path(self) -> str:
        return str(local_socket.socket_path(self.store.data_dir))

    def start(self, *, timeout: float = 10.0) -> LocalSocketServer:
        import uvicorn

        from .app import context_of, create_app

        app = create_app(self.store, **{"admin_token": None, "docs_ui": False, **self._options})
        self._ctx = context_of(app)
        self._socket = local_socket.bind(self.store.data_dir)
        config = uvicorn.Config(
            local_socket.LocalPeer(app), lifespan="off", access_log=False, log_config=None, server_header=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="hybridstore-local-socket", daemon=True
        )
        self._thread.start()
        self.store.node.on_close(self.stop)
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"could not serve the local socket {self.path} (see the log)")
            time.sleep(0.01)
        log.info("serving the local socket %s", self.path)
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop serving (requests in flight and running jobs finish first); True when the thread ended."""
        with self._lock:
            if self._stopped:
                return True
            self._stopped = True
        ended = True
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
        if self._ctx is not None:
            self._ctx.draining = True
            if not self._ctx.jobs.wait(self.jobs_timeout):
                log.error("jobs still running after %.0f s: the store closes under them", self.jobs_timeout)
            self._ctx.close()
        if self._socket is not None:
            self._socket.close()
        local_socket.remove(self.store.data_dir)
        return ended


def serve_local_socket(store: HybridStore, **options: Any) -> LocalSocketServer:
    """Serve ``store``'s local socket from a thread until the store closes (see the module docstring);
    ``options`` go to `create_app`."""
    return LocalSocketServer(store, **options).start()
