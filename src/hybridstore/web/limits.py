"""Request bodies: a size limit for every request (pure ASGI middleware), and the strict JSON reader of the routes
that take a raw JSON value (``PUT`` of an item).

A body larger than the limit is refused with 413 before it is read whole: at once when ``Content-Length`` says
so, else as soon as the bytes received pass the limit (chunked uploads).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import route_path
from .problems import WebError

JSON_TYPES = ("application/json",)


def too_large(limit: int) -> WebError:
    return WebError(413, "body-too-large", "Request body too large", f"the body must be at most {limit} bytes")


class BodyLimitMiddleware:
    """``max_bytes`` for every request, but for the paths in ``overrides`` (streamed uploads: their own limit,
    ``None`` for none)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, overrides: dict[str, int | None] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = dict(overrides or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        limit = self.overrides.get(path, self.max_bytes)
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _refuse(send, WebError(400, "bad-request", "Bad request", "invalid Content-Length"))
                    return
                if declared > limit:
                    await _refuse(send, too_large(limit))
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)  # raised inside the app's body read: its error handler answers
            return message

        await self.app(scope, limited, send)


async def _refuse(send: Send, error: WebError) -> None:
    problem = error.problem
    body = json.dumps(problem.to_dict()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": problem.status,
            "headers": [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_json_value(request: Request) -> Any:
    """The body as one JSON value: 415 for another media type, 400 for bytes that are not JSON (or not UTF-8),
    422 for JSON nested too deeply to decode. NaN and Infinity parse here; the store refuses them (422)."""
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media not in JSON_TYPES and not media.endswith("+json"):
        raise WebError(415, "unsupported-media-type", "Unsupported media type", "send the value as application/json")
    raw = await request.body()
    if not raw.strip():
        raise WebError(400, "malformed-json", "Malformed JSON", "the body is empty: send a JSON value (e.g. null)")
    try:
        return json.loads(raw)
    except RecursionError:
        raise WebError(422, "validation", "Invalid input", "the JSON value is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebError(400, "malformed-json", "Malformed JSON", f"the body is not valid JSON: {exc}"[:300]) from None
