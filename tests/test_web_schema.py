"""Property tests over the OpenAPI document (schemathesis): requests generated from every operation's schema —
valid ones, then ones that break it — never get a 5xx, and every error is a problem-details body."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from . import test_web_api as base
from .test_web_api import Web

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
make_web, web = base.make_web, base.web  # the fixtures
EXAMPLES = 15


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(web: Web, mode: Any) -> None:
    auth = web.auth("admin")
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", web.client.app, headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    failures: list[str] = []
    statuses: dict[int, int] = {}

    def checker(operation: Any) -> Any:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode, headers=auth))
        def run(case: Any) -> None:
            response = case.call(headers=auth)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500 and response.status_code != 503:
                failures.append(f"{operation.label}: {response.status_code} {response.text[:300]}")
            if response.status_code >= 400:
                assert response.headers["content-type"] == ["application/problem+json"], operation.label
                assert "Traceback" not in response.text

        return run

    for operation in operations:
        try:
            checker(operation)()
        except Unsatisfiable:  # negative mode: an operation without parameters or body has nothing to break
            assert mode == GenerationMode.NEGATIVE, operation.label
    assert not failures, "\n".join(failures[:10])
    assert not statuses.get(401) and not statuses.get(403), statuses  # the generated requests got past auth
    served = sum(n for status, n in statuses.items() if status < 400)
    assert served > (100 if mode == GenerationMode.POSITIVE else 0), statuses
