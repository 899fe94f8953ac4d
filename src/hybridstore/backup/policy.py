"""Pure decisions of the backup service: where backups are kept, which ones automatic pruning removes (per
target), and when the next scheduled backup is due. No I/O; times are epoch seconds passed in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

EXEMPT_KINDS = ("emergency", "pre_restore")


class Prunable(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def verified(self) -> bool: ...
    @property
    def pinned(self) -> bool: ...


def exempt(b: Prunable) -> bool:
    """Emergency, pre-restore and pinned backups are never removed automatically (nor counted)."""
    return b.pinned or b.kind in EXEMPT_KINDS


def choose_prunable(backups: Sequence[Prunable], max_backups: int) -> list[Prunable]:
    """The backups automatic pruning removes: of the manual and scheduled ones, all but the newest
    ``max_backups`` — except the newest verified backup of all, which is always kept."""
    newest_verified = max((b for b in backups if b.verified), key=lambda b: (b.created_at, b.id), default=None)
    candidates = sorted((b for b in backups if not exempt(b)), key=lambda b: (b.created_at, b.id), reverse=True)
    return [b for b in candidates[max_backups:] if b is not newest_verified]


def kept_on(targets: str, primary_configured: bool) -> tuple[str, ...]:
    """Where backups are kept, from the ``targets`` setting: ``("local",)``, ``("primary",)`` or both. A node
    without a primary keeps them in its directory, whatever the (shared) setting says."""
    if not primary_configured:
        return ("local",)
    return {"local": ("local",), "primary": ("primary",)}.get(targets, ("local", "primary"))


def seconds_until_due(last_scheduled: float | None, now: float, interval_s: float) -> float:
    """0 when a scheduled backup is due now: there is none yet, or the last one is ``interval_s`` old (after a
    downtime this is one catch-up backup, not one per missed interval)."""
    if last_scheduled is None:
        return 0.0
    return max(0.0, last_scheduled + interval_s - now)
