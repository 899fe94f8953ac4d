"""What the admin pages show that no store view gives as such: a conflict's field-level diff, the pending queue, the
audit log filtered, the configuration with its secrets masked. Plain functions over plain data; the ones that
read files block (call them from a worker thread)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from ...config import StoreConfig, redact
from ..audit import AuditEntry
from ..webdb import WebDatabase

MISSING = object()
SECRET_NAME = re.compile(r"pass|secret|token|key$|credential", re.IGNORECASE)


def field_diff(base: Any, local: Any, remote: Any) -> list[dict[str, Any]]:
    """One row per top-level field of the three values (or one row, ``(value)``, when they are not all objects):
    the field's base, local and remote values and which sides changed it since the base."""
    sides = (base, local, remote)
    if not all(isinstance(v, dict) or v is None for v in sides) or all(v is None for v in sides):
        rows = [("(value)", base, local, remote)]
    else:
        names = sorted({k for v in sides if isinstance(v, dict) for k in v})
        rows = [(name, *((v.get(name, MISSING) if isinstance(v, dict) else MISSING) for v in sides)) for name in names]
    out = []
    for name, b, lo, r in rows:
        out.append(
            {
                "field": name,
                "base": _shown(b),
                "local": _shown(lo),
                "remote": _shown(r),
                "local_changed": lo != b,
                "remote_changed": r != b,
                "conflict": lo != b and r != b and lo != r,
            }
        )
    return out


def _shown(value: Any) -> Any:
    return "(absent)" if value is MISSING else value


def pending_rows(outbox: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """The pending queue of `hybridstore.web.localview.outbox_view` as table rows (SQLite's outbox, then the
    journal's ops), each with its age."""
    rows = [{**e, "tier": "local"} for e in outbox.get("entries", [])] + list(outbox.get("journal", []))
    return [{**r, "age_s": max(0.0, now - float(r["created_at"]))} for r in rows]


def audit_entries(
    db: WebDatabase, *, actor: str = "", action: str = "", since: float | None = None, limit: int = 200
) -> list[AuditEntry]:
    """Audit entries, newest first, whose actor and action contain the given texts, not older than ``since``."""
    import json

    sql = "SELECT id, at, actor, action, target, outcome, client, details FROM audit_log WHERE 1 = 1"
    params: list[Any] = []
    if actor:
        sql += " AND instr(actor, ?) > 0"
        params.append(actor)
    if action:
        sql += " AND instr(action, ?) > 0"
        params.append(action)
    if since is not None:
        sql += " AND at >= ?"
        params.append(since)
    rows = db.query(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
    return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows]


def masked_config(config: StoreConfig) -> list[tuple[str, str]]:
    """The effective configuration as (name, shown value), URLs without passwords and secrets masked."""
    out = []
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if value is None:
            shown = "—"
        elif SECRET_NAME.search(item.name):
            shown = "•••• (set)" if value else "—"
        elif isinstance(value, str) and "://" in value:
            shown = redact(value)
        elif callable(value):
            shown = getattr(value, "__name__", type(value).__name__)
        else:
            shown = str(value)
        out.append((item.name, shown))
    return out


def route_exists(app: Any, path: str) -> bool:
    """Whether the app serves ``path`` (a feature other parts of the service may or may not provide yet)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI flattens included routes
        return any(getattr(r, "path", None) == path for r in app.routes)
    return any(rc.path == path for rc in iter_route_contexts(app.routes))
