"""The parent's side of a node process (`hybridstore.resilience.child`): start it, turn its lines into history
entries, kill it with SIGKILL (whatever it was doing: writes still in flight become ``unknown``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .. import faults
from ..errors import HybridStoreError
from .child import value_of
from .history import History, OpEntry
from .workload import COLLECTION


class NodeProcess:
    """One run of a node process. ``name`` is the node's name in the history; ``prefix`` makes its keys unique."""

    def __init__(
        self,
        history: History,
        name: str,
        *,
        data_dir: Path,
        url: str,
        schema: str,
        node_id: str,
        write_mode: str,
        rate: float,
        prefix: str,
        options: dict[str, object] | None = None,
    ) -> None:
        self.history = history
        self.name = name
        self.prefix = prefix
        self.acked = 0
        self.tiers: dict[str, int] = {}
        self._inflight: dict[int, OpEntry] = {}
        self._first_ack = threading.Event()
        env = dict(os.environ)
        env[faults.ENV] = ",".join(sorted(faults.active))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hybridstore.resilience.child",
                str(data_dir),
                url,
                schema,
                node_id,
                write_mode,
                str(rate),
                prefix,
                json.dumps(options or {}),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            self.proc.wait()
            raise HybridStoreError(f"node process {name} did not start (it said {line!r})")
        self._reader = threading.Thread(target=self._read, name=f"resilience-child-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                continue  # a line cut by the kill
            n = int(parts[1])
            if parts[0] == "inv" and len(parts) == 3:
                self._inflight[n] = self.history.invoke(self.name, COLLECTION, parts[2], value_of(self.prefix, n))
            elif parts[0] == "ok" and len(parts) == 5 and n in self._inflight:
                entry = self._inflight.pop(n)
                version = int(parts[4]) if parts[4].isdigit() else 0
                self.history.ok(entry, tier=parts[2], hlc=parts[3], version=version or None)
                self.tiers[parts[2]] = self.tiers.get(parts[2], 0) + 1
                self.acked += 1
                self._first_ack.set()
            elif parts[0] == "fail" and n in self._inflight:
                self.history.fail(self._inflight.pop(n), " ".join(parts[2:]))

    def wait_first_ack(self, timeout: float = 30.0) -> bool:
        return self._first_ack.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, then every write still in flight is unknown (it may or may not have been made durable)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(10)
        for entry in self._inflight.values():
            self.history.unknown(entry, "killed before it answered")
        self._inflight.clear()
