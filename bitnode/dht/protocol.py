"""The DHT RPC engine: requests, responses, timeouts, per-peer rate limits and counters.

:class:`RPCEngine` is transport-neutral: it is given a ``send(data, address)``
function and is fed received datagrams through :meth:`RPCEngine.datagram_received`.
:class:`UDPProtocol` plugs it into a real ``reactor.listenUDP`` socket; a
:class:`bitnode.dht.simnet.SimEndpoint` plugs it into the simulated network.

Every received datagram first passes a token bucket per source IP (not per
host:port: one machine gets one budget however many ports it sends from), then
one for all sources together; floods are dropped and counted before any
parsing. Then a size check, then strict parsing. A response is accepted only if
its request id is pending *and* it comes from the address the request went to;
anything else is counted as unmatched.

Unproven addresses (:mod:`bitnode.dht.tokens`): a request that neither presents
a valid token for its source IP nor comes from an address that answered one of
our requests (a round trip; we keep the token it gave us) gets an answer at most
``unverified_reply_factor`` times its own size — a NODES list loses its
farthest contacts, a VALUE that does not fit becomes an empty NODES — marked
``trunc`` and carrying a token; a STORE from such an address is not executed.
The asking engine remembers the token, sends it with later requests to that
peer, and asks once more with it when an answer came back truncated. A request
sent without a token is padded so that a normal answer fits, which spares that
extra round trip in most cases.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from bitnode.dht import messages
from bitnode.dht.limits import DHTLimits
from bitnode.dht.messages import Message, Sender
from bitnode.dht.tokens import AddressTokens, PeerTokens
from bitnode.errors import Timeout, Unavailable
from bitnode.main.ratelimit import KeyedRateLimiter

Address = tuple[str, int]
SendFn = Callable[[bytes, Address], None]
#: sends a datagram together with the :class:`Message` it encodes (a simulated network: the receiver may skip
#: parsing what it knows was made by :func:`messages.encode`)
MessageSendFn = Callable[[bytes, Message, Address], None]
#: handles a request; returns ``(response_kind, response_body)`` or None to stay silent
RequestHandler = Callable[[Message, Address], "tuple[str, dict[str, Any]] | None"]
#: told about every accepted message (requests and matched responses) to update routing; the flag says
#: whether the source address is proven (a matched response, or a request with a valid token)
MessageObserver = Callable[[Message, Address, bool], None]


@dataclass
class _Pending:
    address: Address
    request: Message
    deferred: Deferred
    timer: IDelayedCall
    retried: bool = False

    @property
    def kinds(self) -> frozenset[str]:
        return messages.RESPONSES[self.request.kind]


#: a request without a token is padded to this size: with the default reply factor (3) a full answer fits
UNVERIFIED_PAD = 1200
_PADDED_KINDS = frozenset({messages.FIND_NODE, messages.FIND_VALUE})


class RPCEngine:
    """Sends requests and matches responses; answers requests through ``handler``.

    :param clock: ``IReactorTime`` for timeouts and rate limiting.
    :param rng: source of request ids.
    :param sender: returns how we describe ourselves in every message.
    :param handler: answers incoming requests.
    :param observer: told about every accepted message.
    :param timeout: seconds before a request fails with :class:`Timeout`.
    :param limits: per-IP and total rates, the reply factor for unproven addresses, the token lifetime.
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
        limits: DHTLimits = DHTLimits(),
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._sender = sender
        self._handler = handler
        self._observer = observer
        self.timeout = timeout
        self.limits = limits
        self._per_ip = KeyedRateLimiter(clock, limits.rate_per_ip, limits.burst_per_ip)
        self._total = KeyedRateLimiter(clock, limits.rate_total, limits.burst_total, max_keys=1)
        self._stores_per_ip = KeyedRateLimiter(clock, limits.store_rate_per_ip, limits.store_burst_per_ip)
        self._tokens = AddressTokens(clock, rng, limits.token_lifetime)
        self._peer_tokens = PeerTokens()
        self._pending: dict[str, _Pending] = {}
        self._send: SendFn | None = None
        self._send_message: MessageSendFn | None = None
        self._closed = False
        self.counters: Counter[str] = Counter()

    # -- wiring -----------------------------------------------------------------

    def attach(self, send: SendFn, send_message: MessageSendFn | None = None) -> None:
        """Give the engine its way to send datagrams.

        With ``send_message`` (a simulated network), every datagram goes out through it together with the
        message it encodes, so that the receiving engine need not parse it again (see :meth:`datagram_received`).
        """
        self._send = send
        self._send_message = send_message

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def close(self) -> None:
        """Stop: fail every pending request with :class:`Unavailable`; later requests fail at once."""
        self._closed = True
        self._send = None
        self._send_message = None
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if p.timer.active():
                p.timer.cancel()
            p.deferred.errback(Unavailable("DHT node stopped"))

    def pending(self) -> int:
        """Requests sent and not yet answered nor timed out."""
        return len(self._pending)

    def stats(self) -> dict[str, int]:
        """Counters: sent, received, malformed, oversize, rate_limited (per IP), rate_limited_total, timeouts,
        unmatched, replies_truncated_unverified, stores_refused_unverified, retried_with_token, ..."""
        keys = ("sent", "received", "malformed", "oversize", "rate_limited", "rate_limited_total", "timeouts",
                "unmatched", "send_errors", "handler_errors", "requests_handled", "oversize_replies",
                "replies_truncated_unverified", "replies_dropped_unverified", "stores_refused_unverified",
                "stores_rate_limited",
                "retried_with_token")
        return {k: self.counters[k] for k in keys} | {"pending": len(self._pending),
                                                       "rate_limited_sources": len(self._per_ip),
                                                       "peer_tokens": len(self._peer_tokens)}

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
        d: Deferred = Deferred()
        msg = Message(kind=kind, request_id="", sender=self._sender(), layer=layer, body=body or {})
        try:
            self._send_request(address, msg, d)
        except (messages.MalformedMessage, Unavailable) as exc:
            return fail(exc)
        return d

    def _send_request(self, address: Address, msg: Message, d: Deferred, retried: bool = False) -> None:
        """Send ``msg`` under a fresh request id, with our token for ``address``; ``d`` gets the answer."""
        rid = messages.new_request_id(self._rng)
        while rid in self._pending:
            rid = messages.new_request_id(self._rng)
        token = self._peer_tokens.get(address)
        msg = replace(msg, request_id=rid, token=token)
        data = messages.encode(msg, pad_to=0 if token or msg.kind not in _PADDED_KINDS else UNVERIFIED_PAD)
        timer = self._clock.callLater(self.timeout, self._timed_out, rid)
        self._pending[rid] = _Pending(address, msg, d, timer, retried)
        if not self._transmit(data, address, msg):
            self._pending.pop(rid)
            timer.cancel()
            raise Unavailable(f"cannot send to {address[0]}:{address[1]}")

    def _timed_out(self, rid: str) -> None:
        pending = self._pending.pop(rid, None)
        if pending is not None:
            self.counters["timeouts"] += 1
            host, port = pending.address
            pending.deferred.errback(Timeout(f"no answer from {host}:{port} in {self.timeout:g}s"))

    def _transmit(self, data: bytes, address: Address, msg: Message) -> bool:
        if self._send is None:
            return False
        try:
            if self._send_message is not None:
                self._send_message(data, msg, address)
            else:
                self._send(data, address)
        except (OSError, ValueError, MessageLengthError) as exc:  # ValueError: Twisted's InvalidAddressError
            self.counters["send_errors"] += 1
            self._log.info("DHT send to {address} failed: {exc}", address=address, exc=exc)
            return False
        self.counters["sent"] += 1
        return True

    # -- incoming -----------------------------------------------------------------

    def datagram_received(self, data: bytes, address: Address, parsed: Message | None = None) -> None:
        """Handle one datagram from ``address``: limit, parse, dispatch. Never raises.

        ``parsed``: what ``messages.decode(data)`` gives, when the caller knows it without parsing (a
        simulated network carries each datagram's message beside its bytes: parsing every datagram again
        would be most of a large simulation's time). The limits and the size check apply all the same.
        """
        if self._closed:
            return
        self.counters["received"] += 1
        if not self._per_ip.allow(address[0]):
            self.counters["rate_limited"] += 1
            return
        if not self._total.allow(""):
            self.counters["rate_limited_total"] += 1
            return
        try:
            if parsed is None:
                msg = messages.decode(data)
            elif len(data) > messages.MAX_DATAGRAM:
                raise messages.OversizeMessage(f"datagram of {len(data)} bytes")
            else:
                msg = parsed
        except messages.OversizeMessage:
            self.counters["oversize"] += 1
            return
        except messages.MalformedMessage:
            self.counters["malformed"] += 1
            return
        if msg.is_request:
            self._handle_request(msg, address, len(data))
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
        self._peer_tokens.remember(address, msg.token, self._clock.seconds())
        if msg.truncated and msg.token and not pending.retried:
            # Cut short because we were unproven (no token, or an expired one): ask once more with the new token.
            self.counters["retried_with_token"] += 1
            try:
                self._send_request(address, pending.request, pending.deferred, retried=True)
                return
            except (messages.MalformedMessage, Unavailable):
                pass  # answer with what we have
        self._observe(msg, address, True)
        pending.deferred.callback(msg)

    def _handle_request(self, msg: Message, address: Address, size: int) -> None:
        self.counters["requests_handled"] += 1
        # Proven: a valid token for this IP, or this address answered one of our requests lately (a round trip).
        recent = self._clock.seconds() - 2 * self.limits.token_lifetime
        proven = (bool(msg.token) and self._tokens.check(address[0], msg.token)) or self._peer_tokens.answered_since(
            address, recent)
        self._observe(msg, address, proven)
        fresh_token = self._tokens.issue(address[0])
        token = "" if msg.token == fresh_token else fresh_token
        if msg.kind == messages.STORE and not proven:
            self.counters["stores_refused_unverified"] += 1
            body = {"ok": False, "code": "unverified", "reason": "ask again with the token"}
            self._reply(msg, address, messages.STORED, body, token, size, proven, truncated=True)
            return
        if msg.kind == messages.STORE and not self._stores_per_ip.allow(address[0]):
            self.counters["stores_rate_limited"] += 1
            body = {"ok": False, "code": "busy", "reason": "too many records from this address: try later"}
            self._reply(msg, address, messages.STORED, body, token, size, proven)
            return
        try:
            answer = self._handler(msg, address)
        except Exception:
            self.counters["handler_errors"] += 1
            self._log.failure("DHT request handler failed for {kind}", kind=msg.kind)
            return
        if answer is None or self._closed:
            return
        self._reply(msg, address, answer[0], answer[1], token, size, proven)

    def _reply(self, msg: Message, address: Address, kind: str, body: dict[str, Any], token: str, size: int,
               proven: bool, truncated: bool = False) -> None:
        """Answer ``msg``; to an unproven address at most ``unverified_reply_factor`` times the request size."""
        reply = Message(kind=kind, request_id=msg.request_id, sender=self._sender(), layer=msg.layer, body=body,
                        token=token, truncated=truncated)
        try:
            data, reply = messages.fit(reply)
        except messages.OversizeMessage:
            self.counters["oversize_replies"] += 1
            return
        limit = int(size * self.limits.unverified_reply_factor)
        if not proven and len(data) > limit:
            self.counters["replies_truncated_unverified"] += 1
            if kind != messages.NODES:
                reply = replace(reply, kind=messages.NODES, body={"contacts": ()})
            try:
                data, reply = messages.fit(replace(reply, truncated=True), limit)
            except messages.OversizeMessage:
                self.counters["replies_dropped_unverified"] += 1
                return
        self._transmit(data, address, reply)

    def _observe(self, msg: Message, address: Address, proven: bool) -> None:
        if self._observer is not None:
            self._observer(msg, address, proven)


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
