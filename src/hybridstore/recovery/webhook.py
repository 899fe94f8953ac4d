"""Alert delivery to a webhook: a JSON POST per raise / resolve, retried with exponential backoff and full
jitter, from a named background worker so that the health monitor never waits on a slow receiver.

Body: ``{"event": "raised" | "resolved", "alert": {kind, severity, message, raised_at, resolved_at, …}}``.
A 2xx answer is a delivery; anything else (or no answer within ``timeout``) is retried, up to ``attempts``
times, then counted as failed and logged.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from typing import Any

from ..backoff import full_jitter
from ..config import check_webhook_url
from ..worker import Worker
from .alerts import Alert, AlertEvent

log = logging.getLogger("hybridstore.recovery")
MAX_QUEUED = 1000  # alert events waiting for the receiver (alerts are raised once: far more than enough)


class WebhookSink:
    def __init__(
        self,
        url: str,
        *,
        attempts: int = 5,
        timeout: float = 5.0,
        retry_base: float = 0.2,
        retry_cap: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        import httpx

        self.url = check_webhook_url(url)
        self._attempts = attempts
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._rng = rng or random.Random()
        self._client = httpx.Client(timeout=timeout, headers={"user-agent": "hybridstore-alerts"})
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=MAX_QUEUED)
        self._abort = threading.Event()  # closing: stop retrying
        self._idle = threading.Event()  # nothing queued or in flight
        self._idle.set()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.worker = Worker("hybridstore-alert-webhook", self._run_once, error_delay=1.0)
        self.worker.start()

    def deliver(self, event: AlertEvent, alert: Alert) -> None:
        body = {"event": event, "alert": alert.to_dict()}
        self._idle.clear()
        try:
            self._queue.put_nowait(body)
        except queue.Full:  # a receiver down for long: keep the newest, count what is dropped
            self.dropped += 1
            log.warning("alert webhook queue full (%d); dropping the oldest alert event", MAX_QUEUED)
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
            self._queue.put_nowait(body)
        self.worker.wake()

    def _run_once(self) -> float:
        """Send everything queued (each with its retries); then wait for the next `deliver`."""
        while not self._abort.is_set():
            try:
                body = self._queue.get_nowait()
            except queue.Empty:
                break
            self._send(body)
        if self._queue.empty():
            self._idle.set()
        return 3600.0

    def _send(self, body: dict[str, Any]) -> None:
        import httpx

        for attempt in range(1, self._attempts + 1):
            try:
                response = self._client.post(self.url, json=body)
                if 200 <= response.status_code < 300:
                    self.delivered += 1
                    return
                self.last_error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                self.last_error = str(exc) or type(exc).__name__
            if attempt < self._attempts and self._abort.wait(
                full_jitter(attempt, base=self._retry_base, cap=self._retry_cap, rng=self._rng)
            ):
                break  # closing: give up on this one rather than hold close() up
        self.failed += 1
        log.warning("alert webhook %s failed after %d attempt(s): %s", self.url, attempt, self.last_error)

    def stats(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "delivered": self.delivered,
            "failed": self.failed,
            "queued": self._queue.qsize(),
            "dropped": self.dropped,
            "last_error": self.last_error,
        }

    def close(self, timeout: float = 5.0) -> bool:
        """Send what is queued (bounded by ``timeout``), then stop; True when the thread ended (the HTTP client
        is closed only then)."""
        deadline = time.monotonic() + timeout
        self.worker.wake()
        self._idle.wait(timeout)
        self._abort.set()
        if not self.worker.stop(timeout=max(0.1, deadline - time.monotonic())):
            return False
        self._client.close()
        return True
