"""The WebSocket API (Autobahn): the same methods as REST, plus pushed events.

A client authenticates in one of three ways: the ``api_secret`` header of the
handshake (preferred), a first message ``{"command": "auth", "api_secret":
"..."}`` (for clients that cannot set headers; it must come within
``interface/api/ws-auth-timeout`` seconds, and nothing else is answered or
pushed before it), or ``ws://127.0.0.1:8280/?api_secret=...`` (kept for
BitDust's clients; the URL is redacted from every log line). Calls are
``{"command": "api_call", "method": M, "kwargs": {...}, "call_id": X}`` and are
answered to that client only as ``{"type": "api_call", "call_id": X, "code":
<HTTP code>, "payload": <envelope>}`` (``code`` is what REST would answer, so a
client can tell 404 from 400). Every event of the node is pushed as
``{"type": "event", "seq": N, "payload": {...}}``; ``?since=N`` on the URL (or
``{"command": "resume", "since": N}``) replays the buffered events after N
first; N is a sequence id (0 or more). Chat messages are also pushed as
``{"type": "stream_message", "seq": N, "payload": <message>}`` (see
:data:`STREAM_EVENTS`).

The handshake and every message cost one token of the rate limit of the
client's host (shared with its HTTP requests), taken before the secret is
checked, so guessing the secret is rate-limited too; a wrong secret, or any
other command before authenticating, closes the connection. Messages are at
most ``interface/api/max-body-bytes`` (autobahn refuses bigger frames before
reading them) and the handshake at most :data:`MAX_HANDSHAKE_BYTES`.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny

from bitnode.boundedjson import BadJson
from bitnode.errors import BadRequest, BitnodeError, TooManyRequests, Unauthorized, error_response
from bitnode.interface.auth import ApiGuard, RateLimiter
from bitnode.interface.dispatch import Answer, Dispatcher, parse_json_object
from bitnode.interface.rest import encode_envelope
from bitnode.main.connections import ConnectionSet, TrackedProtocol
from bitnode.main.events import Event, EventBus, check_since
from bitnode.main.logs import RedactingLogger

#: Largest opening handshake (request line and headers), as twisted.web allows for HTTP.
MAX_HANDSHAKE_BYTES = 16 * 1024
#: Close code for a client that did not authenticate (or failed to): "policy violation".
CLOSE_UNAUTHENTICATED = 1008
#: Events also pushed as a frame of their own type (same sequence id), for clients that follow a stream:
#: a chat message stored (received, or sent and Acked) is a ``stream_message`` whose payload is the message.
STREAM_EVENTS = {"message-received": "stream_message", "message-sent": "stream_message",
                 "group-message-received": "stream_message", "group-message-sent": "stream_message"}

_AUTH_FIRST = ('authenticate first: send {"command": "auth", "api_secret": "..."} '
               "(or connect with the api_secret header)")


_DECIMAL = re.compile(r"-?[0-9]{1,18}")


def _since_from_url(text: str) -> int:
    """``?since=N`` of the handshake: decimal text of a sequence id, 0 or more (BadRequest otherwise)."""
    # Plain ASCII digits only (int() would also take " 5", "1_000" and other scripts' digits).
    if not _DECIMAL.fullmatch(text):
        # The text is not echoed: it would go back in the handshake's status line.
        raise BadRequest("since must be an event sequence id (an integer, 0 or more)")
    return check_since(int(text))


class ApiWebSocketProtocol(TrackedProtocol, WebSocketServerProtocol):
    """One connected API client (its ``log`` is the factory's redacting logger)."""

    authenticated = False
    _auth_timer = None
    _unsubscribe = None
    _resume_from: int | None = None

    def _dataReceived(self, data: bytes) -> None:
        # autobahn buffers the handshake until its blank line, without a limit of its own.
        if self.state == WebSocketServerProtocol.STATE_CONNECTING and len(self.data) + len(data) > MAX_HANDSHAKE_BYTES:
            self.factory.dispatcher.limits.count("ws_handshakes_refused")
            self.transport.abortConnection()
            return
        super()._dataReceived(data)

    def onConnect(self, request):
        """Rate-limit, then check Origin, Host, the secret if one is given, and ``?since``, before accepting."""
        factory: ApiWebSocketFactory = self.factory
        limits = factory.dispatcher.limits
        headers = request.headers
        secret = (request.params.get("api_secret") or [None])[-1] or headers.get("api_secret") \
            or headers.get("api-secret")
        since = (request.params.get("since") or [None])[-1]
        try:
            factory.limiter.hit(self._client_host())
            factory.guard.check_local(headers.get("host"), headers.get("origin"))
            if secret is not None:
                factory.guard.check_secret(secret)
            self._resume_from = _since_from_url(since) if since is not None else None
        except BitnodeError as err:
            limits.count("ws_handshakes_refused")
            if isinstance(err, TooManyRequests):
                limits.count("rate_limited")
            raise ConnectionDeny(err.http_code, str(err)) from None
        self.authenticated = secret is not None
        self._pending = set()
        # Frames over the limit are refused by autobahn from their header, before their payload is read.
        self.maxMessagePayloadSize = self.maxFramePayloadSize = limits.max_body_bytes
        return None

    def onOpen(self):
        """Start the session, or wait (a bounded time) for the first message to authenticate."""
        if self.authenticated:
            self._start_session()
        else:
            self._auth_timer = self.factory.clock.callLater(self.factory.dispatcher.limits.ws_auth_timeout,
                                                            self._auth_timed_out)

    def onClose(self, wasClean, code, reason):
        """Stop pushing events and cancel this client's calls still running."""
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for d in list(getattr(self, "_pending", ())):
            d.cancel()
        if getattr(self, "wasMaxFramePayloadSizeExceeded", False) or \
                getattr(self, "wasMaxMessagePayloadSizeExceeded", False):  # autobahn refused it from the frame header
            self.factory.dispatcher.limits.count("body_too_large")

    def onMessage(self, payload, isBinary):
        """Dispatch one JSON command; every malformed frame gets an error reply."""
        call_id = None
        limits = self.factory.dispatcher.limits
        try:
            if isBinary:
                raise BadRequest("binary frames are not supported; send JSON text")
            if len(payload) > limits.max_body_bytes:
                limits.count("body_too_large")
                raise BadRequest(f"message larger than {limits.max_body_bytes} bytes")
            try:
                message = parse_json_object(payload, "message", limits.max_json_depth)
            except BadJson as err:
                limits.count_json_error(err)
                raise
            call_id = message.get("call_id")
            try:
                self.factory.limiter.hit(self._client_host())
            except TooManyRequests:
                limits.count("rate_limited")
                raise
            command = message.get("command")
            if command == "auth":
                self._authenticate(message, call_id)
            elif not self.authenticated:
                raise Unauthorized(_AUTH_FIRST)
            elif command == "api_call":
                self._api_call(message, call_id)
            elif command == "resume":
                if "since" not in message:
                    raise BadRequest("resume needs 'since': the sequence id of the last event seen (0 or more)")
                self._replay(check_since(message["since"]))
            else:
                raise BadRequest(f"unknown command {command!r}; use 'api_call', 'resume' or 'auth'")
        except BitnodeError as err:
            response = error_response(err)
            self._send({"type": "api_call" if call_id is not None else "error", "call_id": call_id,
                        "code": response.http_code, "payload": response.envelope})
            if isinstance(err, Unauthorized):
                self._close_unauthenticated()

    def _authenticate(self, message: dict, call_id) -> None:
        self.factory.guard.check_secret(message.get("api_secret"))  # Unauthorized closes the connection
        first = not self.authenticated
        self.authenticated = True
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._send({"type": "auth", "call_id": call_id, "code": 200,
                    "payload": {"status": "OK", "result": {"authenticated": True}}})
        if first:
            self._start_session()

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        self.factory.dispatcher.limits.count("ws_auth_timeouts")
        response = error_response(Unauthorized(f"not authenticated within "
                                               f"{self.factory.dispatcher.limits.ws_auth_timeout:g} s; "
                                               + _AUTH_FIRST))
        self._send({"type": "error", "call_id": None, "code": response.http_code, "payload": response.envelope})
        self._close_unauthenticated()

    def _close_unauthenticated(self) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            # sendClose takes application codes only (1000, 3000-4999); 1008 is the protocol's "policy violation".
            self.sendCloseFrame(code=CLOSE_UNAUTHENTICATED, reasonUtf8=b"not authenticated", isReply=False)

    def _start_session(self) -> None:
        """Replay the requested backlog, then subscribe to events."""
        if self._resume_from is not None:
            self._replay(self._resume_from)
        self._unsubscribe = self.factory.events.subscribe(self._push_event)

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

    def sendData(self, data, sync=False, chopsize=None):
        """autobahn's plain write path without its per-write debug line while debug is off.

        autobahn formats that line's arguments (``hltype``/``hlval``: a
        qualified name looked up and coloured with click) before the logger
        drops it; that costs more than the write. Queued, chopped or
        octet-logged sends, and any send while debug is on, go through autobahn.
        """
        if sync or chopsize or self.send_queue or self.logOctets or self.factory.debug_enabled():
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state in (WebSocketServerProtocol.STATE_CONNECTING, WebSocketServerProtocol.STATE_PROXY_CONNECTING):
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)


