"""Input validation: collection names, keys and values. Pure functions, no I/O."""

from __future__ import annotations

import re
from decimal import Decimal
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from .errors import ValidationError

COLLECTION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
MAX_KEY_CHARS = 512
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# A JSON string (skipped) or a number written with a positive exponent (rewritten, see _plain_floats).
_STRING_OR_BIG_FLOAT = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?[eE]\+\d+')


def _not_json(o: object) -> None:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


# The C encoder that `json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode` builds
# anew on every call, built once. No circular-reference markers: a shared marker table would be left dirty by a
# failed call; a cycle ends in RecursionError instead, reported as such below.
_encode_chunks = c_make_encoder(None, _not_json, encode_basestring, None, ":", ",", False, False, False)
_valid_collections: set[str] = set()


def check_collection(name: object) -> str:
    if type(name) is str and name in _valid_collections:  # few names, checked on every call: remember them
        return name
    if not isinstance(name, str) or not COLLECTION_RE.fullmatch(name):
        raise ValidationError(
            f"invalid collection name {name!r}: use 1-64 characters, letters, digits, '_', '.', '-', "
            "starting with a letter or '_'"
        )
    if len(_valid_collections) < 10_000:
        _valid_collections.add(name)
    return name


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValidationError(f"invalid key {key!r}: a key is a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise ValidationError(f"key too long ({len(key)} characters); the limit is {MAX_KEY_CHARS}")
    if key.isascii() and key.isprintable():  # the usual key, checked without building its UTF-8 bytes
        return key
    if "\x00" in key:
        raise ValidationError("invalid key: keys cannot contain NUL characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"invalid key {key!r}: not valid Unicode ({exc.reason})") from None
    return key


def check_address(collection: object, key: object) -> None:
    """`check_collection` and `check_key` in one call: the checks every operation makes, the usual names passing
    without another call."""
    if type(collection) is not str or collection not in _valid_collections:
        check_collection(collection)
    if type(key) is not str or not key or len(key) > MAX_KEY_CHARS or not (key.isascii() and key.isprintable()):
        check_key(key)


def encode_value(value: Any, *, max_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> str:
    """Canonical JSON text of ``value`` or `ValidationError` (not JSON, NaN/Infinity, NUL, too large)."""
    try:
        text = "".join(_encode_chunks(value, 0))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"value is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise ValidationError("value is not JSON-serialisable: it contains itself or is nested too deeply") from None
    if "e+" in text:
        text = _STRING_OR_BIG_FLOAT.sub(_plain_float, text)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValidationError(f"value contains invalid Unicode ({exc.reason})") from None
    if size > max_bytes:
        raise ValidationError(
            f"value is {size} bytes of JSON; the limit is {max_bytes} (raise max_value_bytes to allow more)"
        )
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise ValidationError("value contains a NUL character (\\u0000), which PostgreSQL JSON cannot store")
    return text


def _plain_float(match: re.Match[str]) -> str:
    """Write a large float (``7.2e+16``) as plain decimal with a fraction (``72000000000000000.0``).

    PostgreSQL's jsonb prints numbers without exponents, so ``7.2e+16`` would come back as the integer
    ``72000000000000000`` and decode to an ``int`` (and, above 2**53, to a different number than the float
    stored). The same number with ``.0`` stays a float through jsonb and decodes to exactly the float written.
    """
    token = match.group(0)
    if token.startswith('"'):
        return token
    plain = format(Decimal(token), "f")
    return plain if "." in plain else plain + ".0"
