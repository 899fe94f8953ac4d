"""A fault-injecting TCP proxy (the faults Toxiproxy offers), for the resilience tester and the test suite.

`FaultProxy` listens on a local port and forwards every connection to a target (PostgreSQL). Faults are switched at
run time, from any thread, per direction (``"upstream"``: client → target, ``"downstream"``: target → client):

- `down` (alias `cut`): new connections are refused (the listener is closed) and open ones are reset;
- `blackhole`: connections are accepted and bytes are read, but nothing is forwarded or answered;
- `latency`: each chunk is delayed by ``ms`` ± ``jitter_ms`` (uniform, from the proxy's seeded RNG);
- `bandwidth`: at most ``bytes_per_s`` flow;
- `reset_after`: each connection is reset (RST) after ``n`` more bytes (``n`` drawn per connection from
  ``[low, high]``), e.g. in the middle of a COMMIT or of its answer;
- `slow_close`: when one side closes, the other is closed only ``seconds`` later;
- `restore`: every fault off, the listener back (connections that swallowed data in a black hole are reset: a
  real network would have timed them out).

`counters` says what was injected (connections refused and reset, chunks delayed, bytes black-holed...), so a
test can assert that a fault actually fired. The proxy runs its own asyncio loop in one daemon thread; every
control method is synchronous and thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from random import Random, SystemRandom
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError

Direction = Literal["upstream", "downstream", "both"]
T = TypeVar("T")
CHUNK = 65536
# A port outside the ephemeral range: after `down` closes the listener, an ephemeral port could be handed to some
# outgoing connection in the meantime and `restore` could not bind it again.
PORT_RANGE = (20000, 32000)


@dataclass(frozen=True)
class Toxics:
    """The faults applied to one direction of every connection."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    bytes_per_s: float = 0.0  # 0: unlimited
    reset_after: tuple[int, int] | None = None  # bytes, drawn per connection from [low, high]
    slow_close_s: float = 0.0


