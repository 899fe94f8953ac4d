"""Logging in and out of the admin UI, and the one-time setup link that creates the first admin user.

The login and setup forms are public (there is no session yet): each carries a double-submit token (a random
value in both a ``SameSite=Strict`` cookie and a hidden field), so another site cannot log a browser in under
its own account. Failed logins are throttled per client address and per user name (`LoginThrottle`), and every
attempt is audited (``login`` / ``login.failed`` / ``logout`` / ``setup``).
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from ...errors import ValidationError
from ..auth import principal_of
from ..context import WebContext
from ..routing import ScopedRouter
from ..users import SetupTokens, UserStore, same
from .render import HEADERS, render
from .session import (
    COOKIE,
    LOGIN_COOKIE,
    LOGIN_PATH,
    MAX_FORM_BYTES,
    LoginThrottle,
    SessionCodec,
    SessionGate,
    is_tls,
    session_cookie,
)

HOME = "/admin/data-storage"
SETUP_PATH = "/admin/setup"


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (empty for anything else, or a body too large)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return {}
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        return {}
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


def safe_next(target: str | None) -> str:
    """Where to go after logging in: an admin page of this node, never another site."""
    if target and target.startswith("/admin") and not target.startswith("//") and "\\" not in target:
        return target
    return HOME


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _form_token() -> str:
    return secrets.token_urlsafe(24)


def _login_cookie(token: str, *, secure: bool) -> str:
    parts = [f"{LOGIN_COOKIE}={token}", "Path=/admin", "HttpOnly", "SameSite=Strict", "Max-Age=3600"]
    return "; ".join([*parts, "Secure"] if secure else parts)


def _with_form_token(response: Response, token: str, request: Request) -> Response:
    response.headers.append("Set-Cookie", _login_cookie(token, secure=is_tls(request.scope)))
    return response


def build(
    ctx: WebContext, codec: SessionCodec, users: UserStore, setup: SetupTokens, throttle: LoginThrottle
) -> APIRouter:
    """The public routes (login page and form, setup link); `logout` is added to the admin router by the caller."""
    router = APIRouter(include_in_schema=False)

    def login_page(
        request: Request, *, error: str = "", status: int = 200, name: str = "", next_: str = ""
    ) -> Response:
        token = _form_token()
        response = render(
            "login.html",
            status_code=status,
            error=error,
            name=name,
            next=safe_next(next_ or request.query_params.get("next")),
            form_token=token,
            title="Log in",
        )
        return _with_form_token(response, token, request)

    @router.get(LOGIN_PATH)
    async def login_form(request: Request) -> Response:
        return login_page(request)

    @router.post(LOGIN_PATH)
    async def login(request: Request) -> Response:
        form = await read_form(request)
        name, password = form.get("username", "").strip(), form.get("password", "")
        target = safe_next(form.get("next"))
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not same(cookie, form.get("form_token", "")):
            return login_page(request, error="The login form expired: please try again.", status=400, name=name)
        client = _client(request)
        keys = (f"ip:{client}", f"user:{name.lower()}")
        wait = throttle.retry_after(*keys)
        if wait > 0:
            await ctx.run(
                lambda: ctx.audit.record(f"user:{name}", "login", "admin", "refused: throttled", client=client)
            )
            response = login_page(
                request, error=f"Too many failed logins: try again in {int(wait) + 1} s.", status=429, name=name
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        user = await ctx.run(lambda: users.verify(name, password)) if name and password else None
        if user is None:
            throttle.failed(*keys)
            await ctx.run(lambda: ctx.audit.record(f"user:{name}", "login", "admin", "failed", client=client))
            return login_page(request, error="Wrong username or password.", status=401, name=name)
        throttle.succeeded(*keys)
        await ctx.run(lambda: ctx.audit.record(f"user:{user.name}", "login", "admin", "ok", client=client))
        value, _ = codec.issue(user.name)
        response = RedirectResponse(target, status_code=303, headers=HEADERS)
        response.headers.append("Set-Cookie", session_cookie(value, secure=is_tls(request.scope)))
        response.headers.append(
            "Set-Cookie", _login_cookie("", secure=is_tls(request.scope)).replace("Max-Age=3600", "Max-Age=0")
        )
        return response

    def setup_page(request: Request, token: str, *, error: str = "", status: int = 200, name: str = "") -> Response:
        form_token = _form_token()
        valid = setup.valid(token)
        response = render(
            "setup.html",
            status_code=status if valid else 404,
            valid=valid,
            token=token if valid else "",
            error=error,
            name=name,
            form_token=form_token,
            title="Create the first admin user",
        )
        return _with_form_token(response, form_token, request)

    @router.get(SETUP_PATH)
    async def setup_form(request: Request) -> Response:
        token = request.query_params.get("token", "")
        return await ctx.run(lambda: setup_page(request, token))

    @router.post(SETUP_PATH)
    async def setup_submit(request: Request) -> Response:
        form = await read_form(request)
        token, name = form.get("token", ""), form.get("username", "").strip()
        password, again = form.get("password", ""), form.get("password_again", "")
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not same(cookie, form.get("form_token", "")):
            return await ctx.run(lambda: setup_page(request, token, error="The form expired: try again.", status=400))
        if password != again:
            return await ctx.run(
                lambda: setup_page(request, token, error="The two passwords differ.", status=422, name=name)
            )
        client = _client(request)

        def create() -> Any:
            user = setup.redeem(token, users, name, password)
            ctx.audit.record(f"user:{user.name}", "setup", "admin", "ok", client=client)
            return user

        try:
            user = await ctx.run(create)
        except ValidationError as exc:
            message = str(exc)
            return await ctx.run(lambda: setup_page(request, token, error=message, status=422, name=name))
        value, _ = codec.issue(user.name)
        response = RedirectResponse(HOME, status_code=303, headers=HEADERS)
        response.headers.append("Set-Cookie", session_cookie(value, secure=is_tls(request.scope)))
        return response

    return router


def add_logout(router: ScopedRouter, ctx: WebContext, gate: SessionGate) -> None:
    """``POST /admin/logout`` on the (authenticated, CSRF-checked) admin router."""

    @router.post("/admin/logout", "admin", include_in_schema=False)
    async def logout(request: Request) -> Response:
        principal = principal_of(request)
        await gate.end(request.cookies.get(COOKIE))
        client = _client(request)
        await ctx.run(lambda: ctx.audit.record(principal.actor, "logout", "admin", "ok", client=client))
        response = RedirectResponse(LOGIN_PATH, status_code=303, headers=HEADERS)
        response.headers.append("Set-Cookie", session_cookie("", secure=is_tls(request.scope), max_age=0))
        return response
