"""Key ranges of prefix scans, shared by every tier's ``scan``."""

from __future__ import annotations


def key_range(prefix: str, after: str | None) -> tuple[str, bool, str | None]:
    """Key range of a prefix scan that resumes after ``after``: (low, low_inclusive, high_exclusive)."""
    if after is not None and after >= prefix:
        low, inclusive = after, False
    else:
        low, inclusive = prefix, True
    high = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix and ord(prefix[-1]) < 0x10FFFF else None
    return low, inclusive, high
