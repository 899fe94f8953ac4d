"""Jobs are recorded in web.db (web migration 0004): ``GET /api/v1/jobs/{id}`` answers after a restart, and a job
that was running when its server stopped is reported ``interrupted``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from hybridstore.web.joblog import JobLog
from hybridstore.web.jobs import Job, JobRunner
from hybridstore.web.webdb import WebDatabase

from .test_cli_attach import serve
from .test_web_serve import TOKEN


def finished(runner: JobRunner, job_id: str) -> Job:
    deadline = time.monotonic() + 10
    while True:
        job = runner.get(job_id)
        assert job is not None
        if job.state != "running":
            return job
        assert time.monotonic() < deadline, "job still running"
        time.sleep(0.01)


def test_jobs_outlive_their_runner_and_running_ones_are_interrupted(tmp_path: Path) -> None:
    db = WebDatabase(tmp_path / "web.db")
    clock = iter(range(1000, 2000))
    first = JobRunner(log=JobLog(db), wall=lambda: float(next(clock)))
    done = first.submit("backup.create", lambda progress: {"records": 3}, target="manual", actor="key:ops")
    failed = first.submit("sync", lambda progress: 1 / 0, target="full", actor="key:ops")
    finished(first, done.id)
    finished(first, failed.id)
    release = threading.Event()
    stuck = first.submit("backup.restore", lambda progress: release.wait(30), target="b1", actor="key:ops")

    second = JobRunner(log=JobLog(db), wall=lambda: 5000.0)  # a new server on the same web.db
    again = second.get(done.id)
    assert again is not None and again.state == "succeeded" and again.result == {"records": 3}
    assert again.actor == "key:ops" and again.kind == "backup.create" and again.finished_at is not None
    lost = second.get(failed.id)
    assert lost is not None and lost.state == "failed" and lost.problem is not None
    assert lost.problem["type"].endswith(":internal")
    interrupted = second.get(stuck.id)
    assert interrupted is not None and interrupted.state == "interrupted" and interrupted.finished_at == 5000.0
    assert [j.id for j in second.list()] == [stuck.id, failed.id, done.id]  # newest first
    assert second.get("nope") is None
    release.set()
    assert first.wait(10)
    db.close()


def test_a_job_is_found_after_serve_restarts(tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    node = serve(tmp_path)
    try:
        with httpx.Client(base_url=node.base, headers=headers, timeout=30) as client:
            client.put("/api/v1/collections/c/items/k", json=1)
            started = client.post("/api/v1/backups", json={"label": "kept"})
            assert started.status_code == 202
            url = started.headers["location"]
            deadline = time.monotonic() + 30
            while client.get(url).json()["state"] == "running":
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        assert node.stop() == 0
    node = serve(tmp_path)
    try:
        job = httpx.get(f"{node.base}{httpx.URL(url).path}", headers=headers).json()
        assert job["state"] == "succeeded" and job["result"]["label"] == "kept"
        listed = httpx.get(f"{node.base}/api/v1/jobs", headers=headers).json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]
    finally:
        assert node.stop() == 0
