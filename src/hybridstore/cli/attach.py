"""Attaching to a running node: when ``hybridstore serve`` (or an application that serves its local socket, see
`hybridstore.web.local_socket`) runs on the data directory, the commands talk to it over its owner-only Unix
socket (``<data dir>/node.sock``) instead of opening the store.

- Reading commands (``status``, ``health``, ``alerts``, ``get``, ``list``, ``collections``, ``pending``,
  ``nodes``, ``backup list``) show the live node's state — ``health`` sees its outage — rather than a snapshot
  copy of its files.
- Mutating commands (``set``, ``delete``, ``sync``, ``backup create``) are done by the running node, through its
  REST API; the others say that the directory is in use, by which process, and what to use instead.
- No socket, or none that answers (a node that crashed leaves its file behind): the commands work as before
  (reading ones on a snapshot copy; see `open_store`).

Authentication is the socket's: only its owner can connect (mode 0600), and the node admits its owner with every
scope (actor ``local:<user>`` in the audit log). Nothing else is needed: no key, no token.
"""

from __future__ import annotations

import contextlib
import logging
import stat
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import httpx
import typer

from ..web.local_socket import short_path, socket_path
from .output import fail

log = logging.getLogger("hybridstore.cli")
API = "/api/v1"
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 120.0
BAD_INPUT = (400, 409, 412, 413, 415, 422)  # fix the command: exit code 2 (as for a local ValidationError)


class Attached:
    """A connection to the node serving the data directory's socket (see the module docstring)."""

    def __init__(self, client: httpx.Client, stack: ExitStack, path: Path) -> None:
        self.client = client
        self.path = path
        self._stack = stack

    def __enter__(self) -> Attached:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()
        self._stack.close()

    def get(self, path: str, *, params: dict[str, Any] | None = None, ok: tuple[int, ...] = (200,)) -> Any:
        """GET ``/api/v1<path>``: its JSON body (a problem answer stops the command with its message)."""
        return self.send("GET", path, params=params, ok=ok)

    def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 202),
    ) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.client.request(
                method, API + path, json=json, content=content, params=clean, headers=headers
            )
        except httpx.TransportError as exc:
            fail(f"the node serving {self.path} stopped answering: {exc}", kind="UnavailableError")
        if response.status_code not in ok:
            fail_with(response)
        return response.json()

    def follow(self, job: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Wait for a job the node started (a 202's body) to end; its result (a failed job stops the command)."""
        delay = 0.02
        while job["state"] == "running":
            time.sleep(delay)
            delay = min(0.5, delay * 2)
            job = self.get(f"/jobs/{job['id']}")
            if progress is not None and job.get("progress"):
                progress(job["progress"])
        if job["state"] != "succeeded":
            problem = job.get("problem") or {}
            status = int(problem.get("status", 500))
            fail(
                str(problem.get("detail") or f"the node's {job['kind']} job {job['state']}"),
                code=2 if status in BAD_INPUT else 1,
                kind=_kind(problem),
            )
        return job["result"]


def _kind(problem: dict[str, Any]) -> str:
    slug = str(problem.get("type", "")).rsplit(":", 1)[-1]
    return "".join(part.capitalize() for part in slug.split("-")) + "Error" if slug else "Error"


def fail_with(response: httpx.Response) -> NoReturn:
    """Stop the command with the node's problem answer (exit code 2 for bad input, else 1)."""
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    detail = problem.get("detail") or f"the node answered {response.status_code}"
    fail(str(detail), code=2 if response.status_code in BAD_INPUT else 1, kind=_kind(problem))


def connect(ctx: typer.Context) -> Attached | None:
    """The running node of ``--data-dir``, if one answers on its socket; else ``None`` (work locally)."""
    path = socket_path(ctx.obj.data_dir)
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return None
    except OSError:
        return None
    stack = ExitStack()
    try:
        address = stack.enter_context(short_path(path))
        client = httpx.Client(
            transport=httpx.HTTPTransport(uds=address),
            base_url="http://hybridstore-node",
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        )
    except OSError as exc:
        stack.close()
        log.debug("cannot attach to %s: %s", path, exc)
        return None
    stack.callback(client.close)
    try:
        answered = client.get("/healthz").status_code == 200
    except httpx.HTTPError as exc:  # refused (a stale file), not ours to open, or not an HTTP server
        log.debug("no node answers on %s: %s", path, exc)
        answered = False
    if not answered:
        with contextlib.suppress(Exception):
            stack.close()
        return None
    log.debug("attached to the node serving %s", path)
    return Attached(client, stack, path)


__all__ = ["API", "Attached", "connect", "fail_with"]
