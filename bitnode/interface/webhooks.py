"""service_webhooks: POST every node event as JSON to a URL the user configured.

Events are delivered one at a time, in order, each retried with a growing
pause (1 s, 2 s, 4 s ...) up to ``interface/webhooks/retries`` times. The
queue is bounded; what overflows or exhausts its retries is counted and shown
in service_info, never dropped without a trace.
"""

from __future__ import annotations

import json
from collections import deque

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.client import Agent

from bitnode.errors import Conflict
from bitnode.main.events import Event
from bitnode.services.base import Service
from bitnode.services.context import NodeContext

QUEUE_LIMIT = 1000


class WebhooksService(Service):
    """Delivers node events to ``interface/webhooks/url``."""

    name = "service_webhooks"
    enabled_by_default = False
    description = "POST every node event as JSON to a configured URL, with retries"
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self._queue: deque[Event] = deque()
        self._unsubscribe = None
        self._running = False
        self._sending: defer.Deferred | None = None
        self._retry_call = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.last_error = ""

    def start(self):
        """Subscribe to events; refuses to start without a URL."""
        url = self.ctx.settings.get("interface/webhooks/url")
        if not url:
            raise Conflict("set interface/webhooks/url before starting service_webhooks")
        self._client = HTTPClient(Agent(self.ctx.reactor))
        self._running = True
        self._unsubscribe = self.ctx.events.subscribe(self._enqueue)

    def stop(self):
        """Stop delivering; events still queued are counted as dropped."""
        self._running = False
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        if self._sending is not None:
            self._sending.cancel()
        self.dropped += len(self._queue)
        self._queue.clear()

    def status(self) -> dict:
        """Delivery counters for service_info."""
        return {"url": self.ctx.settings.get("interface/webhooks/url"), "queued": len(self._queue),
                "delivered": self.delivered, "failed": self.failed, "dropped": self.dropped,
                "last_error": self.last_error}

    def _enqueue(self, event: Event) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        if self._sending is None and self._retry_call is None:
            self._send_next(attempt=0)

    def _send_next(self, attempt: int) -> None:
        self._retry_call = None
        if not self._running or not self._queue:
            return
        event = self._queue[0]
        url = self.ctx.settings.get("interface/webhooks/url")
        body = json.dumps(event.as_dict(), default=str).encode("utf-8")
        d = self._client.post(url, data=body, headers={b"Content-Type": [b"application/json"]})
        d.addCallback(self._check_response)
        d.addTimeout(self.ctx.settings.get("interface/webhooks/timeout"), self.ctx.clock)
        self._sending = d
        d.addCallbacks(lambda _: self._sent(), lambda f: self._failed(f, attempt))

    @staticmethod
    def _check_response(response):
        d = response.content()  # read the body so the connection can be reused
        if not 200 <= response.code < 300:
            raise RuntimeError(f"webhook answered HTTP {response.code}")
        return d

    def _sent(self) -> None:
        self._sending = None
        if self._queue:
            self._queue.popleft()
        self.delivered += 1
        self._send_next(attempt=0)

    def _failed(self, failure, attempt: int) -> None:
        self._sending = None
        if not self._running:
            return
        self.last_error = failure.getErrorMessage() or failure.type.__name__
        if attempt >= self.ctx.settings.get("interface/webhooks/retries"):
            self.failed += 1
            self.log.warn("webhook gave up on event {seq}: {err}", seq=self._queue[0].seq, err=self.last_error)
            self._queue.popleft()
            self._send_next(attempt=0)
            return
        self._retry_call = self.ctx.clock.callLater(2.0 ** attempt, self._send_next, attempt + 1)
