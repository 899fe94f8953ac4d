"""Problem details (RFC 9457): every error the HTTP service returns, and how our error tree maps onto them.

`problem_for` is pure: it decides the status and the problem type of an exception from its class alone, so the
mapping is tested without a server. What the caller does next decides the status, as in the error tree:
fix the input (422), find another resource (404), settle a conflict (409), retry later (503, with
``Retry-After``), meet a precondition (412). An exception outside our tree is a 500 whose body names no
exception and holds no traceback (the server log has both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.exceptions import HTTPException

from ..errors import (
    BackupError,
    BackupNotFoundError,
    BackupTamperedError,
    ClosedError,
    ConfigError,
    ConflictError,
    HybridStoreError,
    JournalError,
    LocalStoreError,
    NotABackupError,
    PrimaryMisconfiguredError,
    PrimaryRejectedError,
    PrimaryUnavailableError,
    StorageExhaustedError,
    UnavailableError,
    ValidationError,
    WrongPassphraseError,
)

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:hybridstore:problem:"
RETRY_AFTER_S = 2  # what a 503 tells clients: the circuit probes the primary every 0.5 s while it is open


@dataclass(frozen=True)
class Problem:
    """One problem response: ``slug`` names its type (``urn:hybridstore:problem:<slug>``)."""

    status: int
    slug: str
    title: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": TYPE_PREFIX + self.slug, "title": self.title, "status": self.status, "detail": self.detail}


class WebError(HTTPException):
    """An error of the HTTP layer itself (authentication, scope, body, precondition, missing resource)."""

    def __init__(self, status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail, headers)
        self.problem = Problem(status, slug, title, detail, dict(headers or {}))


def not_found(detail: str) -> WebError:
    return WebError(404, "not-found", "Not found", detail)


def unavailable(detail: str) -> WebError:
    return WebError(503, "unavailable", "Service unavailable", detail, {"Retry-After": str(RETRY_AFTER_S)})


# (class, status, slug, title), most specific first: the first class the exception is an instance of wins.
_TREE: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (BackupNotFoundError, 404, "backup-not-found", "No such backup"),
    (BackupTamperedError, 422, "backup-tampered", "The backup failed its integrity checks"),
    (WrongPassphraseError, 422, "wrong-passphrase", "The passphrase does not open this backup"),
    (NotABackupError, 422, "not-a-backup", "Not a hybridstore backup"),
    (BackupError, 409, "backup-refused", "The backup repository refused the request"),
    (ValidationError, 422, "validation", "Invalid input"),
    (ConfigError, 422, "invalid-setting", "Invalid or incomplete setting"),
    (ConflictError, 409, "conflict", "Conflict"),
    (PrimaryMisconfiguredError, 503, "primary-misconfigured", "The primary refuses this node"),
    (PrimaryUnavailableError, 503, "primary-unavailable", "The primary is unavailable"),
    (StorageExhaustedError, 503, "storage-exhausted", "Every tier refused the write: nothing was saved"),
    (UnavailableError, 503, "unavailable", "Service unavailable"),
    (PrimaryRejectedError, 422, "primary-rejected", "The primary refused the operation"),
    (LocalStoreError, 503, "local-unavailable", "The local store is unavailable"),
    (JournalError, 503, "journal-unavailable", "The emergency journal is unavailable"),
    (ClosedError, 503, "closed", "The store is closed"),
)


def problem_for(exc: BaseException) -> Problem:
    """The problem response for any exception (see the module docstring)."""
    if isinstance(exc, WebError):
        return exc.problem
    if isinstance(exc, HTTPException):  # Starlette's own: unknown path, method not allowed
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return Problem(exc.status_code, slug, _reason(exc.status_code), str(exc.detail), dict(exc.headers or {}))
    for cls, status, slug, title in _TREE:
        if isinstance(exc, cls):
            headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}
            return Problem(status, slug, title, str(exc) or title, headers)
    if isinstance(exc, HybridStoreError):
        return Problem(500, "store-error", "The store failed", str(exc) or type(exc).__name__)
    if isinstance(exc, ImportError):  # an optional extra (backups: zstandard, cryptography) is not installed
        return Problem(
            503, "feature-unavailable", "A feature's dependencies are not installed", f"not installed: {exc.name}"
        )
    return Problem(500, "internal", "Internal error", "an unexpected error; the server log has the details")


def validation_problem(errors: list[dict[str, Any]]) -> Problem:
    """A 422 for request parameters or a body that do not fit the schema (FastAPI's validation errors). The
    input itself is never echoed: it may be large, or a secret sent to the wrong place."""
    parts = []
    for e in errors[:10]:
        where = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', 'invalid')}"[:300])
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return Problem(422, "validation", "Invalid input", "; ".join(parts) + more)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
