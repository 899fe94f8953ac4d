"""The primary's connection settings: the URL checked, what it says about pooling, and libpq conninfo strings.

A URL can say how the primary is reached. Supabase's transaction pooler listens on port 6543; its session pooler is
a ``pooler.`` host on port 5432 (it keeps one server connection per client, so LISTEN and prepared statements
work). Anything else says nothing: the tier then tells a transaction-mode pooler from how the server behaves
(`hybridstore.tiers.pooling`). ``?pgbouncer=true`` (the convention of other Postgres clients) or
``?hybridstore_pooled=true|false`` in the URL, or ``primary_pooled=`` in the options, forces it either way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError:  # pragma: no cover - exercised only without the [postgres] extra
    psycopg = None  # type: ignore[assignment]

TRANSACTION_POOLER_PORT = "6543"  # Supabase's transaction-mode pooler
_POOLED_PARAMS = ("pgbouncer", "hybridstore_pooled")
_KEYWORD_PARAM = re.compile(r"(?:^|\s)(pgbouncer|hybridstore_pooled)=(\S*)")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def split_pooled_param(url: str) -> tuple[str, bool | None]:
    """``url`` without our own pooling parameter (libpq would refuse it), and what that parameter forces."""
    forced: bool | None = None
    if "://" in url:
        parts = urlsplit(url)
        kept: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in _POOLED_PARAMS:
                forced = _flag(name, value)
            else:
                kept.append((name, value))
        if forced is None:
            return url, None
        return urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote))), forced
    for m in _KEYWORD_PARAM.finditer(url):
        forced = _flag(m.group(1), m.group(2))
    return (_KEYWORD_PARAM.sub("", url).strip(), forced) if forced is not None else (url, None)


def _flag(name: str, value: str) -> bool:
    if value.lower() not in _TRUE + _FALSE:
        raise ConfigError(f"{name}= in the primary URL must be true or false, not {value!r}")
    return value.lower() in _TRUE


def pooling_from_url(params: dict[str, Any]) -> bool | None:
    """True when the address is a transaction-mode pooler's, False when it is known to keep sessions (Supabase's
    session pooler), None when the URL does not say (a direct server, or a pooler on any other port)."""
    host, port = str(params.get("host", "")), str(params.get("port", "") or "5432")
    if port == TRANSACTION_POOLER_PORT:
        return True
    if "pooler." in host:
        return port != "5432"  # Supabase: 5432 is the session pooler, 6543 the transaction pooler
    return None


def is_pooled(params: dict[str, Any]) -> bool:
    """Does the URL alone say this is a transaction-mode pooler?"""
    return pooling_from_url(params) is True


def check_url(url: str) -> dict[str, Any]:
    """Parse a ``postgresql://`` URL or libpq conninfo string, or raise `ConfigError`."""
    if psycopg is None:
        raise ConfigError("a primary URL needs the PostgreSQL driver: pip install 'hybridstore[postgres]'")
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("primary URL is empty")
    if "://" in url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"primary URL must start with postgresql:// (got {url.split('://')[0]}://)")
    url, _ = split_pooled_param(url)
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"malformed primary URL: {exc}") from None
    port = params.get("port")
    if port is not None and not all(p.isdigit() and 0 < int(p) < 65536 for p in str(port).split(",")):
        raise ConfigError(f"malformed primary URL: port {port!r} is not a TCP port number")
    return params


@dataclass
class ConnectionSettings:
    """libpq parameters for one primary, and the conninfo strings built from them."""

    params: dict[str, Any]
    timeout: float
    session_params: dict[str, Any] | None = None  # a session-keeping address, used only for LISTEN
    _user_options: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self._user_options = str(self.params.pop("options", "") or "")
        bounds = {
            "connect_timeout": max(2, math.ceil(self.timeout)),
            "keepalives": 1,
            "keepalives_idle": max(1, int(self.timeout)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": int(self.timeout * 1000),
        }
        self.params.update(bounds)
        if self.session_params is not None:
            self.session_params.setdefault("application_name", self.params.get("application_name"))
            self.session_params.update(bounds)

    @property
    def application_name(self) -> str:
        return str(self.params.get("application_name", ""))

    def conninfo(self, *, limits: bool, options: bool = True) -> str:
        """With ``limits``: server-side ``statement_timeout`` and ``lock_timeout`` as startup options, so a lock
        wait or a slow plan is cut by the server as well as by our watchdog (direct connections). Without: the
        caller sets them per transaction (``SET LOCAL``: a transaction pooler drops or refuses startup options).
        ``options=False``: no ``options`` parameter at all, not even the URL's (the server refuses it)."""
        params = dict(self.params)
        text = self._user_options if options else ""
        if limits and options:
            limit_ms = int(self.timeout * 1000)
            text = f"{text} -c statement_timeout={limit_ms} -c lock_timeout={limit_ms}".strip()
        if text:
            params["options"] = text
        return str(make_conninfo("", **params))

    def session_conninfo(self) -> str | None:
        """The session address's conninfo, without startup options (a session pooler may refuse them)."""
        if self.session_params is None:
            return None
        return str(make_conninfo("", **self.session_params))
