"""``/api/v1/collections…``: the data — collections, paged item lists, one item (GET / PUT / DELETE).

``PUT`` takes the JSON value itself as its body. Every answer says which tier served or stored it; writes say
whether they are still queued for the primary. ``ETag`` and ``If-Match`` / ``If-None-Match``: see
`hybridstore.web.conditions`. A conditional write is checked and made under a lock of this node's for the key,
so two conditional requests to this node never both win; the store has no compare-and-set on the primary yet,
so a write made meanwhile by another node (or by code using the store directly) is not seen by the check.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Query, Request

from ..model import Record, WriteResult
from .conditions import check_preconditions, etag_for
from .context import WebContext
from .limits import read_json_value
from .localview import collection_figures
from .problems import not_found, unavailable
from .responses import DataResponse
from .routing import ScopedRouter
from .schemas import ItemOut, PageOut, WriteOut, problems

ITEM = "/collections/{collection}/items/{key:path}"
ANY_JSON = {"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}}
IfMatch = Annotated[str | None, Header(description="Write only if the item's ETag is one of these (or `*`: exists).")]
IfNoneMatch = Annotated[str | None, Header(description="Write only if the item's ETag is none of these (`*`: absent).")]


def record_json(r: Record) -> dict[str, Any]:
    return {
        "collection": r.collection,
        "key": r.key,
        "value": r.value,
        "version": r.version,
        "hlc": r.hlc,
        "origin": r.origin,
        "source": r.source,
        "pending": r.synced_at is None,
        "synced_at": r.synced_at,
        "updated_at": r.updated_at,
    }


def record_etag(r: Record) -> str:
    return etag_for(r.version, r.hlc, r.synced_at is None)


def write_json(collection: str, key: str, w: WriteResult) -> dict[str, Any]:
    return {
        "collection": collection,
        "key": key,
        "tier": w.tier,
        "source": w.tier,
        "version": w.version,
        "queued": w.queued,
        "op_id": w.op_id,
        "hlc": w.hlc,
        "conflict": w.conflict,
    }


def build(ctx: WebContext) -> ScopedRouter:
    routes = ScopedRouter(tags=["data"])
    store = ctx.store

    @routes.get(
        "/collections",
        "read",
        summary="Collections this node holds: live records, their bytes (stored JSON), writes waiting for the primary",
    )
    async def list_collections() -> DataResponse:
        def figures() -> list[dict[str, Any]]:
            local = store.node.slot.tier
            if local is None:
                raise unavailable(f"the local store is not usable: {store.node.slot.error}")
            return [
                {"name": f.collection, "records": f.records, "bytes": f.bytes, "pending": f.pending}
                for f in collection_figures(local.path)
            ]

        return DataResponse({"collections": await ctx.run(figures), "source": "local"})

    @routes.get(
        "/collections/{collection}/items",
        "read",
        summary="A page of live items, ordered by key",
        responses={200: {"model": PageOut}, **problems()},
    )
    async def list_items(
        collection: str,
        prefix: Annotated[str, Query(max_length=512, description="Only keys starting with this.")] = "",
        after: Annotated[str | None, Query(max_length=512, description="The previous page's next_after.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> DataResponse:
        page = await ctx.run(lambda: store.list(collection, prefix=prefix, limit=limit, after=after))
        return DataResponse({"items": [record_json(r) for r in page.records], "next_after": page.next_after})

    @routes.get(ITEM, "read", summary="One item", responses={200: {"model": ItemOut}, **problems(404)})
    async def get_item(collection: str, key: str) -> DataResponse:
        record = await ctx.run(lambda: store.get(collection, key))
        if record is None:
            raise not_found(f"no item {key!r} in {collection!r}")
        return DataResponse(record_json(record), headers={"ETag": record_etag(record)})

    @routes.put(
        ITEM,
        "write",
        summary="Store a JSON value (the body) under the key",
        responses={200: {"model": WriteOut}, **problems(400, 412, 413, 415)},
        openapi_extra=ANY_JSON,
    )
    async def put_item(
        request: Request, collection: str, key: str, if_match: IfMatch = None, if_none_match: IfNoneMatch = None
    ) -> DataResponse:
        value = await read_json_value(request)
        if if_match is None and if_none_match is None:
            result = await ctx.run(lambda: store.set(collection, key, value))
        else:
            result = await ctx.run(lambda: _conditional(ctx, collection, key, if_match, if_none_match, value, True))
        return DataResponse(
            write_json(collection, key, result), headers={"ETag": etag_for(result.version, result.hlc, result.queued)}
        )

    @routes.delete(
        ITEM,
        "write",
        summary="Delete the item (a tombstone that reaches the primary and the other nodes)",
        responses={200: {"model": WriteOut}, **problems(412)},
    )
    async def delete_item(
        collection: str, key: str, if_match: IfMatch = None, if_none_match: IfNoneMatch = None
    ) -> DataResponse:
        if if_match is None and if_none_match is None:
            result = await ctx.run(lambda: store.delete(collection, key))
        else:
            result = await ctx.run(lambda: _conditional(ctx, collection, key, if_match, if_none_match, None, False))
        return DataResponse(write_json(collection, key, result))

    return routes


def _conditional(
    ctx: WebContext,
    collection: str,
    key: str,
    if_match: str | None,
    if_none_match: str | None,
    value: Any,
    is_set: bool,
) -> WriteResult:
    store = ctx.store
    with ctx.key_lock(collection, key):
        current = store.get(collection, key)
        check_preconditions(if_match, if_none_match, None if current is None else record_etag(current))
        return store.set(collection, key, value) if is_set else store.delete(collection, key)
