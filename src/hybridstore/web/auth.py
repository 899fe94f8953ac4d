"""Who is calling, and may they: bearer tokens (API keys, ``HYBRIDSTORE_ADMIN_TOKEN``) and scopes.

Two steps, so that nothing is routed, parsed or validated for an anonymous caller:

1. `AuthMiddleware` (pure ASGI, outermost but for the body limit) authenticates: every path except the public
   ones (``/healthz``, ``/readyz``, the docs page and its static assets, the admin UI's login page and assets)
   needs ``Authorization: Bearer <token>`` naming an active key (or the admin token), or the admin UI's session
   cookie (`SessionAuth`: then a state-changing request must also carry its CSRF token, else 403); otherwise
   401, for unknown paths too (no route map for strangers), or a redirect to the login page for a browser
   asking for an admin page. The caller (`Principal`) is put in the ASGI scope. A request that came in on the
   node's owner-only Unix socket (`local_socket`) is the node's own user: every scope, actor ``local:<user>``.
2. Each route declares the scope it needs (`Requirement`, a FastAPI dependency): 403 if the caller lacks it.

Looking a key up reads ``web.db`` (in a worker thread); a successful lookup is remembered for ``cache_ttl``
seconds (1 s), so a key revoked by the CLI stops working within a second.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from .keys import SCOPES, KeyStore, grants
from .local_socket import LOCAL_PEER_KEY, local_actor
from .problems import MEDIA_TYPE, Problem, WebError

ADMIN_TOKEN_ENV = "HYBRIDSTORE_ADMIN_TOKEN"
PRINCIPAL_KEY = "hybridstore.principal"  # where the middleware leaves the caller in the ASGI scope
MIN_ADMIN_TOKEN = 16


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``actor`` is what the audit log records."""

    actor: str
    scopes: frozenset[str]
    key_id: str | None = None
    session: str | None = None  # the admin UI's session id, when the caller came with its cookie

    def allows(self, scope: str) -> bool:
        return grants(self.scopes, scope)


def admin_token_from_env(env: dict[str, str] | None = None) -> str | None:
    """``HYBRIDSTORE_ADMIN_TOKEN`` if set (at least 16 characters, else `ValueError`: a short one is guessable)."""
    token = (os.environ if env is None else env).get(ADMIN_TOKEN_ENV) or None
    if token is not None and len(token) < MIN_ADMIN_TOKEN:
        raise ValueError(f"{ADMIN_TOKEN_ENV} must be at least {MIN_ADMIN_TOKEN} characters")
    return token


class Authenticator:
    """Token → `Principal` (see the module docstring). ``lookup`` runs blocking reads; ``run`` offloads them."""

    def __init__(
        self,
        keys: KeyStore,
        *,
        admin_token: str | None,
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        cache_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self._admin_digest = None if admin_token is None else hashlib.sha256(admin_token.encode()).digest()
        self._run = run
        self._ttl = cache_ttl
        self._clock = clock
        self._cache: dict[bytes, tuple[float, Principal]] = {}  # by the token's digest

    async def authenticate(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        if self._admin_digest is not None and hmac.compare_digest(digest, self._admin_digest):
            return Principal("admin-token", frozenset(SCOPES))
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        key = await self._run(lambda: self.keys.lookup(token))
        if key is None:
            self._cache.pop(digest, None)
            return None
        principal = Principal(f"key:{key.name}", key.scopes, key.id)
        if len(self._cache) > 10_000:  # many distinct valid keys: start over rather than grow without bound
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal


class SessionAuth(Protocol):
    """The admin UI's browser sessions, as the middleware sees them (`hybridstore.web.admin.session.SessionGate`)."""

    async def principal(self, scope: Scope) -> Principal | None: ...

    async def check_csrf(self, scope: Scope, receive: Receive, principal: Principal) -> Receive | None: ...

    def login_redirect(self, scope: Scope) -> str | None: ...


def route_path(scope: Scope) -> str:
    """The path inside this app (without the prefix it is mounted under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class AuthMiddleware:
    """Step 1 of the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        public: Callable[[str], bool],
        sessions: SessionAuth | None = None,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public = public
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the API has none: refuse rather than let one through unauthenticated
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or self.public(route_path(scope)):
            await self.app(scope, receive, send)
            return
        if scope.get(LOCAL_PEER_KEY) is True:  # came in on the node's owner-only Unix socket (local_socket.py)
            scope[PRINCIPAL_KEY] = Principal(local_actor(), frozenset(SCOPES))
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        principal = None if token is None else await self.authenticator.authenticate(token)
        if principal is None and token is None and self.sessions is not None:
            principal = await self.sessions.principal(scope)
            if principal is None:
                location = self.sessions.login_redirect(scope)
                if location is not None:
                    await _send_redirect(send, location)
                    return
            else:
                checked = await self.sessions.check_csrf(scope, receive, principal)
                if checked is None:
                    detail = "send the page's CSRF token (X-CSRF-Token header or csrf form field); reload the page"
                    await _send_problem(send, Problem(403, "csrf", "CSRF token missing or wrong", detail))
                    return
                receive = checked
        if principal is None:
            detail = (
                "send Authorization: Bearer <API key>"
                if token is None
                else "the token is not an active API key of this node"
            )
            await _send_problem(
                send,
                Problem(401, "unauthenticated", "Authentication required", detail, {"WWW-Authenticate": "Bearer"}),
            )
            return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


async def _send_redirect(send: Send, location: str) -> None:
    headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _send_problem(send: Send, problem: Problem) -> None:
    body = json.dumps(problem.to_dict()).encode()
    headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in problem.headers.items()]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_bearer_scheme = HTTPBearer(auto_error=False, description="An API key (`hsk_…`) or HYBRIDSTORE_ADMIN_TOKEN.")


class Requirement:
    """Step 2: a dependency that lets a request through when its caller has ``scope`` (else 403)."""

    def __init__(self, scope: str) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        self.scope = scope

    async def __call__(
        self,
        request: Request,
        _credentials: HTTPAuthorizationCredentials | None = Security(_bearer_scheme),  # documents the scheme in OpenAPI
    ) -> Principal:
        principal = request.scope.get(PRINCIPAL_KEY)
        if not isinstance(principal, Principal):  # the app runs without its middleware: refuse, never allow
            raise WebError(401, "unauthenticated", "Authentication required", "send Authorization: Bearer <API key>")
        if not principal.allows(self.scope):
            raise WebError(
                403,
                "forbidden",
                "Missing scope",
                f"this needs the {self.scope!r} scope; the key has {', '.join(sorted(principal.scopes))}",
            )
        return principal


def principal_of(request: Request) -> Principal:
    """The caller of a request that passed its `Requirement`."""
    principal = request.scope.get(PRINCIPAL_KEY)
    assert isinstance(principal, Principal)
    return principal
