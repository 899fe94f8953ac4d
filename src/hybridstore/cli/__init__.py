"""The ``hybridstore`` command line: one module per command group, assembled here."""

from __future__ import annotations

from .app import app, main

__all__ = ["app", "main"]
