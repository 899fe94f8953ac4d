"""Live updates over server-sent events: `LiveFeed` samples the node, keeps the last hour of samples (the admin
UI's charts), and fans samples, status snapshots and event-bus events out to every open stream.

One sampler thread (``hybridstore-web-live``) per app, started on first use: every ``interval`` seconds it reads
the status snapshot (never the primary: see `hybridstore.node.status`) and the store's operation metrics, and
derives a small sample — overall state and since when, tier states, circuit, outbox depth and oldest age, sync
and write rates by tier, write latency p50 / p99 over the interval, open conflicts, dead letters, active alerts.
Event-bus events (circuit opened, primary down, backup taken…) are forwarded as they happen.

Streams: ``GET /admin/stream`` (the admin pages) and ``GET /api/v1/events/stream`` (API clients, ``read`` scope).
A client that asks for ``text/event-stream`` gets the live stream (``event: sample``, ``event: status``,
``event: node-event``; a comment every 15 s keeps proxies from closing it; it ends when the server drains);
any other client gets one JSON document with the current sample, snapshot and recent events, so a plain GET
never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from starlette.responses import Response, StreamingResponse

from ..events import Event
from ..metrics import LATENCY_BUCKETS
from .responses import DataResponse
from .routing import ScopedRouter

if TYPE_CHECKING:
    from ..store import HybridStore
    from .context import WebContext

log = logging.getLogger("hybridstore.web.sse")
WRITE_OPS = ("set", "delete", "set_many")
READ_OPS = ("get", "list")
TIERS = ("primary", "local", "journal")
KEEPALIVE_S = 15.0
QUEUE_MAX = 256  # a client this far behind loses the oldest messages rather than holding memory


def quantile(deltas: list[int], q: float) -> float | None:
    """The ``q`` quantile (seconds) of a histogram's per-bucket counts over `LATENCY_BUCKETS` (+Inf last),
    interpolated linearly inside the bucket; ``None`` for no observations."""
    total = sum(deltas)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(deltas):
        if n and seen + n >= rank:
            low = LATENCY_BUCKETS[i - 1] if i > 0 else 0.0
            high = LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else LATENCY_BUCKETS[-1]
            return low + (high - low) * (rank - seen) / n
        seen += n
    return LATENCY_BUCKETS[-1]


def overall_of(status: dict[str, Any]) -> str:
    """The node's overall state in one word: the recovery monitor's verdict when there is one, else derived from
    the tiers (healthy / degraded / outage / misconfigured / recovering)."""
    health = status.get("health")
    if isinstance(health, dict) and health.get("overall"):
        return str(health["overall"])
    primary = status.get("primary", {}).get("state")
    if primary == "misconfigured":
        return "misconfigured"
    if primary == "down" or status.get("circuit", {}).get("state") == "open":
        return "outage"
    if status.get("local", {}).get("state") != "healthy":
        return "degraded"
    return "healthy"


class Sampler:
    """Turns consecutive reads of the status snapshot and the op metrics into samples (rates and quantiles over
    the interval between two reads). Pure but for what it is given."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[tuple[str, str], list[int]], int, int] | None = None
        self.overall: str | None = None
        self.since: float | None = None

    def sample(
        self, status: dict[str, Any], ops: dict[tuple[str, str], tuple[list[int], float]], now: float
    ) -> dict[str, Any]:
        counts = {key: buckets for key, (buckets, _) in ops.items()}
        sync = status.get("sync", {})
        pushed, pulled = int(sync.get("pushed") or 0), int(sync.get("pulled") or 0)
        writes = dict.fromkeys(TIERS, 0.0)
        reads = 0.0
        p50 = p99 = None
        if self._last is not None:
            then, before, pushed_before, pulled_before = self._last
            dt = max(now - then, 1e-6)
            merged = [0] * (len(LATENCY_BUCKETS) + 1)
            for (op, tier), buckets in counts.items():
                old = before.get((op, tier), [0] * len(buckets))
                delta = [b - a for a, b in zip(_per_bucket(old), _per_bucket(buckets), strict=False)]
                n = sum(delta)
                if op in WRITE_OPS:
                    writes[tier] = writes.get(tier, 0.0) + n / dt
                    merged = [m + d for m, d in zip(merged, delta, strict=False)]
                elif op in READ_OPS:
                    reads += n / dt
            low, high = quantile(merged, 0.5), quantile(merged, 0.99)
            p50 = None if low is None else round(low * 1000, 3)
            p99 = None if high is None else round(high * 1000, 3)
            push_rate = round(max(0, pushed - pushed_before) / dt, 2)
            pull_rate = round(max(0, pulled - pulled_before) / dt, 2)
        else:
            push_rate = pull_rate = 0.0
        self._last = (now, counts, pushed, pulled)
        overall = overall_of(status)
        if overall != self.overall:
            self.overall, self.since = overall, now
        health = status.get("health") or {}
        conflicts = status.get("conflicts")
        open_conflicts = None if conflicts is None else sum(int(c.get("open", 0)) for c in conflicts.values())
        outbox = status.get("outbox", {})
        return {
            "t": round(now, 3),
            "overall": overall,
            "since": self.since,
            "primary": status.get("primary", {}).get("state"),
            "local": status.get("local", {}).get("state"),
            "journal": status.get("journal", {}).get("state"),
            "circuit": status.get("circuit", {}).get("state"),
            "outbox_depth": outbox.get("depth"),
            "oldest_age_s": outbox.get("oldest_pending_age_s"),
            "sync_state": sync.get("state"),
            "sync_rate": round(push_rate + pull_rate, 2),
            "push_rate": push_rate,
            "pull_rate": pull_rate,
            "writes": {tier: round(rate, 2) for tier, rate in writes.items()},
            "reads": round(reads, 2),
            "p50_ms": p50,
            "p99_ms": p99,
            "conflicts_open": open_conflicts,
            "dead_letters": status.get("dead_letters"),
            "alerts": len(health.get("alerts") or []),
        }


