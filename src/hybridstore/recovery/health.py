"""Component and overall states (pure functions of probe results).

Component states: ``healthy`` / ``degraded`` / ``down`` (plus ``disabled`` for a primary that is not
configured and ``unknown`` for figures nobody reports yet). Overall: ``outage`` (the primary is declared
down, or the node cannot store writes at all), ``misconfigured`` (the primary answers but refuses this node: a
person must fix the URL, the credentials or the grants; writes are queued meanwhile), ``recovering`` (a
recovery strategy is running: the outbox draining after an outage, a rebuild), ``degraded`` (something is
unwell but the node works normally for the application), ``healthy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Overall = Literal["healthy", "degraded", "outage", "misconfigured", "recovering"]


def overall_state(components: Mapping[str, Mapping[str, Any]], *, outage: bool, recovering: bool) -> Overall:
    local = components.get("local", {}).get("state")
    journal = components.get("journal", {}).get("state")
    if local == "down" and journal == "down":
        return "outage"
    if components.get("primary", {}).get("misconfigured"):
        return "misconfigured"
    if outage:
        return "outage"
    if recovering:
        return "recovering"
    if any(c.get("state") in ("degraded", "down") for c in components.values()):
        return "degraded"
    return "healthy"


def not_available(what: str) -> dict[str, Any]:
    return {"state": "unknown", "available": False, "detail": f"{what}: not available (no sync engine reports it)"}
