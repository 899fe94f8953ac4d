"""The web package's pure parts, without a server: entity tags and preconditions, the job runner, the audit log."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hybridstore.web.audit import AuditLog
from hybridstore.web.conditions import check_preconditions, etag_for
from hybridstore.web.jobs import JobRunner
from hybridstore.web.problems import WebError
from hybridstore.web.webdb import WebDatabase


def holds(if_match: str | None, if_none_match: str | None, current: str | None) -> bool:
    try:
        check_preconditions(if_match, if_none_match, current)
    except WebError as exc:
        assert exc.problem.status == 412
        return False
    return True


@pytest.mark.parametrize(
    ("if_match", "if_none_match", "current", "expected"),
    [
        (None, None, None, True),
        (None, None, '"3"', True),
        ('"3"', None, '"3"', True),
        ("3", None, '"3"', True),
        ('"2", "3"', None, '"3"', True),
        ('"2"', None, '"3"', False),
        ('W/"3"', None, '"3"', False),  # strong comparison
        ("*", None, '"3"', True),
        ("*", None, None, False),
        ('"3"', None, None, False),
        (None, "*", None, True),
        (None, "*", '"3"', False),
        (None, '"3"', '"3"', False),
        (None, 'W/"3"', '"3"', False),  # weak comparison for If-None-Match
        (None, '"2"', '"3"', True),
        ('"p.abc"', None, '"p.abc"', True),
    ],
)
def test_preconditions(if_match: str | None, if_none_match: str | None, current: str | None, expected: bool) -> None:
    assert holds(if_match, if_none_match, current) is expected


def test_etags() -> None:
    assert etag_for(3, "h", pending=False) == '"3"'
    assert etag_for(3, "0190.000000.n1", pending=True) == '"p.0190.000000.n1"'


def test_job_runner_limits_waits_and_reports() -> None:
    release = threading.Event()
    runner = JobRunner(max_running=2, keep=3)
    done: list[str] = []
    first = runner.submit("slow", lambda progress: (progress("phase", 1, 2), release.wait(10), "a")[-1])
    runner.submit("slow", lambda progress: release.wait(10), on_done=lambda job: done.append(job.id))
    with pytest.raises(WebError) as refused:
        runner.submit("slow", lambda progress: None)
    assert refused.value.problem.status == 429 and refused.value.problem.headers["Retry-After"]
    assert runner.running() == 2 and not runner.wait(0.05)
    assert first.to_dict()["progress"] == {"phase": "phase", "done": 1, "total": 2}
    release.set()
    assert runner.wait(10) and runner.running() == 0
    assert first.state == "succeeded" and first.result == "a" and first.finished_at is not None
    assert len(done) == 1

    def broken(progress: object) -> None:
        raise ValueError("no")

    failed = runner.submit("broken", broken)
    runner.wait(10)
    assert failed.state == "failed" and failed.problem is not None and failed.problem["status"] == 500
    assert failed.problem["detail"] == "an unexpected error; the server log has the details"
    for _ in range(3):
        runner.submit("quick", lambda progress: None)
    runner.wait(10)
    assert len(runner.list()) == 3 and runner.get(first.id) is None  # only the last ``keep`` are remembered


def test_audit_log_is_local_without_a_primary(tmp_path: Path) -> None:
    log = AuditLog(WebDatabase(tmp_path / "web.db"), None, wall=lambda: 1000.0)
    log.record("key:ops", "backup.delete", "abcd", "ok", client="10.1.2.3", details={"why": "test"})
    log.record("key:ops", "backup.delete", "efgh", "failed: backup-not-found")
    newest, oldest = log.entries()
    assert newest.target == "efgh" and oldest.to_dict() == {
        "id": 1,
        "at": 1000.0,
        "actor": "key:ops",
        "action": "backup.delete",
        "target": "abcd",
        "outcome": "ok",
        "client": "10.1.2.3",
        "details": {"why": "test"},
    }
    assert [e.id for e in log.entries(limit=5, before_id=2)] == [1]


def test_data_responses_never_fail_on_what_json_cannot_hold() -> None:
    from hybridstore.web.responses import DataResponse

    body = DataResponse({"next_in_s": float("inf"), "rate": float("nan"), "at": Path("/x"), "ok": [1.5]}).body
    assert body == b'{"next_in_s":null,"rate":null,"at":"/x","ok":[1.5]}'
    assert DataResponse({"é": "€"}).body == '{"é":"€"}'.encode()
