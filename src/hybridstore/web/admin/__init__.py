"""The admin web UI under ``/admin/`` (home: ``/admin/data-storage``): server-rendered pages (Jinja2), a little
plain JavaScript, live updates over server-sent events and charts drawn by uPlot — every asset shipped inside
the package (``static/``), none from a CDN, so a node is operable with no internet.

- `session`: signed session cookies, CSRF tokens, the failed-login throttle (`SessionGate` is what the app's
  `AuthMiddleware` asks about requests without a bearer token);
- `login`: the login page, logout, the one-time setup link;
- `pages`: the pages (read only); `actions`: what the REST API lacks (pin, upload, keys, users) and the stream;
- `render`: templates and their filters; `views`: diffs, the pending queue, the audit filter, masked config;
- `assets`: ``/admin/static/…``.

Actions on the pages call ``/api/v1`` with the session cookie and the CSRF token, so the UI does exactly what
the API does (jobs, typed confirmations, audit) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter

from ..context import WebContext
from ..sse import LiveFeed
from ..users import SetupTokens, UserStore, session_key
from . import actions, assets, login, pages
from .session import LOGIN_PATH, LoginThrottle, SessionCodec, SessionGate

PUBLIC_PATHS = frozenset({LOGIN_PATH, login.SETUP_PATH})
STATIC_PREFIX = assets.PREFIX


def is_public(path: str) -> bool:
    """Paths of the admin UI that need no session: the login page, the setup link, the static assets."""
    return path in PUBLIC_PATHS or path.startswith(STATIC_PREFIX)


@dataclass
class AdminUI:
    router: APIRouter
    gate: SessionGate
    users: UserStore
    setup: SetupTokens
    codec: SessionCodec


def build(ctx: WebContext, feed: LiveFeed) -> AdminUI:
    users = UserStore(ctx.db)
    setup = SetupTokens(ctx.db)
    codec = SessionCodec(session_key(ctx.db))
    gate = SessionGate(codec, users, run=ctx.run)
    router = APIRouter()
    router.include_router(login.build(ctx, codec, users, setup, LoginThrottle()))
    router.include_router(assets.build())
    scoped = pages.build(ctx, codec, feed, users)
    login.add_logout(scoped, ctx, gate)
    router.include_router(scoped.router)
    router.include_router(actions.build(ctx, feed, users).router)
    return AdminUI(router, gate, users, setup, codec)
