"""API keys on the primary (migration 0007): created on one node or by the CLI, accepted by every node, revoked
everywhere; a node cut off from the primary still accepts the keys it has seen (its copy in web.db), and refuses
the others."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hybridstore.cli import apikey, serve  # noqa: F401  (importing registers the commands)
from hybridstore.cli.app import app as cli_app
from hybridstore.cli.serve import _setup_key
from hybridstore.web.shared_keys import SharedKeyStore

from . import test_web_api as base
from .test_web_api import Web

make_web = base.make_web  # the fixture
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


def status_with(web: Web, token: str) -> int:
    code: int = web.client.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code
    return code


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_key_made_on_one_node_works_on_every_node(make_web: base.WebFactory) -> None:
    a, b = make_web("a"), make_web("b")
    assert isinstance(a.ctx.keys, SharedKeyStore)
    _, token = a.ctx.keys.create("ingest", ["read"])
    assert status_with(b, token) == 200 and status_with(a, token) == 200
    listed = {k.name for k in b.ctx.keys.list()}
    assert {"ingest", "a-admin", "b-admin"} <= listed  # every node's keys, from the primary
    b.ctx.keys.revoke("ingest")
    eventually(lambda: status_with(a, token) == 401)  # within the authenticator's one-second memory
    assert status_with(b, token) == 401
    with pytest.raises(Exception, match="exists already"):
        b.ctx.keys.create("ingest", ["read"])


def test_a_node_cut_off_accepts_the_keys_it_has_seen(make_web: base.WebFactory) -> None:
    a, b = make_web("a"), make_web("b")
    seen, seen_token = b.ctx.keys.create("seen", ["read"])
    _, unseen_token = b.ctx.keys.create("unseen", ["read"])
    keys = a.ctx.keys
    assert keys.lookup(seen_token) == seen  # a checks it once: its copy is kept
    gateway = a.store.node.gateway
    gateway.circuit.trip()  # a can no longer ask the primary
    assert keys.lookup(seen_token) is not None
    assert keys.lookup(unseen_token) is None  # never seen: refused
    assert "seen" in {k.name for k in keys.list()} and "unseen" not in {k.name for k in keys.list()}  # the copies
    b.ctx.keys.revoke("seen")
    assert keys.lookup(seen_token) is not None  # revoked while a is cut off: a does not know yet (documented)
    assert gateway.probe_now()  # the primary answers again
    assert keys.lookup(seen_token) is None  # the next check sees the revocation
    assert keys.lookup(unseen_token) is not None


def test_a_nodes_own_keys_keep_working_beside_shared_ones(make_web: base.WebFactory) -> None:
    a = make_web("a")
    _, token = a.ctx.local_keys.create("own", ["read"])  # as made before a primary was configured
    assert status_with(a, token) == 200
    assert "own" in {k.name for k in a.ctx.keys.list()}
    assert a.ctx.keys.revoke("own").revoked_at is not None
    eventually(lambda: status_with(a, token) == 401)


def test_the_setup_key_is_made_once_for_every_node(make_web: base.WebFactory, pg_dsn: str, pg_schema: str) -> None:
    a, b = make_web("a"), make_web("b")
    for web in (a, b):
        for key in web.ctx.keys.list():
            web.ctx.keys.revoke(key.id)
    created = _setup_key(a.ctx.keys, a.ctx.local_keys)
    assert created is not None and created[0] == "setup"
    assert status_with(b, created[1]) == 200  # on the primary: the other node accepts it
    assert _setup_key(b.ctx.keys, b.ctx.local_keys) is None  # there is an active key already


def cli(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(cli_app, list(args))
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        return result.exit_code, result.output


def test_the_cli_manages_keys_on_the_primary(
    make_web: base.WebFactory, pg_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    a = make_web("a")
    common = ("-d", str(tmp_path / "elsewhere"), "--primary-url", pg_dsn, "--schema", pg_schema, "apikey")
    code, made = cli(*common, "create", "--name", "from-cli", "--scope", "write", "--json")
    assert code == 0, made
    assert status_with(a, made["token"]) == 403  # accepted by the node (write only: status needs read)
    assert (
        a.client.put(
            "/api/v1/collections/c/items/k", json=1, headers={"Authorization": f"Bearer {made['token']}"}
        ).status_code
        == 200
    )
    code, listed = cli(*common, "list", "--json")
    assert code == 0 and "from-cli" in {k["name"] for k in listed} and "a-admin" in {k["name"] for k in listed}
    code, revoked = cli(*common, "revoke", "from-cli", "--json")
    assert code == 0 and revoked["active"] is False
    eventually(lambda: status_with(a, made["token"]) == 401)
    code, again = cli(*common, "create", "--name", "from-cli", "--scope", "read", "--json")
    assert code == 2 and "exists already" in json.dumps(again)


def test_made_up_tokens_do_not_become_queries_on_the_primary(tmp_path: Path) -> None:
    """A stream of made-up tokens: badly shaped ones are refused unchecked; well-shaped unknown ones are checked with
    the primary at most at the budget's rate, and a key this node has seen keeps being checked meanwhile."""
    from hybridstore.node.timing import FakeClock
    from hybridstore.web.keys import ApiKeyStore, hash_token
    from hybridstore.web.shared_keys import UNKNOWN_BURST, UNKNOWN_PER_SECOND, well_formed
    from hybridstore.web.webdb import WebDatabase

    known = "hsk_" + "k" * 43
    asked: list[str] = []

    class Primary:  # answers the key lookups as the primary's api_keys table would, and counts them
        def query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
            if not sql.startswith("SELECT"):
                return []  # the key's last use noted
            asked.append(params[0])
            return [("id1", "shop", "read", "hsk_kkkk", 1.0, None, None)] if params[0] == hash_token(known) else []

    clock = FakeClock()
    local = ApiKeyStore(WebDatabase(tmp_path / "web.db"))
    keys = SharedKeyStore(lambda fn: fn(Primary()), local, clock=clock.monotonic)
    assert keys.lookup(known) is not None and len(asked) == 1  # seen once: kept as a copy
    assert not well_formed("hsk_short") and keys.lookup("hsk_short") is None and keys.lookup("x" * 47) is None
    assert len(asked) == 1, "malformed tokens never reach the primary"

    made_up = [f"hsk_{i:043d}" for i in range(200)]
    assert all(keys.lookup(t) is None for t in made_up)
    assert len(asked) == UNKNOWN_BURST  # the burst (the known key's first check was one), then nothing more
    assert keys.lookup(known) is not None and len(asked) == 1 + UNKNOWN_BURST  # a seen key is still checked

    clock.advance(2.0)
    assert all(keys.lookup(t) is None for t in made_up)
    assert len(asked) == 1 + UNKNOWN_BURST + int(2 * UNKNOWN_PER_SECOND)
