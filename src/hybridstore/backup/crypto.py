"""Backup cryptography: passphrase → scrypt → key-encryption key (KEK) that wraps a random per-backup data key;
AES-256-GCM for chunks and for the header's authentication tag.

Nonces: a chunk's nonce is its index (4 zero bytes + index as u64 big-endian). That is safe because every backup
has its own random data key, so a (key, nonce) pair is never used twice. The key wrap and the header tag use
random 12-byte nonces stored next to them, because re-wrapping (passphrase rotation) reuses the data key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import BackupTamperedError, ConfigError, WrongPassphraseError

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # pragma: no cover - exercised only without the [backup] extra
    AESGCM = None  # type: ignore[assignment,misc]

CIPHER = "aes-256-gcm"
TAG_BYTES = 16
KEY_BYTES = 32
PASSPHRASE_ENV = "HYBRIDSTORE_BACKUP_PASSPHRASE"
_WRAP_AAD = b"hybridstore-backup-key\x00"
_kek_cache: dict[tuple[int, int, int, bytes, bytes], bytes] = {}
_kek_lock = threading.Lock()
_wrap_salts: dict[tuple[int, int, int, bytes], bytes] = {}  # (params, passphrase digest) -> this process's salt


def require_crypto() -> None:
    if AESGCM is None:
        raise ConfigError("encrypted backups need the cryptography package: pip install 'hybridstore[backup]'")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise BackupTamperedError("backup header is damaged: a key field is not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise BackupTamperedError("backup header is damaged: a key field is not base64") from None


@dataclass(frozen=True)
class KdfParams:
    """scrypt parameters (RFC 7914). Defaults: N=2**15, r=8, p=1 (~32 MiB, ~0.1 s)."""

    n: int = 2**15
    r: int = 8
    p: int = 1

    def derive(self, passphrase: str, salt: bytes) -> bytes:
        """The KEK for ``salt``. The last few are remembered (keyed by a digest of the passphrase), so the
        verification right after writing a backup does not pay for scrypt twice."""
        cache_key = (self.n, self.r, self.p, salt, hashlib.sha256(passphrase.encode("utf-8")).digest())
        with _kek_lock:
            kek = _kek_cache.get(cache_key)
        if kek is None:
            kek = self._derive(passphrase, salt)
            with _kek_lock:
                _kek_cache[cache_key] = kek
                while len(_kek_cache) > 8:
                    del _kek_cache[next(iter(_kek_cache))]
        return kek

    def _derive(self, passphrase: str, salt: bytes) -> bytes:
        if not passphrase:
            raise ConfigError(f"an encrypted backup needs a passphrase: set {PASSPHRASE_ENV}")
        if not (2 <= self.n <= 2**22 and self.n & (self.n - 1) == 0 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise BackupTamperedError("backup header is damaged: implausible scrypt parameters")
        return hashlib.scrypt(
            passphrase.encode("utf-8"),
            salt=salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=256 * self.n * self.r * self.p,
            dklen=KEY_BYTES,
        )


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


def wrap_key(data_key: bytes, passphrase: str, backup_id: bytes, kdf: KdfParams) -> dict[str, Any]:
    """The header's ``cipher`` entry: KDF parameters, salt, and the data key wrapped under the KEK (AAD: the
    backup id, so a wrapped key cannot be moved to another backup)."""
    require_crypto()
    salt = _wrap_salt(passphrase, kdf)
    kek = kdf.derive(passphrase, salt)
    nonce = os.urandom(12)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, _WRAP_AAD + backup_id)
    return {
        "name": CIPHER,
        "kdf": {"name": "scrypt", "n": kdf.n, "r": kdf.r, "p": kdf.p, "salt": b64(salt)},
        "wrapped_key": b64(nonce + wrapped),
    }


def _wrap_salt(passphrase: str, kdf: KdfParams) -> bytes:
    """The salt a process wraps data keys with: random, drawn once per process, passphrase and scrypt parameters,
    so scrypt (~0.1 s) runs once per process rather than once per backup. Each backup still has its own random
    data key and wrap nonce; what is shared is only that one guess of the passphrase, tried against one of this
    process's backups, is tried against all of them (as with any per-installation salt)."""
    key = (kdf.n, kdf.r, kdf.p, hashlib.sha256(passphrase.encode("utf-8")).digest())
    with _kek_lock:
        salt = _wrap_salts.get(key)
        if salt is None:
            salt = _wrap_salts[key] = os.urandom(16)
            while len(_wrap_salts) > 8:
                del _wrap_salts[next(iter(_wrap_salts))]
    return salt