def _per_bucket(cumulative: list[int]) -> list[int]:
    return [n - (cumulative[i - 1] if i else 0) for i, n in enumerate(cumulative)]


class LiveFeed:
    """See the module docstring. ``history()`` is the last ``keep_seconds`` of samples, oldest first."""

    def __init__(
        self,
        store: HybridStore,
        *,
        interval: float = 2.0,
        keep_seconds: float = 3600.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.interval = interval
        self._wall = wall
        self._sampler = Sampler()
        self._samples: deque[dict[str, Any]] = deque(maxlen=max(1, int(keep_seconds / interval)))
        self._status: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[tuple[str, Any]]]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # -- the sampler thread -----------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._unsubscribe = self.store.node.events.subscribe(self._on_event)
            self._thread = threading.Thread(target=self._run, name="hybridstore-web-live", daemon=True)
        self.tick()  # the first sample exists before anyone asks for it
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception as exc:  # the store closed under us (an app outliving it), or a bug: say so, stop
                if self.store.node.closed:
                    return
                log.exception("live feed: sampling failed: %s", exc)

    def tick(self) -> dict[str, Any]:
        """Take one sample now and send it (with the snapshot) to every stream."""
        status = self.store.status().to_dict()
        sample = self._sampler.sample(status, self.store.metrics.op_stats(), self._wall())
        with self._lock:
            self._samples.append(sample)
            self._status = status
        self._broadcast("sample", sample)
        self._broadcast("status", status)
        return sample

    def _on_event(self, event: Event) -> None:
        self._broadcast("node-event", event.to_dict())

    # -- readers ------------------------------------------------------------------------------------------------

    def history(self) -> list[dict[str, Any]]:
        self.start()
        with self._lock:
            return list(self._samples)

    def latest(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        self.start()
        with self._lock:
            return (self._samples[-1] if self._samples else None), self._status

    def _broadcast(self, kind: str, data: Any) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            with contextlib.suppress(RuntimeError):  # that loop is closed: its stream is gone
                loop.call_soon_threadsafe(_offer, queue, (kind, data))

    @contextlib.contextmanager
    def subscription(self) -> Any:
        """A queue of ``(kind, data)`` messages for one stream (on the running event loop)."""
        self.start()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=QUEUE_MAX)
        entry = (asyncio.get_running_loop(), queue)
        with self._lock:
            self._subscribers.add(entry)
        try:
            yield queue
        finally:
            with self._lock:
                self._subscribers.discard(entry)


def _offer(queue: asyncio.Queue[tuple[str, Any]], message: tuple[str, Any]) -> None:
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(message)


def format_event(kind: str, data: Any, *, event_id: int | None = None) -> bytes:
    """One server-sent event: ``event:``, optional ``id:``, and the JSON data on one line."""
    text = json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    head = f"event: {kind}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {text}\n\n".encode()


async def event_stream(feed: LiveFeed, draining: Callable[[], bool]) -> AsyncIterator[bytes]:
    """The live stream of one client (see the module docstring)."""
    sample, status = await asyncio.to_thread(feed.latest)
    yield b"retry: 2000\n\n"
    if sample is not None:
        yield format_event("sample", sample)
    if status is not None:
        yield format_event("status", status)
    counter = 0
    with feed.subscription() as queue:
        idle = 0.0
        while not draining():
            try:
                kind, data = await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                idle += 1.0
                if idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield b": keep-alive\n\n"
                continue
            idle = 0.0
            counter += 1
            try:
                yield format_event(kind, data, event_id=counter)
            except ValueError:  # not representable as JSON (a NaN): skip it rather than end the stream
                continue


def wants_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


async def respond(request: Request, feed: LiveFeed, ctx: WebContext) -> Response:
    """The live stream, or the one-shot JSON view for a client that did not ask for a stream."""
    if wants_stream(request):
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            event_stream(feed, lambda: ctx.draining), media_type="text/event-stream", headers=headers
        )
    sample, status = await ctx.run(feed.latest)
    events = [e.to_dict() for e in ctx.store.node.events.since(0)]
    return DataResponse({"sample": sample, "status": status, "events": events})


def build(ctx: WebContext, feed: LiveFeed) -> ScopedRouter:
    """``GET /events/stream`` (mounted under ``/api/v1``, ``read`` scope)."""
    routes = ScopedRouter(tags=["node"])

    @routes.get(
        "/events/stream",
        "read",
        summary="Live status samples, snapshots and node events (server-sent events with Accept: text/event-stream)",
        include_in_schema=False,  # an endless response: documented in docs/admin.md, kept out of generated tests
    )
    async def stream(request: Request) -> Response:
        return await respond(request, feed, ctx)

    return routes
