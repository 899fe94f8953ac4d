"""`ScopedRouter`: every route is declared with the scope it needs, so none can be added without one.

The scope is enforced by a `Requirement` dependency and recorded in the OpenAPI operation as
``x-required-scope`` (the docs show it; the tests read it to check every route refuses a key without it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends

from .auth import Requirement
from .keys import SCOPES

F = TypeVar("F", bound=Callable[..., Any])
SCOPE_EXTRA = "x-required-scope"
REQUIREMENTS = {scope: Requirement(scope) for scope in SCOPES}


class ScopedRouter:
    def __init__(self, *, tags: list[str]) -> None:
        self.router = APIRouter(tags=list(tags))

    def route(self, method: str, path: str, scope: str, **options: Any) -> Callable[[F], F]:
        extra = {SCOPE_EXTRA: scope, **options.pop("openapi_extra", {})}

        def register(fn: F) -> F:
            self.router.add_api_route(
                path,
                fn,
                methods=[method],
                dependencies=[Depends(REQUIREMENTS[scope])],
                openapi_extra=extra,
                response_model=None,
                **options,
            )
            return fn

        return register

    def get(self, path: str, scope: str, **options: Any) -> Callable[[F], F]:
        return self.route("GET", path, scope, **options)

    def put(self, path: str, scope: str, **options: Any) -> Callable[[F], F]:
        return self.route("PUT", path, scope, **options)

    def post(self, path: str, scope: str, **options: Any) -> Callable[[F], F]:
        return self.route("POST", path, scope, **options)

    def delete(self, path: str, scope: str, **options: Any) -> Callable[[F], F]:
        return self.route("DELETE", path, scope, **options)
