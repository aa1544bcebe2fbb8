"""The WebSocket API (Autobahn): the same methods as REST, plus pushed events.

A client connects to ``ws://127.0.0.1:8280/?api_secret=...`` (or sends the
``api_secret`` header). Calls are ``{"command": "api_call", "method": M,
"kwargs": {...}, "call_id": X}`` and are answered to that client only as
``{"type": "api_call", "call_id": X, "code": <HTTP code>, "payload": <envelope>}``
(``code`` is what REST would answer, so a client can tell 404 from 400). Every event of
the node is pushed as ``{"type": "event", "seq": N, "payload": {...}}``;
``?since=N`` on the URL (or ``{"command": "resume", "since": N}``) replays the
buffered events after N first.
"""

from __future__ import annotations

import json

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from bitnode.errors import BadRequest, BitnodeError, error_response
from bitnode.interface.auth import ApiGuard, RateLimiter
from bitnode.interface.dispatch import Dispatcher
from bitnode.interface.rest import encode_envelope
from bitnode.main.events import Event, EventBus

MAX_MESSAGE = 1024 * 1024


class ApiWebSocketProtocol(WebSocketServerProtocol):
    """One connected API client."""

    log = Logger()

    def onConnect(self, request):
        """Check Origin, Host and the secret before accepting the connection."""
        factory: ApiWebSocketFactory = self.factory
        secret = (request.params.get("api_secret") or [None])[-1] or request.headers.get("api_secret")
        try:
            factory.guard.check(request.headers.get("host"), request.headers.get("origin"), secret)
        except BitnodeError as err:
            raise ConnectionDeny(err.http_code, str(err)) from None
        since = (request.params.get("since") or [None])[-1]
        try:
            self._resume_from = int(since) if since is not None else None
        except ValueError:
            raise ConnectionDeny(400, "since must be an event sequence id") from None
        self._pending = set()
        self._unsubscribe = None
        return None

    def onOpen(self):
        """Subscribe to events (after replaying the requested backlog)."""
        if self._resume_from is not None:
            self._replay(self._resume_from)
        self._unsubscribe = self.factory.events.subscribe(self._push_event)

    def onClose(self, wasClean, code, reason):
        """Stop pushing events and cancel this client's calls still running."""
        if getattr(self, "_unsubscribe", None):
            self._unsubscribe()
        for d in list(getattr(self, "_pending", ())):
            d.cancel()

    def onMessage(self, payload, isBinary):
        """Dispatch one JSON command; every malformed frame gets an error reply."""
        call_id = None
        try:
            if isBinary:
                raise BadRequest("binary frames are not supported; send JSON text")
            if len(payload) > MAX_MESSAGE:
                raise BadRequest(f"message larger than {MAX_MESSAGE} bytes")
            try:
                message = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as err:
                raise BadRequest(f"malformed JSON: {err}") from None
            if not isinstance(message, dict):
                raise BadRequest("a message must be a JSON object")
            call_id = message.get("call_id")
            self.factory.limiter.hit(f"ws:{self.peer}")
            command = message.get("command")
            if command == "api_call":
                self._api_call(message, call_id)
            elif command == "resume":
                since = message.get("since")
                if not isinstance(since, int) or isinstance(since, bool):
                    raise BadRequest("resume needs an integer 'since'")
                self._replay(since)
            else:
                raise BadRequest(f"unknown command {command!r}; use 'api_call' or 'resume'")
        except BitnodeError as err:
            response = error_response(err)
            self._send({"type": "api_call" if call_id is not None else "error", "call_id": call_id,
                        "code": response.http_code, "payload": response.envelope})

    def close_for_shutdown(self) -> None:
        """The node is stopping: close with 1001 "going away" (or drop a connection still in its handshake)."""
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendCloseFrame(code=1001, reasonUtf8=b"node stopping", isReply=False)
        elif self.state != WebSocketServerProtocol.STATE_CLOSING:
            self.transport.loseConnection()

    def _api_call(self, message: dict, call_id) -> None:
        method = message.get("method")
        if not isinstance(method, str) or not method:
            raise BadRequest("api_call needs 'method': the name of an API method")
        kwargs = message.get("kwargs", {})
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise BadRequest("kwargs must be a JSON object")
        d = self.factory.dispatcher.execute_by_name(method, kwargs)
        self._pending.add(d)

        def answer(result):
            self._pending.discard(d)
            if result.code != 499:
                self._send({"type": "api_call", "call_id": call_id, "code": result.code, "payload": result.envelope})

        d.addCallback(answer)
        d.addErrback(lambda f: self.log.failure("websocket api_call failed", f))

    def _replay(self, since: int) -> None:
        events, missed = self.factory.events.since(since)
        if missed:
            self._send({"type": "events_missed", "payload": {"since": since, "missed": missed}})
        for event in events:
            self._push_event(event)

    def _push_event(self, event: Event) -> None:
        self._send({"type": "event", "seq": event.seq, "payload": event.as_dict()})

    def _send(self, message: dict) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(encode_envelope(message), isBinary=False)


class ApiWebSocketFactory(WebSocketServerFactory):
    """Builds API client connections sharing one dispatcher, guard, limiter and event bus."""

    protocol = ApiWebSocketProtocol

    def __init__(self, dispatcher: Dispatcher, guard: ApiGuard, limiter: RateLimiter, events: EventBus):
        super().__init__()
        self.dispatcher = dispatcher
        self.guard = guard
        self.limiter = limiter
        self.events = events
        self.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
                                autoPingInterval=30, autoPingTimeout=30)
