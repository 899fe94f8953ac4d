"""`DataResponse`: the JSON answer of every route. Plain data from the store's views (status, health, reports) is
rendered as it is, compactly; what JSON cannot hold is made representable instead of failing the request: a
non-finite float (an "infinitely far" deadline) becomes ``null``, an unknown type its ``str``."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse


class DataResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str)
        except ValueError:  # NaN or an infinity somewhere: replace them, then render again
            text = json.dumps(_finite(content), ensure_ascii=False, separators=(",", ":"), default=str)
        return text.encode("utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
