"""Typed confirmation of destructive calls: the body's ``confirm`` must name the target (its id, as the caller
typed it or in full), so a destructive call is never made by a mistyped URL or a replayed request alone."""

from __future__ import annotations

from .problems import WebError


def require_confirmation(given: str | None, *targets: str) -> None:
    if not given or given not in targets:
        raise WebError(
            422,
            "confirmation-required",
            "Confirmation required",
            f'this call destroys data: send {{"confirm": "{targets[0]}"}} to confirm it',
        )
