"""API keys on the primary (migration 0007), shared by every node: a key created on any node — or by
``hybridstore apikey create`` against the primary — works on all of them, and a revocation reaches all of them.

`SharedKeyStore` offers what `keys.ApiKeyStore` offers (create, list, find, revoke, has_active, lookup):

- **Lookup** asks the primary (the `Authenticator` remembers an answer for a second), then keeps a copy of the key
  in ``web.db`` (`ApiKeyStore.keep_copy`).
- **While the primary cannot be asked** (its circuit is open, or the call fails), a key is checked against that
  copy: a node that cannot reach the primary still accepts the keys it has seen, and refuses every other.
  **Revocation while offline:** a key revoked on the primary while this node is cut off keeps working *on this
  node* until it reaches the primary again — at its next check of that key (within a second of the primary
  answering). That is the price of a node that keeps serving during an outage; revoking on a node that is cut off
  fails (`PrimaryUnavailableError`, 503) rather than pretend.
- **Made-up tokens** cost nothing on the primary: a token not shaped like ours is refused unchecked, and tokens
  this node has never seen are checked with the primary at most 5 a second (after a burst of 20); beyond that
  they are refused for the moment (a key created on another node a moment ago may need a second try then).
- Keys created on this node before a primary was configured (``shared = 0`` in ``web.db``) keep working on this
  node alone, listed beside the shared ones; revoke them as before.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import PrimaryRejectedError, PrimaryUnavailableError, ValidationError
from .keys import LAST_USED_EVERY, NAME_RE, TOKEN_PREFIX, ApiKey, ApiKeyStore, hash_token, parse_scopes

log = logging.getLogger("hybridstore.web.keys")
Call = Callable[[Callable[[Any], Any]], Any]  # runs fn(primary tier) through whatever guards the primary

_COLUMNS = "id, name, scopes, hint, created_at, last_used_at, revoked_at"
_INSERT = (
    "INSERT INTO {schema}.api_keys (id, name, scopes, token_hash, hint, created_at, created_by) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id"
)


UNKNOWN_PER_SECOND = 5.0  # tokens this node has never seen, checked with the primary at most this often …
UNKNOWN_BURST = 20  # … after a burst of this many
TOKEN_LENGTH = len(TOKEN_PREFIX) + 43  # the prefix and 32 random bytes in URL-safe base64


def well_formed(token: str) -> bool:
    """Whether ``token`` has the shape of the tokens this project makes (others cannot be keys)."""
    return len(token) == TOKEN_LENGTH and token.startswith(TOKEN_PREFIX)


class _Budget:
    """A token bucket: `take` succeeds at most ``rate`` times a second, after a burst of ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._level, self._at = float(burst), clock()

    def take(self) -> bool:
        now = self._clock()
        self._level = min(self._burst, self._level + (now - self._at) * self._rate)
        self._at = now
        if self._level < 1.0:
            return False
        self._level -= 1.0
        return True


def _key(row: Any) -> ApiKey:
    return ApiKey(row[0], row[1], frozenset(row[2].split()), row[3], row[4], row[5], row[6])


