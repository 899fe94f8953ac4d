"""``GET | PUT /api/v1/config``: the node's effective configuration with every secret masked, and the settings that
change while it runs (admin only, audited, typed confirmation)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from hybridstore.web.settings import mask_webhook

from . import test_web_api as base
from .test_web_api import ADMIN_TOKEN

make_web = base.make_web  # the fixture
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
WEBHOOK = "https://hooks.example.com/services/T000/B000/XXXXSECRETXXXX"
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def restore_log_level() -> Iterator[None]:
    logger = logging.getLogger("hybridstore")
    level = logger.level
    yield
    logger.setLevel(level)


def test_mask_webhook_keeps_only_scheme_and_host() -> None:
    assert mask_webhook(WEBHOOK) == "https://hooks.example.com/***"
    assert mask_webhook("http://alerts.local:9000") == "http://alerts.local:9000"
    assert mask_webhook("https://u:p@h.example/hook?token=1") == "https://h.example/***"


def test_config_is_shown_with_secrets_masked(
    make_web: base.WebFactory, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYBRIDSTORE_BACKUP_PASSPHRASE", PASSPHRASE)
    with_password = pg_dsn.replace("postgres@", "postgres:s3cr3t-pw@")  # trust auth: the password is not checked
    assert "s3cr3t-pw" in with_password
    web = make_web("a", primary=with_password, alert_webhook_url=WEBHOOK, primary_session_url=with_password)
    assert web.get("/api/v1/config", scope="read").status_code == 403
    r = web.get("/api/v1/config", scope="admin")
    assert r.status_code == 200, r.text
    for secret in ("s3cr3t-pw", "XXXXSECRET", ADMIN_TOKEN, PASSPHRASE):
        assert secret not in r.text
    config = r.json()
    assert config["store"]["primary_url"] == with_password.replace("s3cr3t-pw", "***")
    assert config["store"]["primary_session_url"] == config["store"]["primary_url"]
    assert config["store"]["alert_webhook_url"] == "https://hooks.example.com/***"
    assert config["store"]["node_id"] == web.store.node_id and config["store"]["write_mode"] == "write_through"
    assert config["secrets"] == {"backup_passphrase": "***"} and config["web"]["admin_token"] == "***"
    assert config["runtime_settable"] == ["log_level", "heartbeat_interval", "pull_interval", "sync_retry_attempts"]
    assert config["runtime"]["heartbeat_interval"] == 15.0 and config["runtime"]["sync_retry_attempts"] == 3


@pytest.mark.usefixtures("restore_log_level")
def test_runtime_settings_change_the_running_node(make_web: base.WebFactory) -> None:
    web = make_web("a")
    put = web.client.put
    change = {"log_level": "debug", "heartbeat_interval": 5, "pull_interval": 0.5, "sync_retry_attempts": 7}
    refused = put("/api/v1/config", headers=web.auth(), json=change)
    assert refused.status_code == 422 and refused.json()["type"].endswith("confirmation-required")
    assert put("/api/v1/config", headers=web.auth("rw"), json={**change, "confirm": "config"}).status_code == 403
    done = put("/api/v1/config", headers=web.auth(), json={**change, "confirm": "config"})
    assert done.status_code == 200, done.text
    assert done.json() == {
        "log_level": "debug",
        "heartbeat_interval": 5.0,
        "pull_interval": 0.5,
        "sync_retry_attempts": 7,
    }
    node = web.store.node
    assert logging.getLogger("hybridstore").level == logging.DEBUG
    assert node.heartbeat.interval == 5.0 and node.replayer.max_rejections == 7
    assert node.puller is not None and node.puller.poll_interval == 0.5
    assert web.get("/api/v1/config", scope="admin").json()["runtime"] == done.json()

    for bad in ({"batch_size": 10}, {"log_level": "loud"}, {"heartbeat_interval": 0}, {"sync_retry_attempts": "3"}):
        r = put("/api/v1/config", headers=web.auth(), json={**bad, "confirm": "config"})
        assert r.status_code == 422, (bad, r.text)
    assert node.heartbeat.interval == 5.0  # nothing changed by a refused call
    audit = [
        (e["action"], e["outcome"], e["details"]) for e in web.get("/api/v1/audit", scope="admin").json()["entries"]
    ]
    assert ("config.change", "ok", change) in audit
    assert ("config.change", "failed: confirmation-required", change) in audit


def test_pull_interval_needs_a_primary(make_web: base.WebFactory) -> None:
    web = make_web("solo", primary=False)
    r = web.client.put("/api/v1/config", headers=web.auth(), json={"pull_interval": 1, "confirm": "config"})
    assert r.status_code == 422 and "does not pull" in r.json()["detail"]
    assert web.get("/api/v1/config", scope="admin").json()["runtime"]["pull_interval"] is None
