"""TLS as Supabase users run it: ``sslmode=require``, and ``verify-full`` with the CA that signed the server's
certificate; a wrong CA fails ``verify-full`` and is reported as misconfigured while writes fall back locally."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

import hybridstore

from .fix_tls import TLSCluster


def _open(url: str, tmp_path: Path, name: str) -> hybridstore.HybridStore:
    store = hybridstore.open(url, data_dir=tmp_path / name, background=False, primary_timeout=1.0)
    store.node.gateway.tick()
    return store


def test_verify_full_with_the_right_ca_and_require_work(tls_cluster: TLSCluster, tmp_path: Path) -> None:
    for name, url in {
        "verify-full": tls_cluster.url("verify-full", tls_cluster.certs.ca),
        "verify-full-ip": tls_cluster.url("verify-full", tls_cluster.certs.ca, host="127.0.0.1"),
        "require": tls_cluster.url("require"),
    }.items():
        store = _open(url, tmp_path, name)
        try:
            assert store.node.gateway.snapshot()["state"] == "healthy", (name, store.node.gateway.snapshot())
            assert store.set("c", name, {"tls": True}).tier == "primary"
            assert store.get("c", name).value == {"tls": True}  # type: ignore[union-attr]
            app = store.node.gateway.tier.application_name
            with psycopg.connect(tls_cluster.url("require")) as admin:
                rows = admin.execute(
                    "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                    "WHERE a.application_name = %s",
                    (app,),
                ).fetchall()
            assert rows and all(ssl for ssl, _ in rows), "every connection of the node is encrypted"
            assert all(version.startswith("TLSv1.") for _, version in rows)
        finally:
            store.close()


@pytest.mark.parametrize("which", ["wrong_ca", "impostor_ca"])
def test_a_wrong_ca_fails_verify_full_as_misconfigured_and_writes_fall_back(
    which: str, tls_cluster: TLSCluster, tmp_path: Path
) -> None:
    store = _open(tls_cluster.url("verify-full", getattr(tls_cluster.certs, which)), tmp_path, which)
    try:
        snap = store.node.gateway.snapshot()
        assert snap["state"] == "misconfigured" and "SSL error" in snap["detail"], snap
        result = store.set("c", "k", 1)
        assert result.tier == "local" and result.queued
        store.node.gateway.tick()
        assert store.node.gateway.snapshot()["state"] == "misconfigured", "it stays misconfigured"
        assert store.health()["primary"]["state"] == "misconfigured"
    finally:
        store.close()


def test_a_plain_connection_is_refused_when_the_url_asks_for_verification(tls_cluster: TLSCluster) -> None:
    """libpq itself refuses ``verify-full`` without a CA file: a configuration error at the first connection."""
    store_url = (
        f"postgresql://postgres@localhost:{tls_cluster.port}/postgres?sslmode=verify-full&sslrootcert=/nonexistent"
    )
    with psycopg.connect(tls_cluster.url("disable")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    try:
        psycopg.connect(store_url, connect_timeout=2).close()
    except psycopg.OperationalError as exc:
        assert "root certificate file" in str(exc)
    else:
        raise AssertionError("verify-full without the CA file must not connect")
