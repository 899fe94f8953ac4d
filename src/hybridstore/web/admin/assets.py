"""``GET /admin/static/{name}``: the UI's stylesheet, scripts and vendored libraries (uPlot, with its licence),
read from the package (public: the login page needs them; they hold no data). Long-cached: a file's content
only changes with the package version."""

from __future__ import annotations

from importlib import resources
from pathlib import Path, PurePosixPath

from fastapi import APIRouter
from starlette.responses import FileResponse, Response

from ..problems import not_found

PREFIX = "/admin/static/"
TYPES = {".css": "text/css", ".js": "text/javascript", ".txt": "text/plain", ".svg": "image/svg+xml"}


def build() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    root = resources.files("hybridstore.web.admin") / "static"
    base = Path(str(root)).resolve()  # the package is installed as files (hatchling wheel, or a source tree)

    @router.get(PREFIX + "{name:path}")
    async def static(name: str) -> Response:
        parts = PurePosixPath(name).parts
        # only plain names below static/: no absolute path, no parent, no hidden file, no backslash
        if name.startswith("/") or not parts or any(p == ".." or p.startswith(".") or "\\" in p for p in parts):
            raise not_found("no such asset")
        path = Path(str(root)).joinpath(*parts).resolve()
        suffix = PurePosixPath(name).suffix
        if suffix not in TYPES or not path.is_relative_to(base) or not path.is_file():
            raise not_found("no such asset")
        return FileResponse(
            str(path),
            media_type=TYPES[suffix],
            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    return router
