"""The WebSocket API (Autobahn): the same methods as REST, plus pushed events.

A client connects to ``ws://127.0.0.1:8280/?api_secret=...`` (or sends the
``api_secret`` header). Calls are ``{"command": "api_call", "method": M,
"kwargs": {...}, "call_id": X}`` and are answered to that client only as
``{"type": "api_call", "call_id": X, "code": <HTTP code>, "payload": <envelope>}``
(``code`` is what REST would answer, so a client can tell 404 from 400). Every event of
the node is pushed as ``{"type": "event", "seq": N, "payload": {...}}``;
``?since=N`` on the URL (or ``{"command": "resume", "since": N}``) replays the
buffered events after N first; N is a sequence id (0 or more).
Chat messages are also pushed as ``{"type": "stream_message", "seq": N,
"payload": <message>}`` (see :data:`STREAM_EVENTS`).

The handshake and every message cost one token of the rate limit of the
client's host (shared with its HTTP requests), taken before the secret is
checked, so guessing the secret is rate-limited too.
"""

from __future__ import annotations

import re

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from bitnode.boundedjson import BadJson
from bitnode.errors import BadRequest, BitnodeError, error_response
from bitnode.interface.auth import ApiGuard, RateLimiter
from bitnode.interface.dispatch import Answer, Dispatcher, parse_json_object
from bitnode.interface.rest import encode_envelope
from bitnode.main.connections import ConnectionSet, TrackedProtocol
from bitnode.main.events import Event, EventBus, check_since

MAX_MESSAGE = 1024 * 1024
#: Events also pushed as a frame of their own type (same sequence id), for clients that follow a stream:
#: a chat message stored (received, or sent and Acked) is a ``stream_message`` whose payload is the message.
STREAM_EVENTS = {"message-received": "stream_message", "message-sent": "stream_message",
                 "group-message-received": "stream_message", "group-message-sent": "stream_message"}


_DECIMAL = re.compile(r"-?[0-9]{1,18}")


def _since_from_url(text: str) -> int:
    """``?since=N`` of the handshake: decimal text of a sequence id, 0 or more (BadRequest otherwise)."""
    # Plain ASCII digits only (int() would also take " 5", "1_000" and other scripts' digits).
    if not _DECIMAL.fullmatch(text):
        # The text is not echoed: it would go back in the handshake's status line.
        raise BadRequest("since must be an event sequence id (an integer, 0 or more)")
    return check_since(int(text))


class ApiWebSocketProtocol(TrackedProtocol, WebSocketServerProtocol):
    """One connected API client."""

    log = Logger()

    def onConnect(self, request):
        """Rate-limit, then check Origin, Host and the secret, and ``?since``, before accepting."""
        factory: ApiWebSocketFactory = self.factory
        secret = (request.params.get("api_secret") or [None])[-1] or request.headers.get("api_secret")
        since = (request.params.get("since") or [None])[-1]
        try:
            factory.limiter.hit(self._client_host())
            factory.guard.check(request.headers.get("host"), request.headers.get("origin"), secret)
            self._resume_from = _since_from_url(since) if since is not None else None
        except BitnodeError as err:
            raise ConnectionDeny(err.http_code, str(err)) from None
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
            limits = self.factory.dispatcher.limits
            if len(payload) > limits.max_body_bytes:
                limits.count("body_too_large")
                raise BadRequest(f"message larger than {limits.max_body_bytes} bytes")
            try:
                message = parse_json_object(payload, "message", limits.max_json_depth)
            except BadJson as err:
                limits.count_json_error(err)
                raise
            call_id = message.get("call_id")
            self.factory.limiter.hit(self._client_host())
            command = message.get("command")
            if command == "api_call":
                self._api_call(message, call_id)
            elif command == "resume":
                if "since" not in message:
                    raise BadRequest("resume needs 'since': the sequence id of the last event seen (0 or more)")
                self._replay(check_since(message["since"]))
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
        outcome = self.factory.dispatcher.answer_by_name(method, kwargs)
        if isinstance(outcome, Answer):
            self._send_answer(outcome, call_id)
            return
        self._pending.add(outcome)

        def answer(result):
            self._pending.discard(outcome)
            self._send_answer(result, call_id)

        outcome.addCallback(answer)
        outcome.addErrback(lambda f: self.log.failure("websocket api_call failed", f))

    def _send_answer(self, answer: Answer, call_id) -> None:
        if answer.code != 499:
            self._send({"type": "api_call", "call_id": call_id, "code": answer.code, "payload": answer.envelope})

    def _client_host(self) -> str:
        """The rate limit's key: the client's host, as for HTTP requests (not the connection's port)."""
        return getattr(self.transport.getPeer(), "host", "?")

    def _replay(self, since: int) -> None:
        events, missed = self.factory.events.since(since)
        if missed:
            self._send({"type": "events_missed", "payload": {"since": since, "missed": missed}})
        for event in events:
            self._push_event(event)

    def _push_event(self, event: Event) -> None:
        self._send({"type": "event", "seq": event.seq, "payload": event.as_dict()})
        stream = STREAM_EVENTS.get(event.event_id)
        if stream is not None:
            self._send({"type": stream, "seq": event.seq, "payload": event.data})

    def _send(self, message: dict) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(encode_envelope(message), isBinary=False)


class ApiWebSocketFactory(WebSocketServerFactory):
    """Builds API client connections sharing one dispatcher, guard, limiter and event bus.

    ``connections`` holds the open ones, for the node to close when it stops.
    """

    protocol = ApiWebSocketProtocol

    def __init__(self, dispatcher: Dispatcher, guard: ApiGuard, limiter: RateLimiter, events: EventBus):
        super().__init__()
        self.dispatcher = dispatcher
        self.guard = guard
        self.limiter = limiter
        self.events = events
        self.connections = ConnectionSet()
        self.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
                                autoPingInterval=30, autoPingTimeout=30)
