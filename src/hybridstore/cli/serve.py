"""``serve``: run the node as a service — the store with its background work (sync, health monitor, scheduled and
emergency backups) and the HTTP API (`hybridstore.web.create_app`) under uvicorn.

It also serves the same API on an owner-only Unix socket in the data directory (``node.sock``, see
`hybridstore.web.local_socket`), which the CLI's commands use to attach to the running node.

It never starts open, and it needs no configuration: with no active API key in the data directory and no
``HYBRIDSTORE_ADMIN_TOKEN``, it creates one admin key (named ``setup``), prints it once on standard error with how
to replace it, and serves. With no admin user of the web UI and no ``HYBRIDSTORE_ADMIN_TOKEN``, it prints a
one-time setup link (``/admin/setup?token=…``) that creates the first user (a new link at each start, until a
user exists). On SIGTERM or SIGINT it stops accepting connections, lets the requests in flight finish (at most
``--graceful-timeout`` seconds), waits for running jobs (sync, backup, restore; at most ``--jobs-timeout``
seconds), then closes the store cleanly (queued writes stay queued for the next start) and exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from ..config import resolve
from ..errors import ConfigError, HybridStoreError, PrimaryRejectedError, PrimaryUnavailableError, ValidationError
from ..store import HybridStore
from ..web import local_socket
from ..web.keys import ApiKeyStore, KeyStore
from ..web.users import SetupTokens
from ..web.webdb import WebDatabase
from .app import Settings, app, err, fail

log = logging.getLogger("hybridstore.serve")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
SETUP_KEY = """no API key was configured and HYBRIDSTORE_ADMIN_TOKEN is not set, so an admin key was created.
It is shown this once; keep it (it is stored hashed):
    {token}
Use it as `Authorization: Bearer <key>`. Create your own keys with `hybridstore{dir} apikey create --name NAME
--scope read|write|admin`, then revoke this one: `hybridstore{dir} apikey revoke {name}`."""
SETUP_LINK = """no admin user exists for the web UI: open this one-time link to create the first one
    {url}
