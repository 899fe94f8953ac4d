"""The admin UI without a browser: session cookies, CSRF, the login throttle, users and the setup link, the live
samples, the conflict diff — pure parts called directly, the rest through the ASGI app in process (embedded
store: no primary needed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import hybridstore
from hybridstore.cli import admin as _admin  # noqa: F401  (registers the admin group)
from hybridstore.cli.app import app as cli_app
from hybridstore.errors import ValidationError
from hybridstore.metrics import LATENCY_BUCKETS
from hybridstore.node.timing import FakeClock
from hybridstore.web.admin.session import COOKIE, LoginThrottle, SessionCodec
from hybridstore.web.admin.views import field_diff
from hybridstore.web.app import create_app
from hybridstore.web.sse import Sampler, format_event, overall_of, quantile
from hybridstore.web.users import SetupTokens, UserStore
from hybridstore.web.webdb import WebDatabase

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
PASSWORD = "correct horse battery"
HTML = {"Accept": "text/html"}


# -- pure parts -----------------------------------------------------------------------------------------------------


def test_session_cookie_is_signed_and_expires() -> None:
    clock = FakeClock()
    codec = SessionCodec(b"k" * 32, ttl=60, wall=clock.wall)
    value, session = codec.issue("alice")
    assert codec.read(value) == session and session.user == "alice"
    body, _, signature = value.partition(".")
    forged = body.replace(body[2], "A" if body[2] != "A" else "B", 1) + "." + signature
    assert codec.read(forged) is None  # any change to the payload breaks the signature
    assert codec.read(body + ".") is None and codec.read("garbage") is None
    assert SessionCodec(b"x" * 32, wall=clock.wall).read(value) is None  # another node's key
    assert codec.csrf_ok(session.sid, codec.csrf(session.sid))
    assert not codec.csrf_ok(session.sid, codec.csrf("other")) and not codec.csrf_ok(session.sid, None)
    clock.advance(61)
    assert codec.read(value) is None


def test_login_throttle_counts_failures_in_a_window() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(max_failures=3, window=60, clock=clock.monotonic)
    for _ in range(3):
        assert throttle.retry_after("ip:a", "user:bob") == 0
        throttle.failed("ip:a", "user:bob")
    assert throttle.retry_after("ip:a") == 60 and throttle.retry_after("user:bob") == 60
    assert throttle.retry_after("ip:b", "user:carol") == 0  # others are not held back
    clock.advance(59)
    assert throttle.retry_after("ip:a") == pytest.approx(1)
    clock.advance(1)
    assert throttle.retry_after("ip:a", "user:bob") == 0
    throttle.failed("user:bob")
    throttle.succeeded("user:bob")
    assert throttle.retry_after("user:bob") == 0


def test_users_are_hashed_with_argon2id_and_the_setup_link_works_once(tmp_path: Path) -> None:
    db = WebDatabase.in_dir(tmp_path)
    users, setup = UserStore(db), SetupTokens(db)
    token = setup.create()
    assert setup.valid(token) and not setup.valid("not-a-token")
    with pytest.raises(ValidationError, match="at least 10"):
        setup.redeem(token, users, "alice", "short")
    assert setup.valid(token)  # a refused attempt does not spend the link
    setup.redeem(token, users, "alice", PASSWORD)
    assert not setup.valid(token) and not setup.valid(setup.create())  # a user exists: no link works any more
    (stored,) = db.query("SELECT password_hash FROM admin_users")
    assert stored[0].startswith("$argon2id$") and PASSWORD not in stored[0]
    assert users.verify("alice", PASSWORD) is not None and users.find("alice").last_login_at is not None  # type: ignore[union-attr]
    assert users.verify("alice", PASSWORD + "x") is None and users.verify("nobody", PASSWORD) is None
    with pytest.raises(ValidationError, match="exists"):
        users.add("alice", PASSWORD)
    with pytest.raises(ValidationError, match="user name"):
        users.add("bad name", PASSWORD)
    users.remove("alice")
    assert users.list() == []
    db.close()


def test_quantiles_rates_and_overall_state_of_samples() -> None:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[3] = 99  # 99 ops between 0.5 and 1 ms
    counts[9] = 1  # one between 50 and 100 ms
    assert 0.0005 <= quantile(counts, 0.5) <= 0.001  # type: ignore[operator]
    assert 0.05 <= quantile(counts, 0.995) <= 0.1  # type: ignore[operator]
    assert quantile([0] * len(counts), 0.5) is None

    def ops(n_primary: int, n_local: int) -> dict[tuple[str, str], tuple[list[int], float]]:
        cumulative = lambda n: [0, 0, 0] + [n] * (len(LATENCY_BUCKETS) - 2)  # noqa: E731  (all in bucket 3)
        return {("set", "primary"): (cumulative(n_primary), 0.0), ("set", "local"): (cumulative(n_local), 0.0)}

    status: dict[str, Any] = {
        "primary": {"state": "healthy"},
        "local": {"state": "healthy"},
        "circuit": {"state": "closed"},
        "sync": {"pushed": 0, "pulled": 0},
        "outbox": {"depth": 0},
        "conflicts": {"manual": {"open": 2, "resolved": 5}},
    }
    sampler = Sampler()
    first = sampler.sample(status, ops(0, 0), 100.0)
    assert first["overall"] == "healthy" and first["since"] == 100.0 and first["conflicts_open"] == 2
    status["sync"] = {"pushed": 40, "pulled": 10}
    second = sampler.sample({**status, "circuit": {"state": "open"}}, ops(10, 30), 102.0)
    assert second["writes"] == {"primary": 5.0, "local": 15.0, "journal": 0.0}
    assert second["push_rate"] == 20.0 and second["pull_rate"] == 5.0
    assert second["overall"] == "outage" and second["since"] == 102.0  # no monitor verdict: derived from the tiers
    assert 0.5 <= second["p50_ms"] <= 1.0
    assert overall_of({"health": {"overall": "recovering"}}) == "recovering"
    assert overall_of({"primary": {"state": "misconfigured"}}) == "misconfigured"
    assert format_event("sample", {"a": 1}, event_id=3) == b'event: sample\nid: 3\ndata: {"a":1}\n\n'


def test_field_diff_marks_who_changed_what() -> None:
    rows = {r["field"]: r for r in field_diff({"a": 1, "b": 1}, {"a": 2, "b": 1, "c": 0}, {"a": 3, "b": 5})}
    assert rows["a"]["conflict"] and rows["a"]["local_changed"] and rows["a"]["remote_changed"]
    assert not rows["b"]["local_changed"] and rows["b"]["remote_changed"] and not rows["b"]["conflict"]
    assert rows["c"]["base"] == "(absent)" and rows["c"]["remote"] == "(absent)" and rows["c"]["local"] == 0
    (whole,) = field_diff(1, 2, None)
    assert whole["field"] == "(value)" and whole["remote"] is None


def test_admin_cli_adds_lists_and_removes_users(tmp_path: Path) -> None:
    runner = CliRunner()
    d = str(tmp_path / "node")
    added = runner.invoke(cli_app, ["-d", d, "admin", "add-user", "ops"], input=PASSWORD + "\n")
    assert added.exit_code == 0, added.output
    listed = runner.invoke(cli_app, ["-d", d, "admin", "list-users", "--json"])
    assert '"name": "ops"' in listed.stdout
    short = runner.invoke(cli_app, ["-d", d, "admin", "add-user", "x"], input="short\n")
    assert short.exit_code == 2 and "at least 10" in short.output
    assert runner.invoke(cli_app, ["-d", d, "admin", "remove-user", "ops"]).exit_code == 0
    assert runner.invoke(cli_app, ["-d", d, "admin", "remove-user", "ops"]).exit_code == 2
    db = WebDatabase.in_dir(d)
    assert db.query("SELECT count(*) FROM admin_users") == [(0,)]
    db.close()


# -- through the app ------------------------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = hybridstore.open(data_dir=tmp_path / "node", background=False)
    store.set("orders", "o1", {"status": "new"})
    app = create_app(store, admin_token=None)
    app.state.admin.users.add("alice", PASSWORD)
    with TestClient(app) as c:
        yield c
    app.state.live.stop()
    store.close()


def form_token(c: TestClient, path: str = "/admin/login") -> str:
    page = c.get(path)
    found = re.search(r'name="form_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def log_in(c: TestClient, password: str = PASSWORD, **extra: str) -> Any:
    data = {"username": "alice", "password": password, "form_token": form_token(c), **extra}
    return c.post("/admin/login", data=data, follow_redirects=False)


def csrf_of(c: TestClient) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/admin/settings").text)
    assert found
    return found.group(1)


def test_login_session_and_csrf(client: TestClient) -> None:
    for page in ("/admin/data-storage", "/admin/backups", "/admin/settings"):
        r = client.get(page + "?x=1", headers=HTML, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/admin/login?next={page.replace('/', '%2F')}%3Fx%3D1"
        assert client.get(page, follow_redirects=False).status_code == 401  # not a browser: the API's answer
    assert log_in(client, PASSWORD + "!").status_code == 401
    missing_token = client.post("/admin/login", data={"username": "alice", "password": PASSWORD})
    assert missing_token.status_code == 400  # the form's double-submit token
    ok = log_in(client, next="https://elsewhere.example/")
    assert ok.status_code == 303 and ok.headers["location"] == "/admin/data-storage"  # never to another site
    cookie = ok.headers.get_list("set-cookie")[0]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over TLS it is Secure (below)
    page = client.get("/admin/data-storage")
    assert page.status_code == 200 and "orders" in page.text and "Content-Security-Policy" in page.headers

    token = csrf_of(client)
    assert client.post("/admin/keys", json={"name": "k1", "scopes": "read"}).status_code == 403
    wrong = client.post("/admin/keys", json={"name": "k1", "scopes": "read"}, headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403 and wrong.json()["type"].endswith("csrf")
    made = client.post("/admin/keys", json={"name": "k1", "scopes": "read"}, headers={"X-CSRF-Token": token})
    assert made.status_code == 201 and made.json()["key"].startswith("hsk_")
    # the API itself, with the session and its token: the same rule
    assert client.post("/api/v1/sync", json={}).status_code == 403
    assert client.post("/api/v1/sync", json={}, headers={"X-CSRF-Token": token}).status_code == 202
    assert client.get("/api/v1/status").status_code == 200  # reading needs no token
    # a plain HTML form carries it as a field
    assert client.post("/admin/logout", data={"csrf": "nope"}, follow_redirects=False).status_code == 403
    kept = client.cookies.get(COOKIE)
    out = client.post("/admin/logout", data={"csrf": token}, follow_redirects=False)
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    client.cookies.clear()
    assert client.get("/admin/data-storage", follow_redirects=False).status_code == 401
    client.cookies.set(COOKIE, kept)  # a copy of the cookie kept from before the logout: refused too
    assert client.get("/admin/data-storage", follow_redirects=False).status_code == 401
    audit = client.app.state.hybridstore.audit.entries(limit=50)  # type: ignore[attr-defined]
    seen = {(e.actor, e.action, e.outcome) for e in audit}
    assert {("user:alice", "login", "failed"), ("user:alice", "login", "ok"), ("user:alice", "logout", "ok")} <= seen
    assert ("user:alice", "apikey.create", "ok") in seen and ("user:alice", "sync", "accepted") in seen


def test_a_logged_out_session_stays_refused_after_a_restart(tmp_path: Path) -> None:
    def serve() -> tuple[Any, Any]:
        store = hybridstore.open(data_dir=tmp_path / "node", background=False)
        return store, create_app(store, admin_token=None)

    store, app = serve()
    app.state.admin.users.add("alice", PASSWORD)
    with TestClient(app) as c:
        assert log_in(c).status_code == 303
        kept, other = c.cookies.get(COOKIE), None
        with TestClient(app) as c2:  # a second session of the same user, not logged out
            assert log_in(c2).status_code == 303
            other = c2.cookies.get(COOKIE)
        assert c.post("/admin/logout", data={"csrf": csrf_of(c)}, follow_redirects=False).status_code == 303
    app.state.live.stop()
    store.close()

    store, app = serve()  # the server restarts on the same data directory
    try:
        with TestClient(app) as c:
            c.cookies.set(COOKIE, kept)
            assert c.get("/admin/data-storage", follow_redirects=False).status_code == 401
            c.cookies.set(COOKIE, other)
            assert c.get("/admin/data-storage", follow_redirects=False).status_code == 200
    finally:
        app.state.live.stop()
        store.close()


def test_failed_logins_are_throttled(client: TestClient) -> None:
    for _ in range(5):
        assert log_in(client, "wrong password").status_code == 401
    refused = log_in(client)  # even the right password, until the window passes
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert "Too many failed logins" in refused.text


def test_removed_user_loses_the_session_and_tls_cookies_are_secure(client: TestClient) -> None:
    assert log_in(client).status_code == 303
    assert client.get("/admin/sync").status_code == 200
    client.app.state.admin.users.remove("alice")  # type: ignore[attr-defined]
    client.app.state.admin.gate._known.clear()  # type: ignore[attr-defined]  (skip the 1 s cache)
    assert client.get("/admin/sync", follow_redirects=False).status_code == 401
    client.app.state.admin.users.add("alice", PASSWORD)  # type: ignore[attr-defined]
    secure = TestClient(client.app, base_url="https://testserver")
    r = secure.post(
        "/admin/login",
        data={"username": "alice", "password": PASSWORD, "form_token": form_token(secure)},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "Secure" in r.headers.get_list("set-cookie")[0]


def test_setup_link_creates_the_first_user_once(client: TestClient) -> None:
    app: Any = client.app
    app.state.admin.users.remove("alice")
    token = app.state.admin.setup.create()
    assert client.get("/admin/setup?token=wrong").status_code == 404
    page = f"/admin/setup?token={token}"
    data = {"token": token, "username": "root", "password": PASSWORD, "password_again": PASSWORD + "x"}
    differ = client.post("/admin/setup", data={**data, "form_token": form_token(client, page)})
    assert differ.status_code == 422 and "differ" in differ.text
    data["password_again"] = PASSWORD
    made = client.post("/admin/setup", data={**data, "form_token": form_token(client, page)}, follow_redirects=False)
    assert made.status_code == 303 and made.headers["location"] == "/admin/data-storage"
    assert client.get("/admin/data-storage").status_code == 200  # logged in as the new user
    assert client.get(page).status_code == 404  # spent
    assert [u.name for u in app.state.admin.users.list()] == ["root"]


def test_pages_render_and_the_stream_answers_plain_clients(client: TestClient) -> None:
    assert log_in(client).status_code == 303
    for path in ("/admin", "/admin/data-storage", "/admin/backups", "/admin/sync", "/admin/health", "/admin/nodes"):
        r = client.get(path)
        assert r.status_code == 200 and "<h1>" in r.text, path
    data = client.get("/admin/data", params={"collection": "orders", "key": "o1"})
    assert "&#34;status&#34;: &#34;new&#34;" in data.text or "&quot;status&quot;: &quot;new&quot;" in data.text
    assert "not available on this node" not in client.get("/admin/nodes").text  # store.nodes() exists
    assert "Secrets are masked" in client.get("/admin/settings").text
    snapshot = client.get("/admin/stream").json()  # no Accept: text/event-stream: one JSON document
    assert snapshot["sample"]["overall"] == "healthy" and snapshot["status"]["node_id"]
    series = client.get("/admin/series").json()["samples"]
    assert series and set(series[0]) == {"t", "p50_ms", "p99_ms", "writes", "outbox_depth", "push_rate", "pull_rate"}
    assert client.get("/admin/static/vendor/uPlot.iife.min.js").status_code == 200
    assert client.get("/admin/static/vendor/uPlot.LICENSE.txt").status_code == 200
    assert client.get("/admin/static/../users.py").status_code == 404
    assert client.get("/admin/static/%2e%2e/users.py").status_code == 404
    outside = Path(hybridstore.__file__).parent / "web" / "admin" / "static" / "admin.css"
    assert client.get(f"/admin/static/{outside}").status_code == 404  # an absolute path: never outside static/
    assert client.get(f"/admin/static//{outside}").status_code == 404


def test_assets_ship_in_the_package_and_point_nowhere_else() -> None:
    """Nothing the pages load may come from outside the node: templates and our scripts name no other host, and
    the vendored chart library ships with its licence."""
    from importlib import resources

    root = resources.files("hybridstore.web.admin")
    vendor = root / "static" / "vendor"
    assert (vendor / "uPlot.iife.min.js").is_file() and (vendor / "uPlot.min.css").is_file()
    assert "MIT" in (vendor / "uPlot.LICENSE.txt").read_text()
    ours = [*(root / "templates").iterdir(), *(f for f in (root / "static").iterdir() if f.is_file())]
    assert len(ours) >= 14
    for item in ours:
        text = item.read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), item.name
        assert "url(http" not in text and "@import" not in text, item.name
