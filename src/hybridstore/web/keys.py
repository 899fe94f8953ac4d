"""API keys: created, listed and revoked in ``web.db`` (by ``hybridstore apikey …`` or code), looked up by hash.

A key is ``hsk_`` + 43 URL-safe characters (32 random bytes); only its SHA-256 is stored (a key is random and
long, so a fast hash is enough: there is nothing to guess), and the key is shown once, when it is created.
Scopes: ``read`` (GET data and status), ``write`` (PUT / DELETE items), ``admin`` (everything, including what
``read`` and ``write`` allow). ``read`` and ``write`` are independent: an ingestion client may write and never
read. Keys live on this node only for now (a copy on the primary, shared by every node, can come later).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationError
from .webdb import WebDatabase

SCOPES = ("read", "write", "admin")
TOKEN_PREFIX = "hsk_"
NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Validated scopes (``"read,write"`` and ``["read", "write"]`` alike); at least one."""
    found: set[str] = set()
    for item in scopes:
        for scope in re.split(r"[\s,]+", item.strip()):
            if not scope:
                continue
            if scope not in SCOPES:
                raise ValidationError(f"unknown scope {scope!r}: use {', '.join(SCOPES)}")
            found.add(scope)
    if not found:
        raise ValidationError(f"a key needs at least one scope: {', '.join(SCOPES)}")
    return frozenset(found)


def grants(scopes: frozenset[str], needed: str) -> bool:
    """Whether a holder of ``scopes`` may do what ``needed`` guards: ``admin`` allows everything."""
    return needed in scopes or "admin" in scopes


@dataclass(frozen=True)
class ApiKey:
    """One key as stored (never the token itself)."""

    id: str
    name: str
    scopes: frozenset[str]
    hint: str
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "hint": self.hint,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
            "active": self.active,
        }


_COLUMNS = "id, name, scopes, hint, created_at, last_used_at, revoked_at"
LAST_USED_EVERY = 60.0  # seconds: ``last_used_at`` is written at most this often per key (not once per request)


def _key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(row[0], row[1], frozenset(row[2].split()), row[3], row[4], row[5], row[6])


class ApiKeyStore:
    """The keys of one data directory (see the module docstring)."""

    def __init__(self, db: WebDatabase, *, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self._wall = wall
        self._touched: dict[str, float] = {}

    def create(self, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
        """A new key: returns it and its token (shown once; only the token's hash is kept)."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ValidationError("a key name is 1-64 letters, digits or '_ . @ -'")
        wanted = parse_scopes(scopes)
        if self.find(name) is not None:
            raise ValidationError(f"a key named {name!r} exists already (revoke it, or pick another name)")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(secrets.token_hex(6), name, wanted, token[:8], self._wall())
        try:
            self._db.execute(
                "INSERT INTO api_keys (id, name, scopes, token_hash, hint, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key.id, key.name, " ".join(sorted(wanted)), hash_token(token), key.hint, key.created_at),
            )
        except sqlite3.IntegrityError:  # created meanwhile by another process
            raise ValidationError(f"a key named {name!r} exists already (revoke it, or pick another name)") from None
        return key, token

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        sql = f"SELECT {_COLUMNS} FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        return [_key(r) for r in self._db.query(sql + " ORDER BY created_at, id")]

    def find(self, id_or_name: str) -> ApiKey | None:
        rows = self._db.query(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ? OR name = ?", (id_or_name, id_or_name))
        return _key(rows[0]) if rows else None

    def revoke(self, id_or_name: str) -> ApiKey:
        """Revoke a key (by id or name); it stays listed, marked revoked. `ValidationError` if unknown."""
        key = self.find(id_or_name)
        if key is None:
            raise ValidationError(f"no API key with id or name {id_or_name!r}")
        if key.active:
            self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (self._wall(), key.id)
            )
        found = self.find(key.id)
        assert found is not None
        return found

    def has_active(self) -> bool:
        return bool(self._db.query("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1"))

    def lookup(self, token: str) -> ApiKey | None:
        """The active key whose token this is, or ``None``."""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM api_keys WHERE token_hash = ? AND revoked_at IS NULL", (hash_token(token),)
        )
        if not rows:
            return None
        key = _key(rows[0])
        now = self._wall()
        if now - self._touched.get(key.id, float("-inf")) >= LAST_USED_EVERY:
            self._touched[key.id] = now
            self._db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key.id))
        return key