(or run `hybridstore{dir} admin add-user NAME`)."""


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", envvar="HYBRIDSTORE_HTTP_HOST", help="Address to listen on.")
    ] = DEFAULT_HOST,
    port: Annotated[
        int, typer.Option("--port", "-p", envvar="HYBRIDSTORE_HTTP_PORT", help="TCP port.", min=1, max=65535)
    ] = DEFAULT_PORT,
    ssl_certfile: Annotated[str | None, typer.Option("--ssl-certfile", help="TLS certificate (PEM).")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option("--ssl-keyfile", help="TLS private key (PEM).")] = None,
    ssl_keyfile_password: Annotated[
        str | None,
        typer.Option("--ssl-keyfile-password", envvar="HYBRIDSTORE_SSL_KEYFILE_PASSWORD", help="The key's password."),
    ] = None,
    ssl_ca_certs: Annotated[
        str | None, typer.Option("--ssl-ca-certs", help="CA bundle to verify client certificates.")
    ] = None,
    graceful_timeout: Annotated[
        float, typer.Option("--graceful-timeout", help="Seconds to let requests in flight finish on shutdown.")
    ] = 30.0,
    jobs_timeout: Annotated[
        float, typer.Option("--jobs-timeout", help="Seconds to wait for running jobs before closing the store.")
    ] = 300.0,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = True,
    docs_ui: Annotated[bool, typer.Option("--docs/--no-docs", help="Serve the API docs page at /api/v1/docs.")] = True,
) -> None:
    """Serve the REST API (/api/v1), /metrics, /healthz and /readyz, with sync, health monitor and backups running."""
    try:
        import uvicorn

        from ..web.app import context_of, create_app
        from ..web.auth import admin_token_from_env
    except ImportError as exc:
        fail(f"the HTTP service needs the web extra ({exc.name} is missing): pip install 'hybridstore[web]'", code=2)
    settings: Settings = ctx.obj
    options: dict[str, Any] = {"background": True}
    if settings.schema:
        options["primary_schema"] = settings.schema
    if settings.timeout:
        options["primary_timeout"] = settings.timeout
    try:
        config = resolve(primary_url=settings.primary_url, data_dir=settings.data_dir, **options)
        token = admin_token_from_env()
    except (ConfigError, ValueError) as exc:
        fail(str(exc), code=2)
    setup_link = None if token is not None else _setup_link(config.data_dir)
    try:
        store = HybridStore(config)
    except HybridStoreError as exc:
        fail(str(exc), code=2 if isinstance(exc, ConfigError) else 1)
    stopping: list[int] = []

    def note_signal(sig: int, frame: FrameType | None) -> None:
        stopping.append(sig)  # uvicorn handles the signal while it runs, then raises it again here: already done

    previous = {sig: signal.signal(sig, note_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        web = create_app(store, admin_token=token, docs_ui=docs_ui)
        web_ctx = context_of(web)
        if token is None:
            created = _setup_key(web_ctx.keys, web_ctx.local_keys)
            if created is not None:
                dir_option = f" --data-dir {settings.data_dir}" if settings.data_dir else ""
                text = SETUP_KEY.format(token=created[1], dir=dir_option, name=created[0])
                err.print(text, highlight=False, markup=False, soft_wrap=True)
        server_config = uvicorn.Config(
            web,
            host=host,
            port=port,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            ssl_keyfile_password=ssl_keyfile_password,
            ssl_ca_certs=ssl_ca_certs,
            timeout_graceful_shutdown=max(1, round(graceful_timeout)),
            access_log=access_log,
            log_level=logging.getLogger().getEffectiveLevel(),
            log_config=None,  # the CLI's logging (--log-level) applies to uvicorn too
            server_header=False,
        )

        def drain() -> None:
            web_ctx.draining = True

        server = _server(server_config, on_exit=drain)
        local = _local_server(web, log_level=server_config.log_level, graceful_timeout=graceful_timeout)
        unix_socket: socket.socket | None = None
        try:
            unix_socket = local_socket.bind(store.data_dir)
            also = f" and on the local socket {local_socket.socket_path(store.data_dir)}"
        except OSError as exc:  # e.g. a file system without sockets: the CLI cannot attach, the API still serves
            log.warning("no local socket (the CLI cannot attach to this node): %s", exc)
            also = ""
        scheme = "https" if ssl_certfile else "http"
        err.print(
            f"hybridstore node {store.node_id} serving on {scheme}://{host}:{port}{also} (data in {store.data_dir})",
            soft_wrap=True,
        )
        err.print(f"admin UI: {scheme}://{_browsable(host)}:{port}/admin/", soft_wrap=True, highlight=False)
        if setup_link is not None:
            url = f"{scheme}://{_browsable(host)}:{port}/admin/setup?token={setup_link}"
            dir_option = f" --data-dir {settings.data_dir}" if settings.data_dir else ""
            err.print(SETUP_LINK.format(url=url, dir=dir_option), highlight=False, markup=False, soft_wrap=True)
        web.state.live.start()  # the overview's charts cover the node's whole last hour
        try:
            asyncio.run(_serve_both(server, local, unix_socket))
        finally:
            if unix_socket is not None:
                unix_socket.close()
                local_socket.remove(store.data_dir)
        web_ctx.draining = True
        web.state.live.stop()
        if not web_ctx.jobs.wait(jobs_timeout):
            log.error("jobs still running after %.0f s: closing the store under them", jobs_timeout)
        web_ctx.close()
    finally:
        store.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    err.print("stopped: the store is closed (queued writes stay queued for the next start)")


def _setup_key(keys: KeyStore, local: ApiKeyStore) -> tuple[str, str] | None:
    """With no active key where keys live (the primary when one is configured, else ``web.db``), create an admin
    key named ``setup`` there; (name, token), or ``None`` when there are keys. A primary that cannot be reached
    at start: the key is this node's own (``web.db``), so the node never starts open nor locked out."""
    try:
        if keys.has_active():
            return None
        where: KeyStore = keys
    except (PrimaryUnavailableError, PrimaryRejectedError) as exc:
        log.warning("cannot ask the primary for API keys (%s): looking at this node's own", exc)
        if local.has_active():
            return None
        where = local
    for name in ("setup", f"setup-{secrets.token_hex(3)}"):  # "setup" may exist already, revoked
        try:
            key, token = where.create(name, ["admin"])
        except ValidationError:
            continue
        return key.name, token
    raise ConfigError("could not create a setup API key; create one with `hybridstore apikey create`")


def _setup_link(data_dir: os.PathLike[str] | str) -> str | None:
    """A one-time setup token when the web UI has no admin user yet, else ``None``."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    db = WebDatabase.in_dir(data_dir)
    try:
        if db.query("SELECT 1 FROM admin_users LIMIT 1"):
            return None
        return SetupTokens(db).create()
    finally:
        db.close()


def _browsable(host: str) -> str:
    """The host to put in a link: a wildcard address is not one a browser can open."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def _serve_both(server: Any, local: Any, unix_socket: socket.socket | None) -> None:
    """The TCP server and the local socket's server on one event loop (so they share the app and its state).
    The TCP server handles the signals; when it has stopped, the local one stops too (letting its requests
    finish)."""
    if unix_socket is None:
        await server.serve()
        return
    local_task = asyncio.create_task(local.serve(sockets=[unix_socket]), name="hybridstore-local-socket")
    try:
        await server.serve()
    finally:
        local.should_exit = True
        await local_task


def _local_server(app: Any, *, log_level: Any, graceful_timeout: float) -> Any:
    """The uvicorn server of the local socket (see `hybridstore.web.local_socket`): the same app, marked as a
    local peer's; no lifespan (the TCP server runs it), no signal handling of its own, no access log."""
    import uvicorn

    class LocalServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the TCP server's handlers stop both

    config = uvicorn.Config(
        local_socket.LocalPeer(app),
        lifespan="off",
        access_log=False,
        log_level=log_level,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(graceful_timeout)),
        server_header=False,
    )
    return LocalServer(config)


def _server(config: Any, *, on_exit: Callable[[], None]) -> Any:
    """A uvicorn server that calls ``on_exit`` as soon as it starts stopping (so /readyz answers 503 from then)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            on_exit()
            super().handle_exit(sig, frame)

    return Server(config)
