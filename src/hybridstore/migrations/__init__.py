"""Versioned schema migrations. Primary migrations are SQL files ``NNNN_name.sql`` under ``primary/``;
``{schema}`` in them is replaced by the quoted schema name. Applied in order, each once, recorded in
``{schema}.hs_migrations``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def primary_migrations() -> list[Migration]:
    found = []
    for entry in resources.files(__package__).joinpath("primary").iterdir():
        m = _NAME.fullmatch(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda mig: mig.version)
