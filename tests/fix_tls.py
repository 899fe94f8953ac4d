"""A throwaway PostgreSQL cluster with TLS on, its server certificate signed by a CA made for the test, and a
second, unrelated CA that must fail ``sslmode=verify-full``.

Certificates come from the ``cryptography`` package (the ``[backup]`` extra): a CA, a server certificate for
``localhost`` and ``127.0.0.1``, and a wrong CA.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import quote

import pytest

from .fix_cluster import Cluster

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
except ImportError:  # pragma: no cover - the [backup] extra is part of the test setup
    x509 = None  # type: ignore[assignment]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


class Certificates:
    """``ca.pem`` (signed the server's), ``wrong-ca.pem`` and ``impostor-ca.pem`` (did not; the impostor has the
    real CA's name), ``server.crt`` / ``server.key``."""

    def __init__(self, directory: Path) -> None:
        ca_key, ca = _ca("hybridstore test CA")
        _, wrong = _ca("another CA")
        _, impostor = _ca("hybridstore test CA")  # the same name as the real CA: only the signature differs
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        server = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca = directory / "ca.pem"
        self.wrong_ca = directory / "wrong-ca.pem"
        self.impostor_ca = directory / "impostor-ca.pem"
        self.cert = directory / "server.crt"
        self.key = directory / "server.key"
        self.ca.write_bytes(_pem(ca))
        self.wrong_ca.write_bytes(_pem(wrong))
        self.impostor_ca.write_bytes(_pem(impostor))
        self.cert.write_bytes(_pem(server))
        self.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        os.chmod(self.key, 0o600)


class TLSCluster(Cluster):
    """`Cluster` with ``ssl=on`` and the test CA's server certificate."""

    def __init__(self) -> None:
        self.certs_dir = Path(tempfile.mkdtemp(prefix="hs-tls-"))
        self.certs = Certificates(self.certs_dir)
        if os.geteuid() == 0:
            for path in (self.certs_dir, self.certs.cert, self.certs.key):
                shutil.chown(path, "postgres", "postgres")
        super().__init__()

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on "
            f"-c ssl_cert_file={self.certs.cert} -c ssl_key_file={self.certs.key}"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def url(self, sslmode: str, root: Path | None = None, host: str = "localhost") -> str:
        query = f"sslmode={sslmode}" + (f"&sslrootcert={quote(str(root))}" if root else "")
        return f"postgresql://postgres@{host}:{self.port}/postgres?{query}"

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.certs_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[TLSCluster]:
    if x509 is None:
        pytest.fail("the TLS tests need the cryptography package: pip install -e '.[backup]'")
    cluster = TLSCluster()
    try:
        yield cluster
    finally:
        cluster.close()


__all__ = ["Certificates", "TLSCluster"]
