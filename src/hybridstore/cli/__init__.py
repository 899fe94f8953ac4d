"""The ``hybridstore`` command line: one module per command group, assembled here."""

from __future__ import annotations

from . import admin, backup, conflicts, data, health, status  # noqa: F401  (importing a module registers its commands)
from .app import app, main

__all__ = ["app", "main"]
