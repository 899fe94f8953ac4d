"""Rendering of the admin pages: one Jinja2 environment over the package's ``templates/`` (autoescaped), the
filters the templates use (times, ages, sizes, JSON), and `page`, which fills in what every page shows (the user,
the CSRF token, the navigation)."""

from __future__ import annotations

import datetime
import json
from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..auth import PRINCIPAL_KEY, Principal
from .session import SessionCodec

NAV = (
    ("overview", "Overview", "/admin/data-storage"),
    ("backups", "Backups", "/admin/backups"),
    ("sync", "Sync", "/admin/sync"),
    ("health", "Health", "/admin/health"),
    ("nodes", "Nodes", "/admin/nodes"),
    ("data", "Data", "/admin/data"),
    ("audit", "Audit", "/admin/audit"),
    ("settings", "Settings", "/admin/settings"),
)
STATE_CLASS = {
    "healthy": "ok",
    "closed": "ok",
    "idle": "ok",
    "local_only": "ok",
    "disabled": "muted",
    "degraded": "warn",
    "recovering": "warn",
    "half_open": "warn",
    "pushing": "warn",
    "pulling": "warn",
    "unknown": "muted",
    "outage": "bad",
    "down": "bad",
    "open": "bad",
    "offline": "bad",
    "error": "bad",
    "misconfigured": "bad",
}
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # every asset comes from the node itself: nothing from elsewhere may load, no inline script may run
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
}


def when(ts: float | None) -> str:
    """Epoch seconds as a UTC date and time (``—`` for none)."""
    if ts is None:
        return "—"
    return datetime.datetime.fromtimestamp(float(ts), datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float | None) -> str:
    """A duration in words people read at a glance: ``4 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``."""
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s" if s < 600 else f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def size(n: float | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def to_json(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=True, default=str)


def state_class(state: Any) -> str:
    return STATE_CLASS.get(str(state), "muted")


@cache
def environment() -> Any:
    import jinja2

    root = resources.files("hybridstore.web.admin") / "templates"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, age=age, size=size, json=to_json, state=state_class)
    env.globals["nav"] = NAV
    return env


def render(template: str, status_code: int = 200, headers: dict[str, str] | None = None, **values: Any) -> HTMLResponse:
    html = environment().get_template(template).render(**values)
    return HTMLResponse(html, status_code=status_code, headers={**HEADERS, **(headers or {})})


def page(request: Request, codec: SessionCodec, template: str, active: str, title: str, **values: Any) -> HTMLResponse:
    """An admin page for the caller of ``request`` (a session or an admin bearer token)."""
    principal = request.scope.get(PRINCIPAL_KEY)
    assert isinstance(principal, Principal)
    csrf = codec.csrf(principal.session) if principal.session else ""
    ctx = request.app.state.hybridstore
    return render(
        template,
        active=active,
        title=title,
        user=principal.actor.removeprefix("user:"),
        csrf=csrf,
        node_id=ctx.store.node_id,
        **values,
    )