class _Conn:
    """One proxied connection: the client's and the target's streams, and bytes counted per direction."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter | None) -> None:
        self.client = client
        self.target = target
        self.sent: dict[str, int] = {"upstream": 0, "downstream": 0}
        self.reset_at: dict[str, int | None] = {"upstream": None, "downstream": None}
        self.tasks: list[asyncio.Task[None]] = []

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.target) if w is not None]


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a cut cable or a crashed peer's kernel would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()


class FaultProxy:
    """See the module docstring. ``FaultProxy(host, port)`` starts listening at once on ``self.port``."""

    def __init__(self, target_host: str, target_port: int, *, seed: int | None = None, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.rng = Random(seed)
        # The listening port is not part of a reproducible run: drawn from the seed, two runs with the same seed on
        # one machine would pick the same ports, and while one proxy is down (its port free) the other could take
        # its port and let its clients through.
        self._ports = SystemRandom()
        self.port = port
        self.mode: Literal["pass", "cut", "blackhole"] = "pass"
        self.counters: Counter[str] = Counter()
        self._toxics: dict[str, Toxics] = {"upstream": Toxics(), "downstream": Toxics()}
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hybridstore-fault-proxy", daemon=True)
        self._thread.start()
        self._call(self._listen())

    # -- control (any thread) ---------------------------------------------------------------------------------

    @property
    def accepted(self) -> int:
        return self.counters["accepted"]

    def url(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by the proxy's."""
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    def toxics(self, direction: Literal["upstream", "downstream"]) -> Toxics:
        return self._toxics[direction]

    def down(self) -> None:
        """Refuse new connections and reset the open ones."""
        self._call(self._down())

    cut = down

    def blackhole(self) -> None:
        """Accept connections and read their bytes, but never forward or answer anything."""
        self._call(self._blackhole())

    def latency(self, ms: float, jitter_ms: float = 0.0, *, direction: Direction = "downstream") -> None:
        if ms < 0 or jitter_ms < 0:
            raise ConfigError("latency and jitter must be >= 0")
        self._set(direction, latency_s=ms / 1000, jitter_s=jitter_ms / 1000)

    def bandwidth(self, bytes_per_s: float, *, direction: Direction = "downstream") -> None:
        """At most ``bytes_per_s`` in ``direction`` (0: unlimited)."""
        if bytes_per_s < 0:
            raise ConfigError("bandwidth must be >= 0")
        self._set(direction, bytes_per_s=float(bytes_per_s))

    def reset_after(self, low: int, high: int | None = None, *, direction: Direction = "downstream") -> None:
        """Reset each connection once ``n`` more bytes went through ``direction`` (``n`` from [low, high])."""
        high = low if high is None else high
        if not 0 <= low <= high:
            raise ConfigError("reset_after needs 0 <= low <= high")
        self._set(direction, reset_after=(low, high))
        self._loop.call_soon_threadsafe(self._arm_resets)

    def slow_close(self, seconds: float, *, direction: Direction = "both") -> None:
        self._set(direction, slow_close_s=seconds)

    def clear_toxics(self) -> None:
        """Every per-direction toxic off (the mode, pass / down / blackhole, is kept)."""
        self._toxics = {"upstream": Toxics(), "downstream": Toxics()}

    def restore(self) -> None:
        """Everything off: traffic flows again (open connections stay dead after `down`; clients reconnect)."""
        self.clear_toxics()
        self._call(self._restore())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (the proxy's loop) -------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def _set(self, direction: Direction, **changes: Any) -> None:
        for d in ("upstream", "downstream") if direction == "both" else (direction,):
            self._toxics[d] = replace(self._toxics[d], **changes)

    async def _listen(self) -> None:
        for _ in range(200):
            port = self.port or self._ports.randrange(*PORT_RANGE)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                if self.port:
                    await asyncio.sleep(0.05)  # our own port after `down`, briefly busy: try again
                continue
            break
        else:
            raise OSError("no free port for the fault proxy")
        self.port = port
        self._server = await asyncio.start_server(self._accept, sock=sock, backlog=128)

    async def _down(self) -> None:
        self.mode = "cut"
        self.counters["down"] += 1
        if self._server is not None:
            self._server.close()
            self._server = None
        self._reset_all()

    async def _blackhole(self) -> None:
        if self._server is None:
            await self._listen()
        self.mode = "blackhole"
        self.counters["blackhole"] += 1

    async def _restore(self) -> None:
        if self.mode == "blackhole":
            self._reset_all()
        self.mode = "pass"
        if self._server is None:
            await self._listen()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._reset_all()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _reset_all(self) -> None:
        conns, self._conns = self._conns, set()
        for conn in conns:
            for w in conn.writers():
                _rst(w)
            for task in conn.tasks:
                task.cancel()
            self.counters["reset"] += 1

    def _arm_resets(self) -> None:
        for conn in self._conns:
            self._arm(conn)

    def _arm(self, conn: _Conn) -> None:
        for d in ("upstream", "downstream"):
            limit = self._toxics[d].reset_after
            conn.reset_at[d] = None if limit is None else conn.sent[d] + self.rng.randint(*limit)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters["accepted"] += 1
        if self.mode == "cut":  # accepted just before the listener closed
            _rst(writer)
            return
        if self.mode == "blackhole":
            conn = _Conn(writer, None)
            self._conns.add(conn)
            self.counters["blackholed_connections"] += 1
            await self._swallow(reader)
            return
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.counters["target_refused"] += 1
            _rst(writer)
            return
        conn = _Conn(writer, t_writer)
        self._arm(conn)
        self._conns.add(conn)
        up = asyncio.ensure_future(self._pump(conn, reader, t_writer, "upstream"))
        down = asyncio.ensure_future(self._pump(conn, t_reader, writer, "downstream"))
        conn.tasks = [up, down]
        await asyncio.gather(up, down, return_exceptions=True)
        for task in conn.tasks:
            task.cancel()
        self._conns.discard(conn)
        for w in conn.writers():
            with contextlib.suppress(Exception):
                w.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(CHUNK):
                self.counters["blackholed_bytes"] += len(data)

    async def _pump(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        """Read one direction into a queue, stamping each chunk with when it is due (latency ± jitter, drawn on
        arrival), while `_forward` writes them out in order when due: chunks close together are delayed once,
        not one after the other."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        forward = asyncio.ensure_future(self._forward(conn, queue, writer, direction))
        conn.tasks.append(forward)
        loop = asyncio.get_running_loop()
        last_due = 0.0
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self.mode == "blackhole":
                    self.counters["blackholed_bytes"] += len(data)
                    continue
                tox = self._toxics[direction]
                due = loop.time()
                if tox.latency_s > 0 or tox.jitter_s > 0:
                    due += max(0.0, tox.latency_s + self.rng.uniform(-tox.jitter_s, tox.jitter_s))
                    self.counters["delayed_chunks"] += 1
                last_due = max(due, last_due)
                queue.put_nowait((last_due, data))
            queue.put_nowait((0.0, b""))  # end of stream
            await forward
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for task in conn.tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    async def _forward(
        self, conn: _Conn, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, direction: str
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._deliver(conn, data, writer, direction)
            close_delay = self._toxics[direction].slow_close_s
            if close_delay > 0:
                self.counters["slow_closes"] += 1
                await asyncio.sleep(close_delay)
            with contextlib.suppress(Exception):
                writer.write_eof()
        except OSError:
            for task in conn.tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    async def _deliver(self, conn: _Conn, data: bytes, writer: asyncio.StreamWriter, direction: str) -> None:
        tox = self._toxics[direction]
        reset_at = conn.reset_at[direction]
        if reset_at is not None and conn.sent[direction] + len(data) >= reset_at:
            head = data[: max(0, reset_at - conn.sent[direction])]
            if head:
                writer.write(head)
                with contextlib.suppress(Exception):
                    await writer.drain()
            self.counters["reset_after_bytes"] += 1
            self._conns.discard(conn)
            for w in conn.writers():
                _rst(w)
            raise OSError("reset by the fault proxy")
        pieces = [data]
        if tox.bytes_per_s > 0:
            step = max(1, int(tox.bytes_per_s / 20))  # about 50 ms of traffic a piece
            pieces = [data[i : i + step] for i in range(0, len(data), step)]
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            conn.sent[direction] += len(piece)
            if tox.bytes_per_s > 0:
                self.counters["throttled_bytes"] += len(piece)
                await asyncio.sleep(len(piece) / tox.bytes_per_s)
