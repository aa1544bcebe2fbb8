"""The DHT RPC engine: requests, responses, timeouts, per-peer rate limits and counters.

:class:`RPCEngine` is transport-neutral: it is given a ``send(data, address)``
function and is fed received datagrams through :meth:`RPCEngine.datagram_received`.
:class:`UDPProtocol` plugs it into a real ``reactor.listenUDP`` socket; a
:class:`bitnode.dht.simnet.SimEndpoint` plugs it into the simulated network.

Every received datagram first passes a per-peer token bucket (floods are dropped
and counted before any parsing), then a size check, then strict parsing. A
response is accepted only if its request id is pending *and* it comes from the
address the request went to; anything else is counted as unmatched.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from bitnode.dht import messages
from bitnode.dht.messages import Message, Sender
from bitnode.errors import Timeout, Unavailable

Address = tuple[str, int]
SendFn = Callable[[bytes, Address], None]
#: handles a request; returns ``(response_kind, response_body)`` or None to stay silent
RequestHandler = Callable[[Message, Address], "tuple[str, dict[str, Any]] | None"]
#: told about every accepted message (requests and matched responses) to update routing
MessageObserver = Callable[[Message, Address], None]


@dataclass
class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


@dataclass
class PeerRateLimiter:
    """One token bucket per source address, at most ``max_peers`` of them remembered."""

    rate: float
    burst: float
    max_peers: int = 4096
    buckets: dict[Address, TokenBucket] = field(default_factory=dict)

    def allow(self, address: Address, now: float) -> bool:
        """True if a datagram from ``address`` may be processed now."""
        bucket = self.buckets.get(address)
        if bucket is None:
            if len(self.buckets) >= self.max_peers:
                self._forget_idle(now)
            bucket = self.buckets[address] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.allow(now)

    def _forget_idle(self, now: float) -> None:
        # A bucket that has refilled completely carries no information: forget those first.
        full_after = self.burst / self.rate if self.rate > 0 else 0.0
        idle = [a for a, b in self.buckets.items() if now - b.stamp >= full_after]
        for a in idle or list(self.buckets)[: len(self.buckets) // 2]:
            del self.buckets[a]


@dataclass
class _Pending:
    address: Address
    kinds: frozenset[str]
    deferred: Deferred
    timer: IDelayedCall


class RPCEngine:
    """Sends requests and matches responses; answers requests through ``handler``.

    :param clock: ``IReactorTime`` for timeouts and rate limiting.
    :param rng: source of request ids.
    :param sender: returns how we describe ourselves in every message.
    :param handler: answers incoming requests.
    :param observer: told about every accepted message.
    :param timeout: seconds before a request fails with :class:`Timeout`.
    :param rate, burst: per-peer token bucket for incoming datagrams.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        rng: random.Random,
        sender: Callable[[], Sender],
        handler: RequestHandler,
        observer: MessageObserver | None = None,
        timeout: float = 2.0,
        rate: float = 50.0,
        burst: float = 100.0,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._sender = sender
        self._handler = handler
        self._observer = observer
        self.timeout = timeout
        self._limiter = PeerRateLimiter(rate, burst)
        self._pending: dict[str, _Pending] = {}
        self._send: SendFn | None = None
        self._closed = False
        self.counters: Counter[str] = Counter()

    # -- wiring -----------------------------------------------------------------

    def attach(self, send: SendFn) -> None:
        """Give the engine its way to send datagrams."""
        self._send = send

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def close(self) -> None:
        """Stop: fail every pending request with :class:`Unavailable`; later requests fail at once."""
        self._closed = True
        self._send = None
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if p.timer.active():
                p.timer.cancel()
            p.deferred.errback(Unavailable("DHT node stopped"))

    def stats(self) -> dict[str, int]:
        """Counters: sent, received, malformed, oversize, rate_limited, timeouts, unmatched, ..."""
        keys = ("sent", "received", "malformed", "oversize", "rate_limited", "timeouts", "unmatched",
                "send_errors", "handler_errors", "requests_handled", "oversize_replies")
        return {k: self.counters[k] for k in keys} | {"pending": len(self._pending)}

    # -- outgoing -----------------------------------------------------------------

    def request(self, address: Address, kind: str, body: dict[str, Any] | None = None, layer: int = 0) -> Deferred:
        """Send a request; the Deferred fires with the response :class:`Message`.

        Fails with :class:`Timeout` after ``timeout`` seconds, or
        :class:`Unavailable` if the engine is closed or the send fails.
        """
        if self._closed or self._send is None:
            return fail(Unavailable("DHT node is not running"))
        if kind not in messages.RESPONSES:
            return fail(messages.MalformedMessage(f"{kind!r} is not a request type"))
        rid = messages.new_request_id(self._rng)
        while rid in self._pending:
            rid = messages.new_request_id(self._rng)
        msg = Message(kind=kind, request_id=rid, sender=self._sender(), layer=layer, body=body or {})
        try:
            data = messages.encode(msg)
        except messages.MalformedMessage as exc:
            return fail(exc)
        d: Deferred = Deferred()
        timer = self._clock.callLater(self.timeout, self._timed_out, rid)
        self._pending[rid] = _Pending(address, messages.RESPONSES[kind], d, timer)
        if not self._transmit(data, address):
            self._pending.pop(rid)
            timer.cancel()
            return fail(Unavailable(f"cannot send to {address[0]}:{address[1]}"))
        return d

    def _timed_out(self, rid: str) -> None:
        pending = self._pending.pop(rid, None)
        if pending is not None:
            self.counters["timeouts"] += 1
            host, port = pending.address
            pending.deferred.errback(Timeout(f"no answer from {host}:{port} in {self.timeout:g}s"))

    def _transmit(self, data: bytes, address: Address) -> bool:
        if self._send is None:
            return False
        try:
            self._send(data, address)
        except (OSError, ValueError, MessageLengthError) as exc:  # ValueError: Twisted's InvalidAddressError
            self.counters["send_errors"] += 1
            self._log.info("DHT send to {address} failed: {exc}", address=address, exc=exc)
            return False
        self.counters["sent"] += 1
        return True

    # -- incoming -----------------------------------------------------------------

    def datagram_received(self, data: bytes, address: Address) -> None:
        """Handle one datagram from ``address``: limit, parse, dispatch. Never raises."""
        if self._closed:
            return
        self.counters["received"] += 1
        if not self._limiter.allow(address, self._clock.seconds()):
            self.counters["rate_limited"] += 1
            return
        try:
            msg = messages.decode(data)
        except messages.OversizeMessage:
            self.counters["oversize"] += 1
            return
        except messages.MalformedMessage:
            self.counters["malformed"] += 1
            return
        if msg.is_request:
            self._handle_request(msg, address)
        else:
            self._handle_response(msg, address)

    def _handle_response(self, msg: Message, address: Address) -> None:
        pending = self._pending.get(msg.request_id)
        if pending is None or pending.address != address or msg.kind not in pending.kinds:
            self.counters["unmatched"] += 1
            return
        del self._pending[msg.request_id]
        if pending.timer.active():
            pending.timer.cancel()
        self._observe(msg, address)
        pending.deferred.callback(msg)

    def _handle_request(self, msg: Message, address: Address) -> None:
        self.counters["requests_handled"] += 1
        self._observe(msg, address)
        try:
            answer = self._handler(msg, address)
        except Exception:
            self.counters["handler_errors"] += 1
            self._log.failure("DHT request handler failed for {kind}", kind=msg.kind)
            return
        if answer is None or self._closed:
            return
        kind, body = answer
        reply = Message(kind=kind, request_id=msg.request_id, sender=self._sender(), layer=msg.layer, body=body)
        try:
            data = messages.encode_fitting(reply)
        except messages.OversizeMessage:
            self.counters["oversize_replies"] += 1
            return
        self._transmit(data, address)

    def _observe(self, msg: Message, address: Address) -> None:
        if self._observer is not None:
            self._observer(msg, address)


class UDPProtocol(DatagramProtocol):
    """Connects an :class:`RPCEngine` to a real UDP socket."""

    noisy = False  # no "Starting protocol" log lines per node

    def __init__(self, engine: RPCEngine) -> None:
        self.engine = engine

    def startProtocol(self) -> None:
        """Hand the socket's ``write`` to the engine."""
        self.engine.attach(self.transport.write)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Feed the engine."""
        self.engine.datagram_received(datagram, (addr[0], addr[1]))
