"""``POST /api/v1/backups/import``: a backup file streamed into the repository (never whole in memory), verified by
a job before it is registered; a file that is not a backup, or a tampered one, is a 422 problem and leaves
nothing behind (no upload file, no repository entry)."""

from __future__ import annotations

import io
import os
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hybridstore.backup.format import _read_header

from . import test_web_api as base
from .test_cli_attach import serve
from .test_web_api import Web, item
from .test_web_serve import TOKEN

make_web = base.make_web  # the fixture
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
BINARY = {"content-type": "application/octet-stream"}


def leftovers(web: Web) -> list[str]:
    """Upload or temporary files anywhere in the node's data directory."""
    return [
        str(p.relative_to(web.store.data_dir))
        for p in web.store.data_dir.rglob("*")
        if p.name.startswith(".upload-") or re.search(r"\.(part|tmp)$", p.name)
    ]


def noise(i: int) -> str:
    """Text that does not compress (so the file is larger than the app's body limit)."""
    return random.Random(i).randbytes(300).hex()


def chunks(data: bytes, size: int = 7000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture
def backup_file(make_web: base.WebFactory) -> bytes:
    source = make_web("source", primary=False)
    for i in range(200):
        source.put(item("products", f"p{i}"), json={"i": i, "text": noise(i)})
    bid = source.job(source.post("/api/v1/backups", json={"label": "to move"}))["result"]["id"]
    return source.get(f"/api/v1/backups/{bid}/download", scope="admin").content


def test_a_backup_imported_over_http_can_be_restored(make_web: base.WebFactory, backup_file: bytes) -> None:
    web = make_web("target", primary=False, max_value_bytes=1024)  # a body limit (~66 KiB) far below the file
    assert len(backup_file) > 2 * 1024 + 64 * 1024
    assert web.post("/api/v1/backups/import", scope="read", content=backup_file, headers=BINARY).status_code == 403
    started = web.post("/api/v1/backups/import", content=chunks(backup_file), headers=BINARY)  # chunked
    job = web.job(started)
    assert job["state"] == "succeeded", job
    info = job["result"]
    assert info["label"] == "to move" and info["records"] == 200 and info["verified"] is True
    assert [b["id"] for b in web.get("/api/v1/backups").json()["backups"]] == [info["id"]]
    restored = web.job(web.post(f"/api/v1/backups/{info['id']}/restore", json={"confirm": info["id"]}))
    assert restored["state"] == "succeeded"
    assert web.get(item("products", "p7")).json()["value"] == {"i": 7, "text": noise(7)}
    assert leftovers(web) == []

    again = web.job(web.post("/api/v1/backups/import", content=backup_file, headers=BINARY))
    assert again["state"] == "failed" and again["problem"]["status"] == 409  # it is there already
    assert leftovers(web) == []
    audit = [(e["action"], e["outcome"]) for e in web.get("/api/v1/audit", scope="admin").json()["entries"]]
    assert ("backup.import", "accepted") in audit and ("backup.import", "ok") in audit


def test_a_tampered_or_foreign_file_is_refused_and_leaves_nothing(
    make_web: base.WebFactory, backup_file: bytes
) -> None:
    web = make_web("target", primary=False)
    tampered = bytearray(backup_file)
    tampered[len(tampered) // 2] ^= 0x01
    job = web.job(web.post("/api/v1/backups/import", content=bytes(tampered), headers=BINARY))
    assert job["state"] == "failed"
    assert job["problem"]["status"] == 422 and job["problem"]["type"].endswith("backup-tampered")

    foreign = web.post("/api/v1/backups/import", content=os.urandom(100_000), headers=BINARY)
    assert foreign.status_code == 422 and foreign.json()["type"].endswith("not-a-backup")
    damaged_header = bytearray(backup_file)
    damaged_header[20] ^= 0xFF
    refused = web.post("/api/v1/backups/import", content=bytes(damaged_header), headers=BINARY)
    assert refused.status_code == 422 and refused.json()["type"].endswith("backup-tampered")
    as_json = web.post("/api/v1/backups/import", json={"file": "no"})
    assert as_json.status_code == 415
    empty = web.post("/api/v1/backups/import", content=b"", headers=BINARY)
    assert empty.status_code == 400

    assert web.get("/api/v1/backups").json()["backups"] == []
    assert leftovers(web) == []
    audit = [(e["action"], e["outcome"]) for e in web.get("/api/v1/audit", scope="admin").json()["entries"]]
    assert ("backup.import", "refused: not-a-backup") in audit
    assert ("backup.import", "failed: urn:hybridstore:problem:backup-tampered") in audit


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_a_large_upload_is_streamed_not_held(tmp_path: Path, backup_file: bytes) -> None:
    """A real server takes a 96 MiB upload (a backup's header, then damaged data) while its peak memory grows by
    far less than the file: the body goes to disk as it arrives. The verification then refuses it (tampered) and
    the file is removed."""
    node = serve(tmp_path)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", **BINARY}
        with httpx.Client(base_url=node.base, headers=headers, timeout=60) as client:
            client.get("/api/v1/status")  # warm: the app's code paths are loaded before the baseline
            before = peak_rss_kib(node.proc.pid)
            head = backup_file[: _read_header(io.BytesIO(backup_file), Path("b"))[1]]
            block = os.urandom(1 << 20)
            total = 96

            def body() -> Iterator[bytes]:
                yield head
                for _ in range(total):
                    yield block

            r = client.post("/api/v1/backups/import", content=body())
            assert r.status_code == 202, r.text
            job_url = r.headers["location"]
            for _ in range(600):
                job = client.get(job_url).json()
                if job["state"] != "running":
                    break
                time.sleep(0.05)
            assert job["state"] == "failed" and job["problem"]["status"] == 422
            grown_mib = (peak_rss_kib(node.proc.pid) - before) / 1024
            print(f"96 MiB upload: server peak RSS grew {grown_mib:.1f} MiB")
            assert grown_mib < 32, grown_mib
        assert not [p for p in node.data.rglob("*") if p.name.startswith(".upload-")]
    finally:
        assert node.stop() == 0