def unwrap_key(cipher: dict[str, Any], passphrase: str | None, backup_id: bytes) -> bytes:
    """The data key, or `WrongPassphraseError`."""
    require_crypto()
    if not passphrase:
        raise WrongPassphraseError(f"this backup is encrypted: set {PASSPHRASE_ENV} to its passphrase")
    kdf_info = cipher.get("kdf")
    if not isinstance(kdf_info, dict) or kdf_info.get("name") != "scrypt":
        raise BackupTamperedError("backup header is damaged: unknown key derivation")
    try:
        kdf = KdfParams(int(kdf_info["n"]), int(kdf_info["r"]), int(kdf_info["p"]))
    except (KeyError, TypeError, ValueError):
        raise BackupTamperedError("backup header is damaged: bad scrypt parameters") from None
    blob = unb64(cipher.get("wrapped_key"))
    kek = kdf.derive(passphrase, unb64(kdf_info.get("salt")))
    try:
        return AESGCM(kek).decrypt(blob[:12], blob[12:], _WRAP_AAD + backup_id)
    except (InvalidTag, ValueError):
        raise WrongPassphraseError("wrong passphrase: it does not open this backup's data key") from None


def chunk_aad(backup_id: bytes, index: int, flags: int) -> bytes:
    """Associated data of a chunk: binds it to its backup, its position and whether it is the last one."""
    return b"HSBK" + backup_id + struct.pack(">QB", index, flags)


def chunk_nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack(">Q", index)


class ChunkSealer:
    """Seals and opens chunk payloads: AES-256-GCM under the data key, or (no encryption) a 16-byte SHA-256
    tag over AAD + payload, which detects damage, truncation and reordering but not a deliberate forger."""

    def __init__(self, data_key: bytes | None) -> None:
        self._aead = AESGCM(data_key) if data_key is not None else None

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def seal(self, payload: bytes, aad: bytes, index: int) -> bytes:
        if self._aead is not None:
            return self._aead.encrypt(chunk_nonce(index), payload, aad)
        return payload + hashlib.sha256(aad + payload).digest()[:TAG_BYTES]

    def open(self, sealed: bytes, aad: bytes, index: int) -> bytes:
        if len(sealed) < TAG_BYTES:
            raise BackupTamperedError(f"chunk {index} is too short")
        if self._aead is not None:
            try:
                return self._aead.decrypt(chunk_nonce(index), sealed, aad)
            except InvalidTag:
                raise BackupTamperedError(f"chunk {index} failed authentication (changed, moved or cut)") from None
        payload = sealed[:-TAG_BYTES]
        if hashlib.sha256(aad + payload).digest()[:TAG_BYTES] != sealed[-TAG_BYTES:]:
            raise BackupTamperedError(f"chunk {index} failed its checksum (changed, moved or cut)")
        return payload

    def header_tag(self, header: bytes) -> bytes:
        """12-byte random nonce + GCM tag over empty plaintext with the header as associated data."""
        assert self._aead is not None
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, b"", header)

    def check_header(self, header: bytes, tag: bytes) -> None:
        assert self._aead is not None
        try:
            self._aead.decrypt(tag[:12], tag[12:], header)
        except InvalidTag:
            raise BackupTamperedError("backup header failed authentication: it was changed") from None
