"""The admin UI in a real browser (Debian's Chromium driven by Playwright) against a real ``hybridstore serve``
process whose primary (real PostgreSQL) sits behind the fault proxy. One server and one browser for the module.

Every page is checked for console errors, requests leaving the node, and serious accessibility violations
(axe-core); each is screenshotted at desktop and phone width, in light and dark schemes, under
``test-output/admin/`` (two of those shots are the README's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

import hybridstore

from .faults import refuse_poison
from .fix_db import resolve_dsn
from .fix_proxy import Proxy
from .test_web_serve import SRC, free_port, wait_ready

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)"),
]
TOKEN = "admin-ui-test-token-" + "t" * 24
USER, PASSWORD = "ops", "a long enough password"
OUTPUT = Path(__file__).resolve().parents[1] / "test-output" / "admin"
PAGES = {
    "overview": "/admin/data-storage",
    "backups": "/admin/backups",
    "sync": "/admin/sync",
    "health": "/admin/health",
    "nodes": "/admin/nodes",
    "data": "/admin/data?collection=orders",
    "audit": "/admin/audit",
    "settings": "/admin/settings",
}
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}


def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something true (then return it), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what} (last: {value!r})"
        time.sleep(0.1)


class Node:
    """The serve process, its proxy, an API client with the admin token, and the primary's schema."""

    def __init__(self, base: str, proxy: Proxy, schema: str, dsn: str, data: Path, log: Path) -> None:
        self.base, self.proxy, self.schema, self.dsn, self.data, self.log = base, proxy, schema, dsn, data, log
        self.api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20)

    def put(self, collection: str, key: str, value: Any) -> dict[str, Any]:
        r = self.api.put(f"/api/v1/collections/{collection}/items/{key}", json=value)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def get(self, collection: str, key: str) -> Any:
        r = self.api.get(f"/api/v1/collections/{collection}/items/{key}")
        return r.json() if r.status_code == 200 else None

    def sample(self) -> dict[str, Any]:
        return dict(self.api.get("/api/v1/events/stream").json()["sample"])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    dsn = resolve_dsn()
    schema = "t_" + uuid.uuid4().hex[:12]
    parts = urlsplit(dsn)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    tmp = tmp_path_factory.mktemp("admin-ui")
    data, log = tmp / "node", tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRIDSTORE_", "SUPABASE_", "DATABASE_URL"))}
    env.update(
        PYTHONPATH=str(SRC),
        HYBRIDSTORE_PRIMARY_SCHEMA=schema,
        STORAGE_SYNC_RETRY_ATTEMPTS="2",
        HYBRIDSTORE_ADMIN_TOKEN=TOKEN,
        HYBRIDSTORE_CONFLICT_STRATEGIES="orders=manual",  # `serve` takes it from the environment
    )
    cli = [sys.executable, "-m", "hybridstore", "-d", str(data)]
    added = subprocess.run(
        [*cli, "admin", "add-user", USER], input=PASSWORD + "\n", env=env, capture_output=True, text=True
    )
    assert added.returncode == 0, added.stderr
    port = free_port()
    cmd = [*cli, "--primary-url", proxy.url(dsn), "--timeout", "0.5"]
    cmd += ["serve", "--port", str(port), "--no-access-log", "--graceful-timeout", "5"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield Node(base, proxy, schema, dsn, data, log)
    finally:
        proxy.restore()
        proc.terminate()
        try:
            assert proc.wait(timeout=30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
            proxy.close()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert "Traceback" not in log.read_text(), log.read_text()


class Watch:
    """What a page did wrong: console errors, uncaught exceptions, requests to anywhere but the node."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.errors: list[str] = []
        self.outside: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("console", lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: None if r.url.startswith((self.base, "data:")) else self.outside.append(r.url))

    def check(self) -> None:
        assert not self.errors, self.errors
        assert not self.outside, self.outside


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def log_in(page: Any, base: str) -> None:
    page.goto(f"{base}/admin/login")
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/admin/data-storage$"))


@pytest.fixture(scope="module")
def session(chromium: Any, node: Node) -> Iterator[tuple[Any, Watch]]:
    """A logged-in page (desktop size) and its watch."""
    context = chromium.new_context(viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    watch = Watch(node.base)
    watch.attach(page)
    log_in(page, node.base)
    yield page, watch
    context.close()


@pytest.fixture
def ui(session: tuple[Any, Watch]) -> Iterator[Any]:
    page, watch = session
    yield page
    watch.check()


def test_login_redirects_and_csrf(chromium: Any, node: Node) -> None:
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    watch = Watch(node.base)
    watch.attach(page)
    for path in PAGES.values():
        page.goto(node.base + path)
        assert "/admin/login?next=" in page.url, path
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text() == "Wrong username or password."
    watch.errors.clear()  # the 401 of the refused login is logged by the browser: expected
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/admin/data-storage$"))
    statuses = page.evaluate(
        """async () => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const post = (headers) => fetch('/api/v1/sync', {method: 'POST', body: '{}',
                headers: {'Content-Type': 'application/json', ...headers}}).then(r => r.status);
            return [await post({}), await post({'X-CSRF-Token': 'forged'}), await post({'X-CSRF-Token': token})];
        }"""
    )
    assert statuses == [403, 403, 202]
    watch.errors.clear()  # the two refused requests are logged as errors by the browser: expected
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r".*/admin/login$"))
    page.goto(node.base + "/admin/sync")
    assert "/admin/login?next=" in page.url
    watch.check()
    context.close()


def test_overview_is_live_and_shows_an_outage(ui: Any, node: Node) -> None:
    page = ui
    page.goto(node.base + "/admin/data-storage")
    overall = page.locator(".hero [data-live=overall]")
    state = lambda: overall.text_content()  # noqa: E731  (the text itself: the page capitalises it)
    primary = page.locator("[data-live=primary]")
    until(lambda: state() == "healthy", "a healthy node")
    points = lambda: int(page.locator("[data-chart=throughput]").get_attribute("data-points") or 0)  # noqa: E731
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with httpx.Client(base_url=node.base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
            while not stop.is_set():
                r = c.put(f"/api/v1/collections/orders/items/w{written[0]}", json={"n": written[0]})
                if r.status_code == 200:
                    written[0] += 1

    thread = threading.Thread(target=writer, name="ui-writer")
    thread.start()
    try:
        before = points()
        until(lambda: float(page.get_by_test_id("writes-rate").inner_text()) > 0, "the write rate on the page")
        until(lambda: points() >= before + 2, "new points on the charts")
        assert page.locator("[data-live=p99_ms]").first.inner_text() != "—"
        page.evaluate(  # every announcement of the page's live region, as they come
            """window.toasts = []; const live = document.getElementById('toast');
               new MutationObserver(() => window.toasts.push(live.textContent))
                 .observe(live, {childList: true, characterData: true, subtree: true})"""
        )
        node.proxy.cut()
        until(lambda: state() == "outage", "outage shown", timeout=15)
        announced = lambda: page.evaluate("window.toasts.join('|')")  # noqa: E731
        until(lambda: "circuit open" in announced() or "primary down" in announced(), "the outage announced")
        assert primary.text_content() == "down"
        assert "state-bad" in (page.locator(".hero").get_attribute("class") or "")
        until(lambda: int(page.get_by_test_id("outbox-depth").inner_text()) > 0, "writes queued during the outage")
        page.screenshot(path=str(shot("overview-outage")), full_page=True)
        node.proxy.restore()
        until(lambda: state() not in ("outage", None) and primary.text_content() == "healthy", "back", timeout=30)
    finally:
        node.proxy.restore()
        stop.set()
        thread.join(10)
    assert written[0] > 20
    until(lambda: node.sample()["outbox_depth"] == 0, "the outbox drained", timeout=30)


def backup_row(page: Any, backup_id: str) -> Any:
    return page.locator(f"tr[data-backup='{backup_id}']")


def test_backup_selective_restore_download_and_upload(ui: Any, node: Node, tmp_path: Path) -> None:
    page = ui
    for collection in ("alpha", "beta", "gamma"):
        node.put(collection, "k", {"v": "original"})
    page.goto(node.base + "/admin/backups")
    page.get_by_label("Label").fill("before the change")
    with page.expect_navigation():  # the page reloads itself once the action is done
        page.get_by_role("button", name="Create backup").click()
    found = until(
        lambda: [b for b in node.api.get("/api/v1/backups").json()["backups"] if b["label"] == "before the change"],
        "the backup",
    )
    backup_id = found[0]["id"]
    row = until(lambda: backup_row(page, backup_id).count() and backup_row(page, backup_id), "the backup listed")
    for collection in ("alpha", "beta", "gamma"):
        node.put(collection, "k", {"v": "changed"})

    row.get_by_text("Restore…").click()
    form = row.locator("form[data-restore]")
    form.get_by_label("alpha (1)").check()
    form.get_by_label("beta (1)").check()
    confirm = form.get_by_role("button", name="Restore now")
    assert confirm.is_disabled()  # no restore before its dry run was read
    form.get_by_role("button", name="Preview (dry run)").click()
    result = form.locator("[data-result]")
    until(lambda: "Dry run" in result.inner_text(), "the dry-run diff")
    assert "overwritten 2" in result.inner_text() and result.locator("table tbody tr").count() == 2
    assert "gamma" not in result.inner_text()
    assert confirm.is_enabled()
    with page.expect_navigation():  # the page reloads itself once the action is done
        confirm.click()
        until(lambda: "Restored:" in result.inner_text(), "the restore's report")
    assert node.get("alpha", "k")["value"] == {"v": "original"} and node.get("beta", "k")["value"] == {"v": "original"}
    assert node.get("gamma", "k")["value"] == {"v": "changed"}  # not selected: untouched

    row = until(lambda: backup_row(page, backup_id).count() and backup_row(page, backup_id), "the backup listed")
    with page.expect_download() as download:
        row.get_by_role("link", name=f"Download {backup_id}").click()
    saved = tmp_path / "backup.hsb"
    download.value.save_as(saved)
    assert saved.stat().st_size == found[0]["size_bytes"]

    row.get_by_text("Delete…").click()
    delete = row.get_by_role("button", name="Delete backup")
    assert delete.is_disabled()
    row.get_by_label(re.compile("to delete this backup")).fill(backup_id)
    assert delete.is_enabled()
    with page.expect_navigation():  # the page reloads itself once the action is done
        delete.click()
    until(lambda: node.api.get(f"/api/v1/backups/{backup_id}").status_code == 404, "the backup deleted")

    page.get_by_label("Backup file (.hsb)").set_input_files(str(saved))
    with page.expect_navigation():  # the page reloads itself once the action is done
        page.get_by_role("button", name="Upload and import").click()
    until(lambda: node.api.get(f"/api/v1/backups/{backup_id}").status_code == 200, "the backup imported again")
    audit = node.api.get("/api/v1/audit", params={"limit": 200}).json()["entries"]
    done = {(e["action"], e["outcome"]) for e in audit if e["actor"] == f"user:{USER}"}
    assert {("backup.create", "ok"), ("backup.restore", "ok"), ("backup.delete", "ok"), ("backup.import", "ok")} <= done


def test_backup_verify_pin_prune_and_settings(ui: Any, node: Node) -> None:
    page = ui
    assert node.api.post("/api/v1/backups", json={"label": "to verify"}).status_code == 202
    listed = lambda: node.api.get("/api/v1/backups").json()["backups"]  # noqa: E731
    backup_id = until(lambda: [b["id"] for b in listed() if b["label"] == "to verify"], "the backup")[0]
    page.goto(node.base + "/admin/backups")
    row = backup_row(page, backup_id)
    with page.expect_navigation():
        row.get_by_role("button", name=f"Verify {backup_id}").click()
    assert node.api.get(f"/api/v1/backups/{backup_id}").json()["verified"] is True
    with page.expect_navigation():
        backup_row(page, backup_id).get_by_role("button", name=f"Pin {backup_id}").click()
    assert node.api.get(f"/api/v1/backups/{backup_id}").json()["pinned"] is True
    assert backup_row(page, backup_id).get_by_role("button", name=f"Unpin {backup_id}").is_visible()

    prune = page.locator("section[aria-labelledby=prune-h]")
    prune.get_by_role("button", name="Preview prune").click()
    until(lambda: "Would remove" in prune.inner_text(), "the prune preview")
    assert prune.get_by_role("button", name="Prune now").is_disabled()
    prune.get_by_label(re.compile("to remove them")).fill("prune")
    assert prune.get_by_role("button", name="Prune now").is_enabled()

    settings = page.locator("section[aria-labelledby=settings-h]")
    settings.get_by_label("Max backups").fill("12")
    settings.get_by_label(re.compile("to save")).fill("config")
    with page.expect_navigation():
        settings.get_by_role("button", name="Save settings").click()
    assert node.api.get("/api/v1/backups/config").json()["max_backups"] == 12
    assert page.get_by_label("Max backups").input_value() == "12"


def test_conflict_resolved_by_editing_and_dead_letters(ui: Any, node: Node) -> None:
    page = ui
    node.put("orders", "o1", {"status": "new", "qty": 1})
    with psycopg.connect(node.dsn, autocommit=True) as pg:
        refuse_poison(pg, node.schema)
    node.proxy.cut()
    try:
        until(lambda: node.put("orders", "o1", {"status": "mine", "qty": 1})["queued"], "a queued write")
        node.put("c", "p1", {"poison": 1})
        node.put("c", "p2", {"poison": 2})
        with hybridstore.open(node.dsn, data_dir=node.data.parent / "other", primary_schema=node.schema) as other:
            other.set("orders", "o1", {"status": "theirs", "qty": 2})
        page.goto(node.base + "/admin/sync")  # during the outage: the queue, and why conflicts cannot be listed
        pending = page.locator("section[aria-labelledby=pending-h] tbody").inner_text()
        assert "orders/o1" in pending and "c/p1" in pending and "c/p2" in pending
        assert "Conflicts live on the primary" in page.locator("section[aria-labelledby=conflicts-h]").inner_text()
    finally:
        node.proxy.restore()
    conflicts = until(lambda: node.api.get("/api/v1/conflicts").json().get("conflicts"), "the manual conflict")
    cid = conflicts[0]["id"]
    letters = until(lambda: len(node.api.get("/api/v1/dead-letters").json()["dead_letters"]) == 2, "2 dead letters")
    assert letters

    page.goto(node.base + "/admin/sync")
    article = page.locator(f"article[data-conflict='{cid}']")
    rows = article.locator("table tbody tr")
    assert rows.count() == 2  # qty and status, side by side
    assert "conflicting" in (article.locator("tr", has_text="status").get_attribute("class") or "")
    editor = article.get_by_label("New value (JSON)")
    save = article.get_by_role("button", name="Save this value")
    editor.fill('{"status": "merged",')
    assert save.is_disabled() and "Invalid JSON" in article.locator("[data-json-error]").inner_text()
    editor.fill('{"status": "merged", "qty": 3}')
    assert save.is_enabled()
    with page.expect_navigation():  # the page reloads itself once the action is done
        save.click()
    until(lambda: node.get("orders", "o1")["value"] == {"status": "merged", "qty": 3}, "the edited value")
    until(lambda: page.locator(f"article[data-conflict='{cid}']").count() == 0, "the conflict gone from the page")

    with psycopg.connect(node.dsn, autocommit=True) as pg:  # the primary accepts them from now on
        pg.execute(f'DROP TRIGGER no_poison ON "{node.schema}".records')
    letters = {d["key"]: d["id"] for d in node.api.get("/api/v1/dead-letters").json()["dead_letters"]}
    page.reload()
    with page.expect_navigation():  # the page reloads itself once the action is done
        page.get_by_role("button", name=f"Retry dead letter {letters['p1']}").click()
    until(lambda: (node.get("c", "p1") or {}).get("pending") is False, "the retried write on the primary")
    row = page.locator(f"tr[data-dead-letter='{letters['p2']}']")
    row.get_by_text("Discard…").click()
    row.get_by_label(re.compile("to discard")).fill(str(letters["p2"]))
    with page.expect_navigation():  # the page reloads itself once the action is done
        row.get_by_role("button", name="Discard dead letter").click()
    until(lambda: node.api.get("/api/v1/dead-letters").json()["dead_letters"] == [], "no dead letter left")


def test_health_page_and_resilience_tester(ui: Any, node: Node) -> None:
    page = ui
    page.goto(node.base + "/admin/health")
    assert page.get_by_role("heading", name=re.compile("Components")).is_visible()
    section = page.locator("#resilience")
    if node.api.get("/api/v1/resilience/runs").status_code == 404:
        assert "not available on this node" in section.inner_text()
        assert section.get_by_role("button", name="Run resilience test").is_disabled()
        return
    section.get_by_label("Scenario", exact=True).select_option("primary_outage")
    section.get_by_label("Seconds per scenario").fill("2")
    section.get_by_role("button", name="Run resilience test").click()
    result = section.locator("[data-result]")
    until(lambda: "Full report" in result.inner_text(), "the run's report", timeout=120)
    assert "primary_outage" in result.inner_text()
    assert section.locator("[data-resilience-runs] li").count() >= 1  # past runs, with their reports


def test_data_audit_and_settings(ui: Any, node: Node) -> None:
    page = ui
    for i in range(3):
        node.put("products", f"p{i}", {"name": f"item {i}", "price": i})
    node.put("products", "other", {"name": "x"})
    page.goto(node.base + "/admin/data?collection=products")
    page.get_by_label("Key prefix").fill("p")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r".*prefix=p.*"))
    assert page.locator("tbody tr").count() == 3  # "other" does not start with p
    for i in range(55):
        node.put("catalogue", f"k{i:02d}", i)
    page.goto(node.base + "/admin/data?collection=catalogue")  # pages of 50
    first = page.locator("tbody tr td a").first.inner_text()
    page.get_by_role("link", name="Next page").click()
    page.wait_for_url(re.compile(r".*after=.*"))
    assert first == "k00" and page.locator("tbody tr td a").first.inner_text() == "k50"
    assert page.locator("tbody tr").count() == 5
    page.goto(node.base + "/admin/data?collection=products&prefix=p")
    page.get_by_role("link", name="p1").click()
    editor = page.get_by_label("Value (JSON)")
    assert '"price": 1' in editor.input_value()
    assert "primary" in page.locator("dl.figures").inner_text()  # the source tier, among the metadata
    editor.fill('{"name": "item 1", "price": 11}')
    with page.expect_navigation():
        page.get_by_role("button", name="Save value").click()
    assert node.get("products", "p1")["value"] == {"name": "item 1", "price": 11}
    page.get_by_text("Delete…").click()
    page.get_by_label(re.compile("to delete this record")).fill("p1")
    with page.expect_navigation():
        page.get_by_role("button", name="Delete record").click()
    assert node.get("products", "p1") is None

    page.goto(node.base + "/admin/settings")
    page.get_by_label("Key name").fill("reporting")
    page.get_by_label("Scope").select_option("read")
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("[data-new-key]")
    shown.wait_for()
    key = shown.inner_text()
    assert key.startswith("hsk_")
    assert httpx.get(f"{node.base}/api/v1/status", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    page.reload()
    row = page.locator("tr", has_text="reporting")
    row.get_by_text("Revoke…").click()
    row.get_by_label(re.compile("to revoke")).fill("reporting")
    with page.expect_navigation():
        row.get_by_role("button", name="Revoke key").click()
    until(
        lambda: httpx.get(f"{node.base}/api/v1/status", headers={"Authorization": f"Bearer {key}"}).status_code == 401,
        "the revoked key refused",
    )
    page.get_by_label("User name").fill("second")
    page.get_by_label("Password (at least 10 characters)").fill("another long password")
    with page.expect_navigation():
        page.get_by_role("button", name="Add user").click()
    assert page.get_by_role("cell", name="second", exact=True).count() == 1

    page.goto(node.base + f"/admin/audit?actor=user%3A{USER}&action=apikey&hours=1")
    actions = page.locator("tbody tr td:nth-child(3)").all_inner_texts()
    assert sorted(set(actions)) == ["apikey.create", "apikey.revoke"]
    assert page.get_by_label("Actor").input_value() == f"user:{USER}"
    page.goto(node.base + "/admin/audit?action=apikey&hours=0.0001")  # the last third of a second: nothing
    assert page.locator("tbody").inner_text().strip() == "No entries."


def test_serve_prints_a_one_time_setup_link(chromium: Any, tmp_path: Path) -> None:
    """``serve`` with no admin user and no admin token prints a setup link (and still never starts open): the
    link creates the first user, who is then logged in; the link works once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRIDSTORE_", "SUPABASE_", "DATABASE_URL"))}
    env["PYTHONPATH"] = str(SRC)
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "hybridstore", "-d", str(tmp_path / "node"), "serve", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        link = until(lambda: re.search(r"http://\S+/admin/setup\?token=\S+", log.read_text()), "the setup link")[0]
        assert httpx.get(f"{base}/admin/data-storage").status_code == 401  # never open
        context = chromium.new_context(viewport=PHONE)
        page = context.new_page()
        watch = Watch(base)
        watch.attach(page)
        page.goto(link)
        page.get_by_label("Username").fill("first")
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_label("Password again").fill(PASSWORD)
        page.get_by_role("button", name="Create the admin user").click()
        page.wait_for_url(re.compile(r".*/admin/data-storage$"))
        assert page.locator(".who").inner_text() == "first"
        watch.check()
        page.goto(link)
        assert "not valid" in page.get_by_role("alert").inner_text()  # spent
        page.goto(f"{base}/admin/data-storage")  # a page with its live stream open while the server stops
        key = re.search(r"hsk_\S+", log.read_text())
        assert key, "serve printed its setup API key"
        connected, ended = threading.Event(), threading.Event()

        def listen() -> None:
            headers = {"Authorization": f"Bearer {key[0]}", "Accept": "text/event-stream"}
            with httpx.stream("GET", f"{base}/api/v1/events/stream", headers=headers, timeout=30) as r:
                connected.set()  # the response has started: the stream is open on the server
                for _ in r.iter_lines():
                    pass
            ended.set()

        threading.Thread(target=listen, name="sse-until-stop", daemon=True).start()
        assert connected.wait(10), "the event stream did not open"
        started = time.monotonic()
        proc.terminate()
        assert proc.wait(timeout=30) == 0, log.read_text()
        # open streams end when the server drains: they do not hold the shutdown for the graceful timeout (30 s)
        assert time.monotonic() - started < 10 and ended.wait(5)
        context.close()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def test_keyboard_alone_runs_a_quick_action(ui: Any, node: Node) -> None:
    page = ui
    page.goto(node.base + "/admin/data-storage")
    for _ in range(40):  # Tab through the page until the "Sync now" button has the focus
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Sync now":
            break
    else:
        raise AssertionError("Tab never reached the Sync now button")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"  # focus is visible
    page.keyboard.press("Enter")
    result = page.locator("section[aria-labelledby=actions-h] [data-result]")
    until(lambda: "pushed" in result.inner_text(), "the sync job's report")


def test_nodes_page_lists_this_node(ui: Any, node: Node) -> None:
    page = ui
    page.goto(node.base + "/admin/nodes")
    row = page.locator("tr", has_text="this node")
    assert row.count() == 1 and "silent" not in row.inner_text()


def test_api_clients_get_a_live_event_stream(node: Node) -> None:
    """``GET /api/v1/events/stream`` (read scope) streams samples and snapshots, and the node's events as they
    happen: here the circuit opening when the primary is cut."""
    kinds: list[str] = []
    seen_outage = threading.Event()

    def read() -> None:
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
        with httpx.stream("GET", f"{node.base}/api/v1/events/stream", headers=headers, timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
                if line.startswith("data: ") and kinds and kinds[-1] == "node-event" and "circuit_open" in line:
                    seen_outage.set()
                    return

    reader = threading.Thread(target=read, name="sse-reader")
    reader.start()
    until(lambda: "sample" in kinds and "status" in kinds, "samples and snapshots on the stream")
    node.proxy.cut()
    try:
        assert seen_outage.wait(20), kinds
    finally:
        node.proxy.restore()
    reader.join(10)
    until(lambda: node.sample()["primary"] == "healthy", "the primary back", timeout=30)


def shot(name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT / f"{name}.png"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_keyboard_axe_and_screenshots(chromium: Any, node: Node, scheme: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    context = chromium.new_context(viewport=DESKTOP, color_scheme=scheme)
    page = context.new_page()
    watch = Watch(node.base)
    watch.attach(page)
    log_in(page, node.base)
    for name, path in PAGES.items():
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            page.goto(node.base + path)
            page.wait_for_load_state("load")
            if name in ("overview", "sync"):  # the charts are drawn once their history has arrived
                page.wait_for_selector(".chart .uplot")
            if label == "phone":  # nothing wider than the phone: no sideways scrolling of the page
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= PHONE["width"], (name, width)
            page.screenshot(path=str(shot(f"{name}-{label}-{scheme}")), full_page=True)
        results = axe.run(page)
        serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
        assert not serious, (name, [(v["id"], [n["target"] for n in v["nodes"]][:3]) for v in serious])
        # by keyboard: the first Tab reaches the skip link, and focus is visible
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "(() => { const e = document.activeElement; const s = getComputedStyle(e);"
            " return [e.className, s.outlineStyle, s.outlineWidth]; })()"
        )
        assert focused[0] == "skip" and focused[1] != "none" and focused[2] != "0px", (name, focused)
    watch.check()
    context.close()
