"""Entity tags and conditional requests (``If-Match`` / ``If-None-Match``) for items — pure functions.

The ETag of an item is its version, ``"<version>"``, once the primary has accepted it. While the node holds a
local change the primary has not accepted yet, the version has not moved (it is the primary's, +1 per accepted
write), so the ETag is ``"p.<hlc>"`` instead: the hybrid-logical-clock stamp of that pending write, unique to it.
When the write reaches the primary the ETag becomes the new version, and a client holding the pending tag gets
412 and reads again (safe, never a lost update).

Comparison is strong (RFC 9110): a weak tag (``W/"…"``) never matches ``If-Match``. A bare version without
quotes (``If-Match: 3``) is accepted as ``"3"`` for convenience.
"""

from __future__ import annotations

from .problems import WebError


def etag_for(version: int, hlc: str, pending: bool) -> str:
    return f'"p.{hlc}"' if pending else f'"{version}"'


def _tags(header: str) -> list[str] | None:
    """The tags of a header value, or ``None`` for ``*``."""
    if header.strip() == "*":
        return None
    tags = []
    for part in header.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.startswith(('"', "W/")):
            part = f'"{part}"'
        tags.append(part)
    return tags


def check_preconditions(if_match: str | None, if_none_match: str | None, current: str | None) -> None:
    """Raise 412 unless the conditions hold for a resource whose ETag is ``current`` (``None``: it does not
    exist). Used before writes and deletes."""
    if if_match is not None:
        tags = _tags(if_match)
        if current is None or (tags is not None and current not in tags):
            raise WebError(
                412,
                "precondition-failed",
                "Precondition failed",
                f"If-Match {if_match.strip()} does not match the item's ETag {current or '(none: no such item)'}",
            )
    if if_none_match is not None and current is not None:
        tags = _tags(if_none_match)
        weak_current = f"W/{current}"
        if tags is None or current in tags or weak_current in tags:
            raise WebError(
                412,
                "precondition-failed",
                "Precondition failed",
                f"If-None-Match {if_none_match.strip()} matches the item's ETag {current}",
            )
