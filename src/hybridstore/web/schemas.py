"""Request bodies (validated by FastAPI: a wrong type is a 422 problem) and response shapes (for the OpenAPI document
only: responses are plain data built by the routes, not re-validated on the hot path)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_MAX = 200


class _Body(BaseModel):
    # a misspelt option is an error, not silently ignored; "1" is not a number nor "yes" a boolean
    model_config = ConfigDict(extra="forbid", strict=True)


# -- requests ---------------------------------------------------------------------------------------------------


class SyncRequest(_Body):
    full: bool = Field(default=False, description="Rebuild the local copy from the primary (pending ops go first).")


class ResolveRequest(_Body):
    choice: Literal["local", "remote", "value"] = Field(
        description="Keep the local value (the one that lost), the remote one, or write `value`."
    )
    value: Any = Field(default=None, description="The value to write when choice is `value`.")


class Confirmation(_Body):
    confirm: str = Field(default="", max_length=NAME_MAX, description="The target's id: this call destroys data.")


class BackupCreateRequest(_Body):
    label: str = Field(default="Manual backup", max_length=NAME_MAX)
    description: str = Field(default="", max_length=10_000)


class RestoreRequest(_Body):
    overwrite: bool = Field(default=True, description="Replace records that exist (needs `confirm`), or keep them.")
    validate_data: bool = Field(default=True, description="Check the whole backup before writing anything.")
    collections: list[str] | None = Field(default=None, max_length=10_000, description="Only these collections.")
    keys: list[str] | None = Field(default=None, max_length=100_000, description="Restore only these keys.")
    dry_run: bool = Field(default=False, description="Only report what would change.")
    confirm: str = Field(default="", max_length=NAME_MAX, description="The backup id, required to overwrite records.")


class PruneRequest(_Body):
    dry_run: bool = Field(default=False, description="Only report what would be removed.")


class BackupConfigChange(_Body):
    enabled: bool | None = None
    automatic: bool | None = None
    interval_hours: float | None = None
    max_backups: int | None = None
    compress: bool | None = None
    encrypt: bool | None = None
    source: Literal["auto", "local", "primary"] | None = None
    confirm: str = Field(default="", max_length=NAME_MAX, description='Type `"config"`: this changes every node.')


class ConfigChange(_Body):
    """Settings this node changes while it runs (until it restarts); see `hybridstore.web.settings`."""

    log_level: Literal["debug", "info", "warning", "error", "critical"] | None = None
    heartbeat_interval: float | None = Field(default=None, gt=0, le=86_400, description="Seconds.")
    pull_interval: float | None = Field(default=None, gt=0, le=3_600, description="Seconds.")
    sync_retry_attempts: int | None = Field(default=None, ge=1, le=1_000)
    confirm: str = Field(default="", max_length=NAME_MAX, description='Type `"config"`: this changes the node.')


# -- responses (documentation) ----------------------------------------------------------------------------------


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    detail: str


class ItemOut(BaseModel):
    collection: str
    key: str
    value: Any
    version: int = Field(description="The primary's version (0 until the record first reaches the primary).")
    hlc: str
    origin: str
    source: Literal["primary", "local", "journal"] = Field(description="The tier that answered.")
    pending: bool = Field(description="The node holds a change the primary has not accepted yet.")
    synced_at: float | None
    updated_at: float | None


class PageOut(BaseModel):
    items: list[ItemOut]
    next_after: str | None = Field(description="Pass as `after` for the next page (null at the end).")


class WriteOut(BaseModel):
    collection: str
    key: str
    tier: Literal["primary", "local", "journal"] = Field(description="Where the write is durable now.")
    source: Literal["primary", "local", "journal"]
    version: int = Field(description="The primary's new version; 0 while the write is queued.")
    queued: bool = Field(description="The write still has to reach the primary (it will, by itself).")
    op_id: str
    hlc: str
    conflict: bool = Field(description="The primary holds another value; the write waits for an admin.")


class JobOut(BaseModel):
    id: str
    kind: str
    target: str
    actor: str
    state: Literal["running", "succeeded", "failed", "interrupted"]
    created_at: float
    finished_at: float | None
    progress: dict[str, Any]
    result: Any
    problem: ProblemOut | None


_PROBLEM_TEXT = {
    400: "Malformed request (e.g. a body that is not JSON)",
    401: "No valid API key",
    403: "The key lacks the scope",
    404: "No such resource",
    409: "Conflicts with the current state",
    412: "A precondition (If-Match, If-None-Match) does not hold",
    413: "The body is too large",
    415: "The body is not JSON",
    422: "Invalid input",
    429: "Too many jobs are running",
    503: "A tier is unavailable; retry later",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the problems a route may answer (401, 403, 422 and 503 always)."""
    return {
        status: {
            "model": ProblemOut,
            "content": {"application/problem+json": {}},
            "description": _PROBLEM_TEXT[status],
        }
        for status in sorted({401, 403, 422, 503, *statuses})
    }
