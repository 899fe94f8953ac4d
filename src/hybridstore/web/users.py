"""Admin users of the web UI, the one-time setup link, and the key that signs session cookies — all in ``web.db``.

- Users: a name and an argon2id password hash (argon2-cffi's defaults: memory-hard, salted, in the PHC string
  format, so parameters can be raised later and old hashes still verify and are re-hashed at the next login).
  Added and removed with ``hybridstore admin add-user / remove-user`` or from the UI's settings page.
- The setup link: ``serve`` with no user, no API key and no ``HYBRIDSTORE_ADMIN_TOKEN`` prints a URL with a
  random token; that token creates the first user, once (only its hash is kept; it is refused once used, or once
  any user exists).
- The session key: 32 random bytes made on first use, so cookies stay valid across restarts of the node and are
  worthless on any other node.

Nothing here imports FastAPI: the CLI uses it without the web extra (argon2-cffi is needed for passwords).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ValidationError
from .webdb import WebDatabase

USER_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
SESSION_KEY = "session_key"


def _hasher() -> Any:
    try:
        from argon2 import PasswordHasher
    except ImportError as exc:  # pragma: no cover - the web extra brings it
        raise ConfigError("admin users need argon2-cffi: pip install 'hybridstore[web]'") from exc
    return PasswordHasher()


def check_password(password: str) -> None:
    """`ValidationError` unless ``password`` is long enough to resist guessing and short enough to hash."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ValidationError(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValidationError(f"a password has at most {MAX_PASSWORD} characters")


@dataclass(frozen=True)
class AdminUser:
    name: str
    created_at: float
    last_login_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": self.created_at, "last_login_at": self.last_login_at}


class UserStore:
    """The admin users of one data directory (see the module docstring). Every method blocks (SQLite, argon2):
    call it from a worker thread in async code."""

    def __init__(self, db: WebDatabase, *, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self._wall = wall
        self._hasher = _hasher()
        # verified against when the name is unknown, so a wrong name costs as long as a wrong password
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def add(self, name: str, password: str) -> AdminUser:
        """A new user; `ValidationError` for a bad name or password, or a name taken already."""
        if not isinstance(name, str) or not USER_RE.fullmatch(name):
            raise ValidationError("a user name is 1-64 letters, digits or '_ . @ -'")
        check_password(password)
        user = AdminUser(name, self._wall(), None)
        try:
            self._db.execute(
                "INSERT INTO admin_users (name, password_hash, created_at) VALUES (?, ?, ?)",
                (name, self._hasher.hash(password), user.created_at),
            )
        except sqlite3.IntegrityError:
            raise ValidationError(f"a user named {name!r} exists already") from None
        return user

    def remove(self, name: str) -> AdminUser:
        """Remove a user (their sessions stop working at their next request); `ValidationError` if unknown."""
        found = self.find(name)
        if found is None:
            raise ValidationError(f"no admin user named {name!r}")
        self._db.execute("DELETE FROM admin_users WHERE name = ?", (name,))
        return found

    def list(self) -> list[AdminUser]:
        rows = self._db.query("SELECT name, created_at, last_login_at FROM admin_users ORDER BY name")
        return [AdminUser(*r) for r in rows]

    def find(self, name: str) -> AdminUser | None:
        rows = self._db.query("SELECT name, created_at, last_login_at FROM admin_users WHERE name = ?", (name,))
        return AdminUser(*rows[0]) if rows else None

    def count(self) -> int:
        return int(self._db.query("SELECT count(*) FROM admin_users")[0][0])

    def end_session(self, sid: str, expires: float) -> None:
        """Record that session ``sid`` was logged out (refused until ``expires``); drops the expired records."""
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM ended_sessions WHERE expires <= ?", (self._wall(),))
            conn.execute("INSERT OR REPLACE INTO ended_sessions (sid, expires) VALUES (?, ?)", (sid, expires))

    def ended_sessions(self) -> dict[str, float]:
        """Session ids logged out and not expired yet, with their expiry."""
        rows = self._db.query("SELECT sid, expires FROM ended_sessions WHERE expires > ?", (self._wall(),))
        return {str(sid): float(until) for sid, until in rows}

    def verify(self, name: str, password: str) -> AdminUser | None:
        """The user if ``password`` is theirs, else ``None`` (the same work either way)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        rows = self._db.query("SELECT password_hash FROM admin_users WHERE name = ?", (name,))
        stored = rows[0][0] if rows else self._dummy
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if not rows:
            return None
        now = self._wall()
        if self._hasher.check_needs_rehash(stored):
            self._db.execute(
                "UPDATE admin_users SET password_hash = ? WHERE name = ?", (self._hasher.hash(password), name)
            )
        self._db.execute("UPDATE admin_users SET last_login_at = ? WHERE name = ?", (now, name))
        return self.find(name)


class SetupTokens:
    """The one-time setup link's tokens (see the module docstring)."""

    def __init__(self, db: WebDatabase, *, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self._wall = wall

    def create(self) -> str:
        """A new token (any earlier unused one stays valid until a user exists)."""
        token = secrets.token_urlsafe(32)
        self._db.execute(
            "INSERT INTO setup_tokens (token_hash, created_at) VALUES (?, ?)", (_digest(token), self._wall())
        )
        return token

    def valid(self, token: str) -> bool:
        """Whether ``token`` may still create the first user."""
        if not token or self._db.query("SELECT 1 FROM admin_users LIMIT 1"):
            return False
        return bool(
            self._db.query("SELECT 1 FROM setup_tokens WHERE token_hash = ? AND used_at IS NULL", (_digest(token),))
        )

    def redeem(self, token: str, users: UserStore, name: str, password: str) -> AdminUser:
        """Create the first user with ``token`` and spend it; `ValidationError` if it is not (or no longer) valid."""
        if not self.valid(token):
            raise ValidationError("this setup link was used already or is not valid: ask for a new one (restart serve)")
        user = users.add(name, password)
        self._db.execute("UPDATE setup_tokens SET used_at = ? WHERE used_at IS NULL", (self._wall(),))
        return user


def session_key(db: WebDatabase) -> bytes:
    """The node's session-signing key, made on first use."""
    with db.transaction() as conn:
        row = conn.execute("SELECT value FROM secrets WHERE name = ?", (SESSION_KEY,)).fetchone()
        if row is not None:
            return bytes(row[0])
        key = secrets.token_bytes(32)
        conn.execute("INSERT INTO secrets (name, value) VALUES (?, ?)", (SESSION_KEY, key))
        return key


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two strings."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))
