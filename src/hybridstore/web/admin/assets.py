"""``GET /admin/static/{name}``: the UI's stylesheet, scripts and vendored libraries (uPlot, with its licence),
read from the package (public: the login page needs them; they hold no data). Long-cached: a file's content
only changes with the package version."""

from __future__ import annotations

from importlib import resources
from pathlib import PurePosixPath

from fastapi import APIRouter
from starlette.responses import FileResponse, Response

from ..problems import not_found

PREFIX = "/admin/static/"
TYPES = {".css": "text/css", ".js": "text/javascript", ".txt": "text/plain", ".svg": "image/svg+xml"}


def build() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    root = resources.files("hybridstore.web.admin") / "static"

    @router.get(PREFIX + "{name:path}")
    async def static(name: str) -> Response:
        parts = PurePosixPath(name).parts
        if not parts or any(p in ("..", "") or p.startswith(".") for p in parts):
            raise not_found("no such asset")
        path = root.joinpath(*parts)
        suffix = PurePosixPath(name).suffix
        if suffix not in TYPES or not path.is_file():
            raise not_found("no such asset")
        return FileResponse(
            str(path),
            media_type=TYPES[suffix],
            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    return router