class ApiWebSocketFactory(WebSocketServerFactory):
    """Builds API client connections sharing one dispatcher, guard, limiter, event bus and logger.

    ``connections`` holds the open ones, for the node to close when it stops.
    ``debug_enabled`` says whether debug events are wanted (``logs/debug-level``)
    and ``secrets`` which secrets to redact besides ``api_secret=...``: every
    connection logs through one :class:`~bitnode.main.logs.RedactingLogger`
    (autobahn logs handshake URLs and headers, refused ones included).
    """

    protocol = ApiWebSocketProtocol

    def __init__(self, dispatcher: Dispatcher, guard: ApiGuard, limiter: RateLimiter, events: EventBus, clock,
                 debug_enabled: Callable[[], bool] = lambda: False, secrets: Callable[[], Iterable[str]] = tuple):
        super().__init__()
        self.dispatcher = dispatcher
        self.guard = guard
        self.limiter = limiter
        self.events = events
        self.clock = clock
        self.debug_enabled = debug_enabled
        self.connections = ConnectionSet()
        self.protocol_log = RedactingLogger(namespace=f"{__name__}.ApiWebSocketProtocol",
                                            debug_enabled=debug_enabled, secrets=secrets)
        self.log = RedactingLogger(namespace=f"{__name__}.ApiWebSocketFactory", source=self,
                                   debug_enabled=debug_enabled, secrets=secrets)
        limit = dispatcher.limits.max_body_bytes
        self.setProtocolOptions(maxMessagePayloadSize=limit, maxFramePayloadSize=limit,
                                autoPingInterval=30, autoPingTimeout=30)

    def buildProtocol(self, addr):
        """A protocol that logs through the redacting logger."""
        protocol = super().buildProtocol(addr)
        protocol.log = self.protocol_log
        return protocol
