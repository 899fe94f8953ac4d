"""``/api/v1/conflicts`` and ``/api/v1/dead-letters``: what sync could not settle by itself, and an admin's way to
settle it. Conflicts live on the primary (503 while it is unreachable); dead letters live on this node. And
``/api/v1/outbox``: what this node has not handed to the primary yet."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query, Request

from ..model import Conflict
from ..validation import check_collection
from .api_data import write_json
from .auth import principal_of
from .confirm import require_confirmation
from .context import WebContext
from .localview import outbox_view
from .problems import not_found
from .responses import DataResponse
from .routing import ScopedRouter
from .schemas import Confirmation, ResolveRequest, WriteOut, problems

MAX_ID = 2**63 - 1
Id = Annotated[int, Path(ge=1, le=MAX_ID)]


def build(ctx: WebContext) -> ScopedRouter:
    routes = ScopedRouter(tags=["sync"])
    store = ctx.store

    @routes.get("/conflicts", "read", summary="Conflicts recorded on the primary", responses=problems())
    async def conflicts(
        status: Annotated[Literal["open", "resolved", "all"], Query()] = "open",
        collection: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> DataResponse:
        wanted = None if status == "all" else status
        found = await ctx.run(lambda: store.conflicts(wanted, collection=collection, limit=limit, after_id=after_id))
        return DataResponse({"conflicts": [_conflict(c) for c in found]})

    @routes.get("/conflicts/{conflict_id}", "read", summary="One conflict", responses=problems(404))
    async def conflict(conflict_id: Id) -> DataResponse:
        found = await ctx.run(lambda: store.get_conflict(conflict_id))
        if found is None:
            raise not_found(f"no conflict with id {conflict_id}")
        return DataResponse(_conflict(found))

    @routes.post(
        "/conflicts/{conflict_id}/resolve",
        "admin",
        summary="Settle an open conflict: keep the local value, the remote one, or write a new one",
        responses={200: {"model": WriteOut}, **problems(404, 409)},
    )
    async def resolve(request: Request, conflict_id: Id, body: ResolveRequest) -> DataResponse:
        actor = principal_of(request).actor

        def settle() -> dict[str, Any]:
            found = store.get_conflict(conflict_id)
            if found is None:
                raise not_found(f"no conflict with id {conflict_id}")
            result = store.resolve_conflict(conflict_id, body.choice, body.value, actor=actor)
            return {
                "conflict_id": conflict_id,
                "choice": body.choice,
                "write": None if result is None else write_json(found.collection, found.key, result),
            }

        done = await ctx.audited(
            request, "conflict.resolve", f"conflict/{conflict_id}", settle, details={"choice": body.choice}
        )
        return DataResponse(done)

    @routes.get("/outbox", "read", summary="Writes waiting for the primary, oldest first (and the journal's)")
    async def outbox(
        collection: Annotated[str | None, Query(max_length=64, description="Only this collection.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> DataResponse:
        def view() -> dict[str, Any]:
            if collection is not None:
                check_collection(collection)
            return outbox_view(store, collection=collection, limit=limit)

        return DataResponse(await ctx.run(view))

    @routes.get("/dead-letters", "read", summary="Ops the primary refused for good (they block nothing)")
    async def dead_letters(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> DataResponse:
        found = await ctx.run(lambda: store.dead_letters(limit=limit, after_id=after_id))
        return DataResponse({"dead_letters": found})

    def _letter(letter_id: int) -> dict[str, Any]:
        found = store.dead_letters(limit=1, after_id=letter_id - 1)
        if not found or found[0]["id"] != letter_id:
            raise not_found(f"no dead letter with id {letter_id}")
        return found[0]

    @routes.post(
        "/dead-letters/{letter_id}/retry",
        "admin",
        summary="Write a dead letter's value again, as a new write",
        responses={200: {"model": WriteOut}, **problems(404)},
    )
    async def retry(request: Request, letter_id: Id) -> DataResponse:
        actor = principal_of(request).actor

        def again() -> dict[str, Any]:
            letter = _letter(letter_id)
            result = store.retry_dead_letter(letter_id, actor=actor)
            return write_json(letter["collection"], letter["key"], result)

        return DataResponse(await ctx.audited(request, "deadletter.retry", f"dead-letter/{letter_id}", again))

    @routes.delete(
        "/dead-letters/{letter_id}",
        "admin",
        summary="Discard a dead letter for good (type its id in `confirm`)",
        responses=problems(404),
    )
    async def discard(
        request: Request,
        letter_id: Id,
        body: Confirmation | None = None,
        confirm: Annotated[str | None, Query(max_length=200, description="Instead of the body's confirm.")] = None,
    ) -> DataResponse:
        actor = principal_of(request).actor

        def drop() -> dict[str, Any]:
            require_confirmation(body.confirm if body is not None else confirm, str(letter_id))
            _letter(letter_id)
            return store.discard_dead_letter(letter_id, actor=actor)

        letter = await ctx.audited(request, "deadletter.discard", f"dead-letter/{letter_id}", drop)
        return DataResponse({"discarded": letter})

    return routes


def _conflict(c: Conflict) -> dict[str, Any]:
    return c.to_dict()
