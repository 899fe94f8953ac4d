"""The ``hybridstore`` command line: one module per command group, assembled here."""

from __future__ import annotations

# importing a module registers its commands
from . import admin, backup, conflicts, data, grants, health, inventory, nodes, resilience, status, transfer  # noqa: F401
from .app import app, main

__all__ = ["app", "main"]
