"""Alert delivery to a webhook: a JSON POST per raise / resolve, retried with exponential backoff and full
jitter, from a named background thread so that the health monitor never waits on a slow receiver.

Body: ``{"event": "raised" | "resolved", "alert": {kind, severity, message, raised_at, resolved_at, …}}``.
A 2xx answer is a delivery; anything else (or no answer within ``timeout``) is retried, up to ``attempts``
times, then counted as failed and logged.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Any

from ..backoff import full_jitter
from ..config import check_webhook_url
from .alerts import Alert, AlertEvent

log = logging.getLogger("hybridstore.recovery")


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
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stop = threading.Event()
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="hybridstore-alert-webhook", daemon=True)
        self._thread.start()

    def deliver(self, event: AlertEvent, alert: Alert) -> None:
        self._queue.put({"event": event, "alert": alert.to_dict()})

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            self._send(body)

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
            if attempt < self._attempts and self._stop.wait(
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
            "last_error": self.last_error,
        }

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (bounded by ``timeout``), then stop."""
        self._queue.put(None)
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(max(0.1, deadline - time.monotonic()))
        self._client.close()
