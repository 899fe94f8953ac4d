"""The storage tiers behind one `Tier` protocol: primary (PostgreSQL), local (SQLite), journal (file)."""

from .base import Change, Tier, TierHealth

__all__ = ["Change", "Tier", "TierHealth"]
