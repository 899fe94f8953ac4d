"""Record lines as a restore reads them (format in docs/backups.md): ``[key, value, version, hlc, origin,
updated_at]``, one JSON array per line.

Parsing a line and encoding its value again costs far more than writing the record. So the validation pass
parses each chunk once and proves, with a few checks over the whole chunk, that every line can be cut by
position (`cut_lines`) into its key and its value's text exactly as the store would encode that value
(`verbatim`). The apply pass then only cuts those chunks, after checking that their bytes are the ones
validated (`ChunkCheck`); a chunk that does not pass (a primary's ``jsonb`` spacing, escaped keys, large
floats) is parsed and encoded value by value as before.
"""

from __future__ import annotations

import json
import json.scanner
from dataclasses import dataclass
from typing import Any

from ..errors import BackupTamperedError
from ..validation import MAX_KEY_CHARS, check_key

_encode_all = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_NUMBER = (int, float)
# The C scanner: one JSON value at an index, with its end, so a line is checked to be exactly one value
# (typeshed types the scanner's argument oddly).
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


@dataclass(frozen=True)
class ChunkCheck:
    """What the validation pass learnt about one chunk of a selected collection: the reader's digest of it
    (`BackupReader.digest`: the apply pass reads the file again and must find the same bytes) and whether its
    lines can be cut verbatim."""

    digest: bytes
    verbatim: bool


def split(body: bytes, collection: str) -> list[str]:
    """A chunk's lines (each ended by a newline in the file), as text."""
    try:
        lines = body.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise BackupTamperedError(f"collection {collection!r}: a record line is not UTF-8 text") from None
    if lines.pop():
        raise BackupTamperedError(f"collection {collection!r}: the last record line has no line end")
    return lines


def parse(lines: list[str], collection: str) -> list[list[Any]]:
    """Every line parsed, each exactly one record of the right shape; `BackupTamperedError` otherwise."""
    recs: list[list[Any]] = []
    add = recs.append
    for line in lines:
        try:
            rec, end = _scan(line, 0)
        except (StopIteration, ValueError):
            raise BackupTamperedError(f"collection {collection!r}: a record line is not valid JSON") from None
        except RecursionError:
            raise BackupTamperedError(f"collection {collection!r}: a record line is nested too deeply") from None
        if not (
            end == len(line)
            and type(rec) is list
            and len(rec) == 6
            and type(rec[0]) is str
            and type(rec[2]) is int
            and type(rec[3]) is str
            and type(rec[4]) is str
        ):
            raise BackupTamperedError(f"collection {collection!r}: a record line has the wrong shape")
        add(rec)
    return recs


def cut_lines(lines: list[str]) -> tuple[list[str], list[str]]:
    """(keys, value texts) cut out of record lines by position, without parsing them: a key is what lies
    between the line's opening ``["`` and the first ``",``; a value is what follows up to the fourth comma
    from the line's end (version, hlc, origin and updated_at come after it). Exact only for lines that
    `verbatim` accepted."""
    keys: list[str] = []
    texts: list[str] = []
    add_key, add_text = keys.append, texts.append
    for line in lines:
        head = line.rsplit(",", 4)[0]
        cut = head.find('",', 2)
        add_key(head[2:cut])
        add_text(head[cut + 2 :])
    return keys, texts


def verbatim(recs: list[list[Any]], keys: list[str], texts: list[str], max_value_bytes: int) -> bool:
    """True when `cut_lines` gave, for every line, its key and the canonical text of its value (what
    `encode_value` returns for it) and every value is one the store accepts. Decided over the whole chunk:

    - every line is exactly one record (`parse`);
    - a cut key holding neither ``"`` nor ``\\`` is exactly the first element's string (a line starts with
      ``["``, so the first ``",`` closes that string when nothing in it is escaped);
    - hlc and origin hold no comma and updated_at is a number, so the four last commas of a line are the
      separators after the value;
    - the values' canonical encoding, all at once, equals the cut texts joined by commas. Each cut text starts
      where its value starts and can only carry extra blanks around it; where a JSON value ends follows from
      the text from its start (its closing bracket or quote; a number ends at the next comma), so equal strings
      mean each cut text is its value's canonical text, piece by piece;
    - no ``e+`` (a large float that `encode_value` rewrites), no ``\\u0000``, all values together within the
      size limit (so each is)."""
    if len(recs) != len(keys):
        return False
    joined_keys = "".join(keys)
    if '"' in joined_keys or "\\" in joined_keys or keys != [r[0] for r in recs]:
        return False
    if any(type(r[5]) not in _NUMBER or "," in r[3] or "," in r[4] for r in recs):
        return False
    try:
        canonical = _encode_all([r[1] for r in recs])
    except (TypeError, ValueError, RecursionError):
        return False
    if canonical[1:-1] != ",".join(texts) or "e+" in canonical or "\\u0000" in canonical:
        return False
    size = len(canonical) if canonical.isascii() else len(canonical.encode("utf-8"))
    return size - len(recs) - 1 <= max_value_bytes  # less the brackets and commas: the values' bytes


def check_keys(keys: list[str]) -> None:
    """`check_key` of each key (the usual keys, short printable ASCII, are checked all at once)."""
    joined = "".join(keys)
    lengths = [len(k) for k in keys]
    if (
        joined.isascii()
        and joined.isprintable()
        and min(lengths, default=1) > 0
        and max(lengths, default=0) <= MAX_KEY_CHARS
    ):
        return
    for key in keys:
        check_key(key)
