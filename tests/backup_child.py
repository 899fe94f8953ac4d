"""Child process for the backup tests, run as a script from this folder.

``backup <data_dir>``: print ``ready``, then take manual backups in a loop until killed.
``memory <data_dir>``: take one encrypted backup and print the RSS before it and the peak RSS after it (kB).
"""

from __future__ import annotations

import sys

import hybridstore
from hybridstore.backup import BackupService
from hybridstore.backup.crypto import KdfParams


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def main() -> None:
    mode, data_dir = sys.argv[1:3]
    store = hybridstore.open(data_dir=data_dir, background=False)
    backups = BackupService(store.node, writer=store.node.router, start=False, kdf=KdfParams(n=2**10))
    if mode == "backup":
        print("ready", flush=True)
        while True:
            backups.create_manual_backup("loop")
            print("done", flush=True)
    else:
        backups.update_config(encrypt=True)
        # the baseline holds the libraries a backup loads (zstd, the cipher), not data
        import zstandard
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        zstandard.ZstdCompressor(level=3).compress(b"warm-up")
        AESGCM(bytes(32)).encrypt(bytes(12), b"warm-up", b"")
        before = _status("VmRSS")
        info = backups.create_manual_backup("memory")
        print(before, _status("VmHWM"), info.content_bytes, flush=True)
    store.close()


if __name__ == "__main__":
    main()
