"""The interactive API docs (Swagger UI) at ``/api/v1/docs``, served from the ``swagger-ui-bundle-v2`` package's
files: nothing is loaded from a CDN. Without that package the page is off (the OpenAPI document stays).

The page and its assets are public (static files: no data, nothing of this node). The page asks once for an API
key (kept in the tab's ``sessionStorage``) and sends it with every request it makes, the OpenAPI document's
included (``/api/v1/openapi.json`` needs the ``read`` scope like any API route).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from .problems import not_found

ASSETS = {  # served name -> media type; nothing else of the package is reachable
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
INIT_JS = """window.onload = function () {
  var name = "hybridstore-api-key";
  var key = sessionStorage.getItem(name) || window.prompt("API key (read scope) for this node's API:") || "";
  if (key) sessionStorage.setItem(name, key);
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: function (req) {
      if (key && !req.headers.Authorization) req.headers.Authorization = "Bearer " + key;
      return req;
    },
  });
};
"""
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>hybridstore API</title>
<link rel="stylesheet" href="docs-assets/swagger-ui.css">
<link rel="icon" type="image/png" href="docs-assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs-assets/swagger-ui-bundle.js"></script>
<script src="docs-assets/hybridstore-init.js"></script>
</body>
</html>
"""
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def asset_dir() -> Path | None:
    """The Swagger UI files, or ``None`` when the package is not installed."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(str(swagger_ui_bundle.swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def build(prefix: str) -> tuple[APIRouter, set[str]] | None:
    """The docs routes under ``prefix``, and the public paths they add; ``None`` when the UI is not installed."""
    directory = asset_dir()
    if directory is None:
        return None
    router = APIRouter(include_in_schema=False)

    @router.get(f"{prefix}/docs")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers=SECURITY_HEADERS)

    @router.get(prefix + "/docs-assets/{name}")
    async def asset(name: str) -> Response:
        if name == "hybridstore-init.js":
            return Response(INIT_JS, media_type="text/javascript", headers=SECURITY_HEADERS)
        media = ASSETS.get(name)
        if media is None:
            raise not_found(f"no docs asset {name!r}")
        return FileResponse(directory / name, media_type=media, headers={"Cache-Control": "max-age=86400"})

    public = {f"{prefix}/docs", *(f"{prefix}/docs-assets/{n}" for n in [*ASSETS, "hybridstore-init.js"])}
    return router, public
