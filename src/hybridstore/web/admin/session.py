"""Browser sessions of the admin UI: signed cookies, CSRF tokens, and the throttle on failed logins.

- The session cookie (``hs_session``) holds the user name, a random session id and its expiry, signed with
  HMAC-SHA256 under the node's session key (`hybridstore.web.users.session_key`). It is HttpOnly,
  ``SameSite=Strict``, ``Path=/``, and ``Secure`` when the request came over TLS. It is checked on every request,
  and the user must still exist (a removed user is logged out at their next request). Logging out ends the
  session on the server too: its id is refused until it expires, also after a restart (kept in ``web.db``).
- The CSRF token is derived from the session id (HMAC under the same key): pages put it in a ``<meta>`` tag and
  in forms; every state-changing request authenticated by the cookie must carry it, as the ``X-CSRF-Token`` header
  or, for a plain HTML form, the ``csrf`` field. `SessionGate` enforces that before any route runs.
- `LoginThrottle`: at most ``max_failures`` failed logins per client address and per user name in ``window``
  seconds; further attempts are refused (429) until the oldest failure leaves the window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.types import Message, Receive, Scope

from ..auth import Principal, route_path
from ..users import UserStore

COOKIE = "hs_session"
LOGIN_COOKIE = "hs_login"  # double-submit token of the login and setup forms (there is no session yet)
CSRF_HEADER = b"x-csrf-token"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_TTL = 12 * 3600.0
MAX_FORM_BYTES = 64 * 1024
ADMIN_PREFIX = "/admin"
LOGIN_PATH = "/admin/login"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    user: str
    sid: str
    expires: float


class SessionCodec:
    """Signs and checks session cookies and derives CSRF tokens (pure: no I/O)."""

    def __init__(self, key: bytes, *, ttl: float = SESSION_TTL, wall: Callable[[], float] = time.time) -> None:
        self._key = key
        self.ttl = ttl
        self.wall = wall

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def issue(self, user: str) -> tuple[str, Session]:
        session = Session(user, secrets.token_urlsafe(16), self.wall() + self.ttl)
        payload = json.dumps({"u": session.user, "s": session.sid, "e": session.expires}, separators=(",", ":"))
        raw = payload.encode()
        return f"{_b64(raw)}.{self._sign(raw)}", session

    def read(self, cookie: str) -> Session | None:
        """The session a cookie holds, if its signature is ours and it has not expired."""
        body, _, signature = cookie.partition(".")
        try:
            raw = _unb64(body)
        except (ValueError, TypeError):
            return None
        if not signature or not hmac.compare_digest(signature, self._sign(raw)):
            return None
        try:
            data = json.loads(raw)
            session = Session(str(data["u"]), str(data["s"]), float(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > self.wall() else None

    def csrf(self, sid: str) -> str:
        return _b64(hmac.new(self._key, b"csrf:" + sid.encode(), hashlib.sha256).digest())[:32]

    def csrf_ok(self, sid: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf(sid).encode(), (token or "").encode())


class LoginThrottle:
    """Failed logins per key (client address, user name) in a sliding window (see the module docstring)."""

    def __init__(
        self, *, max_failures: int = 5, window: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()
        found = self._failures.get(key)
        if found is None:
            return deque()
        while found and now - found[0] >= self.window:
            found.popleft()
        if not found:
            del self._failures[key]
        return found

    def retry_after(self, *keys: str) -> float:
        """Seconds until a login may be tried again for these keys (0: now)."""
        wait = 0.0
        for key in keys:
            recent = self._recent(key)
            if len(recent) >= self.max_failures:
                wait = max(wait, self.window - (self._clock() - recent[0]))
        return wait

    def failed(self, *keys: str) -> None:
        now = self._clock()
        if len(self._failures) > 100_000:  # a flood of distinct names: forget rather than grow without bound
            self._failures.clear()
        for key in keys:
            self._failures.setdefault(key, deque(maxlen=self.max_failures * 4)).append(now)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


def cookie_of(scope: Scope, name: str) -> str | None:
    for header, value in scope["headers"]:
        if header == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                if k == name:
                    return str(v)
    return None


def is_tls(scope: Scope) -> bool:
    return scope.get("scheme") in ("https", "wss")


def session_cookie(value: str, *, secure: bool, max_age: int | None = int(SESSION_TTL)) -> str:
    """A ``Set-Cookie`` header value for the session (an empty value with ``max_age=0`` clears it)."""
    parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


class SessionGate:
    """What `hybridstore.web.auth.AuthMiddleware` asks about requests that carry no bearer token: who the
    session cookie says the caller is, whether a state-changing request carries its CSRF token, and where a
    browser with no session goes (the login page, for the admin pages)."""

    def __init__(
        self,
        codec: SessionCodec,
        users: UserStore,
        *,
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        cache_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.codec = codec
        self.users = users
        self._run = run
        self._ttl = cache_ttl
        self._clock = clock
        self._known: dict[str, float] = {}  # user -> when last seen to exist
        self._ended: dict[str, float] = users.ended_sessions()  # session id -> its expiry: logged out

    async def principal(self, scope: Scope) -> Principal | None:
        cookie = cookie_of(scope, COOKIE)
        if not cookie:
            return None
        session = self.codec.read(cookie)
        if session is None or session.sid in self._ended:
            return None
        now = self._clock()
        if now - self._known.get(session.user, float("-inf")) >= self._ttl:
            if await self._run(lambda: self.users.find(session.user)) is None:
                self._known.pop(session.user, None)
                return None
            self._known[session.user] = now
        return Principal(f"user:{session.user}", frozenset({"admin"}), session=session.sid)

    async def end(self, cookie: str | None) -> None:
        """Log a session out: its cookie is refused from now on, even if a copy of it survives in a browser or the
        server restarts."""
        session = None if not cookie else self.codec.read(cookie)
        if session is None:
            return
        now = self.codec.wall()
        self._ended = {sid: until for sid, until in self._ended.items() if until > now}  # expired: refused anyway
        self._ended[session.sid] = session.expires
        await self._run(lambda: self.users.end_session(session.sid, session.expires))

    async def check_csrf(self, scope: Scope, receive: Receive, principal: Principal) -> Receive | None:
        """``receive`` to go on with (a replay of the form body when it was read) if the request may proceed,
        ``None`` if it lacks its CSRF token. Safe methods and bearer-token callers need none."""
        if scope["method"] in SAFE_METHODS or principal.session is None:
            return receive
        for header, value in scope["headers"]:
            if header == CSRF_HEADER:
                return receive if self.codec.csrf_ok(principal.session, value.decode("latin-1")) else None
        if not route_path(scope).startswith(ADMIN_PREFIX) or not _is_form(scope):
            return None
        body, replay = await _read_body(receive, MAX_FORM_BYTES)
        if body is None:
            return None
        token = dict(parse_qsl(body.decode("utf-8", "replace"))).get(CSRF_FIELD)
        return replay if self.codec.csrf_ok(principal.session, token) else None

    def login_redirect(self, scope: Scope) -> str | None:
        """Where to send a browser that is not logged in: the login page, for a GET of an admin page by a client
        that reads HTML (a browser); other clients get the API's 401."""
        path = route_path(scope)
        if scope["method"] not in SAFE_METHODS or not (path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")):
            return None
        if not any(h == b"accept" and b"text/html" in v for h, v in scope["headers"]):
            return None
        query = scope.get("query_string", b"").decode("latin-1")
        wanted = path + (f"?{query}" if query else "")
        return f"{scope.get('root_path', '')}{LOGIN_PATH}?next={quote(wanted, safe='')}"


def _is_form(scope: Scope) -> bool:
    for header, value in scope["headers"]:
        if header == b"content-type":
            return bool(value.split(b";")[0].strip().lower() == b"application/x-www-form-urlencoded")
    return False


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None, receive
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, receive
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