class SharedKeyStore:
    """See the module docstring. ``call(fn)`` runs ``fn(primary)`` (the gateway's `call` on a node, a direct call in
    the CLI); ``available()`` says whether the primary may be asked now; ``local`` is this node's ``web.db`` store
    (its own keys, and the copies)."""

    def __init__(
        self,
        call: Call,
        local: ApiKeyStore,
        *,
        available: Callable[[], bool] = lambda: True,
        origin: str = "",
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._call = call
        self._available = available
        self.local = local
        self._origin = origin
        self._wall = wall
        self._touched: dict[str, float] = {}
        self._unknown = _Budget(UNKNOWN_PER_SECOND, UNKNOWN_BURST, clock)
        self._refusing = False  # unknown keys are being refused unchecked (logged once per stretch)

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        rows: list[Any] = self._call(lambda p: p.query(sql, tuple(params)))
        return rows

    # -- managing keys (they need the primary) --------------------------------------------------------------------

    def create(self, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
        """A new shared key: returns it and its token (shown once)."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ValidationError("a key name is 1-64 letters, digits or '_ . @ -'")
        wanted = parse_scopes(scopes)
        if self.local.find(name, local_only=True) is not None:
            raise ValidationError(f"a key named {name!r} exists already on this node (revoke it, or pick another name)")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(secrets.token_hex(6), name, wanted, token[:8], self._wall())
        digest = hash_token(token)
        params = (key.id, key.name, " ".join(sorted(wanted)), digest, key.hint, key.created_at, self._origin)
        if not self._query(_INSERT, params):
            raise ValidationError(f"a key named {name!r} exists already (revoke it, or pick another name)")
        self.local.keep_copy(key, digest, self._wall())
        return key, token

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        """The shared keys (from the primary) and this node's own, by creation. While the primary's circuit is
        open: the copies this node holds (the keys it has seen) and its own."""
        if not self._available():
            return self.local.list(include_revoked=include_revoked)
        sql = f"SELECT {_COLUMNS} FROM {{schema}}.api_keys" + ("" if include_revoked else " WHERE revoked_at IS NULL")
        shared = [_key(r) for r in self._query(sql)]
        own = self.local.list(include_revoked=include_revoked, local_only=True)
        return sorted([*shared, *own], key=lambda k: (k.created_at, k.id))

    def find(self, id_or_name: str) -> ApiKey | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM {{schema}}.api_keys WHERE id = %s OR name = %s", (id_or_name,) * 2)
        return _key(rows[0]) if rows else self.local.find(id_or_name, local_only=True)

    def revoke(self, id_or_name: str) -> ApiKey:
        """Revoke a key on the primary (every node refuses it within a second; see the module docstring for a node
        that is cut off), or one of this node's own. `ValidationError` if there is no such key."""
        if self.local.find(id_or_name, local_only=True) is not None:
            return self.local.revoke(id_or_name)
        rows = self._query(
            f"UPDATE {{schema}}.api_keys SET revoked_at = coalesce(revoked_at, %s) WHERE id = %s OR name = %s "
            f"RETURNING {_COLUMNS}, token_hash",
            (self._wall(), id_or_name, id_or_name),
        )
        if not rows:
            raise ValidationError(f"no API key with id or name {id_or_name!r}")
        key = _key(rows[0])
        self.local.keep_copy(key, rows[0][7], self._wall())
        return key

    def has_active(self) -> bool:
        if self.local.has_active(local_only=True):
            return True
        return bool(self._query("SELECT 1 FROM {schema}.api_keys WHERE revoked_at IS NULL LIMIT 1"))

    # -- checking a key (works offline too) ----------------------------------------------------------------------

    def lookup(self, token: str) -> ApiKey | None:
        """The active key whose token this is, or ``None`` (see the module docstring)."""
        if not well_formed(token):
            return None  # no key looks like this: nothing to ask anyone
        digest = hash_token(token)
        entry = self.local.entry(digest)
        if entry is not None and not entry[1]:  # this node's own key
            return self.local.lookup(token)
        if entry is None and not self._unknown.take():
            # A token this node has never seen, beyond the rate at which such tokens are checked with the primary
            # (a stream of made-up tokens must not become a stream of queries there): refused for now.
            if not self._refusing:
                log.warning("too many unknown API keys presented: the next ones are refused without asking the primary")
            self._refusing = True
            return None
        self._refusing = False
        if self._available():
            try:
                rows = self._query(f"SELECT {_COLUMNS} FROM {{schema}}.api_keys WHERE token_hash = %s", (digest,))
            except (PrimaryUnavailableError, PrimaryRejectedError) as exc:
                log.info("API key checked against this node's copy (primary: %s)", exc)
            else:
                if not rows:
                    if entry is not None:
                        self.local.drop_copy(digest)
                    return None
                key = _key(rows[0])
                self.local.keep_copy(key, digest, self._wall())
                if not key.active:
                    return None
                self._touch(key)
                return key
        if entry is None or not entry[0].active:
            return None
        return entry[0]

    def _touch(self, key: ApiKey) -> None:
        now = self._wall()
        if now - self._touched.get(key.id, float("-inf")) < LAST_USED_EVERY:
            return
        self._touched[key.id] = now
        try:
            self._query("UPDATE {schema}.api_keys SET last_used_at = %s WHERE id = %s", (now, key.id))
        except (PrimaryUnavailableError, PrimaryRejectedError):
            pass  # a figure, not a decision
