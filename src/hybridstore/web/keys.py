"""API keys: created, listed and revoked in ``web.db`` (by ``hybridstore apikey …`` or code), looked up by hash.

A key is ``hsk_`` + 43 URL-safe characters (32 random bytes); only its SHA-256 is stored (a key is random and
long, so a fast hash is enough: there is nothing to guess), and the key is shown once, when it is created.
Scopes: ``read`` (GET data and status), ``write`` (PUT / DELETE items), ``admin`` (everything, including what
``read`` and ``write`` allow). ``read`` and ``write`` are independent: an ingestion client may write and never
read.

This store is the node's own (``web.db``): every key when no primary is configured. With a primary, keys live on
the primary, shared by every node (`shared_keys.SharedKeyStore`), and this table also keeps a copy of each shared
key the node has seen (``shared = 1``) so that it accepts them while the primary is unreachable.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

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


class KeyStore(Protocol):
    """Where a node's API keys live: `ApiKeyStore` (``web.db``) or `shared_keys.SharedKeyStore` (the primary)."""

    def create(self, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]: ...
    def list(self, *, include_revoked: bool = True) -> list[ApiKey]: ...
    def find(self, id_or_name: str) -> ApiKey | None: ...
    def revoke(self, id_or_name: str) -> ApiKey: ...
    def has_active(self) -> bool: ...
    def lookup(self, token: str) -> ApiKey | None: ...


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
        if self.find(name, local_only=True) is not None:
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

    def list(self, *, include_revoked: bool = True, local_only: bool = False) -> list[ApiKey]:
        """Keys by creation; ``local_only``: without the copies of shared keys (see `shared_keys`)."""
        sql = f"SELECT {_COLUMNS} FROM api_keys WHERE 1 = 1"
        if not include_revoked:
            sql += " AND revoked_at IS NULL"
        if local_only:
            sql += " AND shared = 0"
        return [_key(r) for r in self._db.query(sql + " ORDER BY created_at, id")]

    def find(self, id_or_name: str, *, local_only: bool = False) -> ApiKey | None:
        sql = f"SELECT {_COLUMNS} FROM api_keys WHERE (id = ? OR name = ?)" + (" AND shared = 0" if local_only else "")
        rows = self._db.query(sql, (id_or_name, id_or_name))
        return _key(rows[0]) if rows else None

    # -- copies of shared keys (`shared_keys.SharedKeyStore`) ---------------------------------------------------

    def entry(self, token_hash: str) -> tuple[ApiKey, bool] | None:
        """The key stored under ``token_hash`` (revoked or not) and whether it is a copy of a shared key."""
        rows = self._db.query(f"SELECT {_COLUMNS}, shared FROM api_keys WHERE token_hash = ?", (token_hash,))
        return (_key(rows[0]), bool(rows[0][7])) if rows else None

    def keep_copy(self, key: ApiKey, token_hash: str, checked_at: float) -> None:
        """Keep (or refresh) the copy of a shared key, as the primary showed it."""
        try:
            self._db.execute(
                "INSERT INTO api_keys (id, name, scopes, token_hash, hint, created_at, last_used_at, revoked_at, "
                "shared, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (id) DO UPDATE SET "
                "name = excluded.name, scopes = excluded.scopes, revoked_at = excluded.revoked_at, "
                "last_used_at = excluded.last_used_at, checked_at = excluded.checked_at WHERE shared = 1",
                (
                    key.id,
                    key.name,
                    " ".join(sorted(key.scopes)),
                    token_hash,
                    key.hint,
                    key.created_at,
                    key.last_used_at,
                    key.revoked_at,
                    checked_at,
                ),
            )
        except sqlite3.IntegrityError:  # a key of this node alone has its name: the shared one is not kept here
            pass

    def drop_copy(self, token_hash: str) -> None:
        """Forget the copy of a shared key the primary no longer has."""
        self._db.execute("DELETE FROM api_keys WHERE token_hash = ? AND shared = 1", (token_hash,))

    def revoke(self, id_or_name: str) -> ApiKey:
        """Revoke a key (by id or name); it stays listed, marked revoked. `ValidationError` if unknown."""
        key = self.find(id_or_name, local_only=True)
        if key is None:
            raise ValidationError(f"no API key with id or name {id_or_name!r}")
        if key.active:
            self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (self._wall(), key.id)
            )
        found = self.find(key.id)
        assert found is not None
        return found

    def has_active(self, *, local_only: bool = False) -> bool:
        sql = "SELECT 1 FROM api_keys WHERE revoked_at IS NULL" + (" AND shared = 0" if local_only else "")
        return bool(self._db.query(sql + " LIMIT 1"))

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
