"""A router's side of the relay (proxy) transport: other nodes' packets, passed on unread and unchanged.

A node that cannot accept connections (behind NAT) keeps one connection open
to a router and publishes the router's address as its contact
(``proxy://host:port``).  The router's transport hands :class:`Relay` every
frame addressed to somebody else (the :class:`~bitnode.transport.tcp.RelayHook`):

- a frame *for* a routed node goes down that node's connection ("in");
- a frame *from* a routed node, whose signature checks out with that node's
  key (nobody else may send in its name), goes on to its recipient ("out"):
  down another routed node's connection, back up the connection the
  recipient last sent on (a verified reply path), or to the first address
  of the recipient's identity (``find_addresses``; when none answers, its
  identity is fetched again, at most once per ``REFRESH_INTERVAL``);
- anything else is none of our business and is dropped as
  ``wrong_recipient``: a router is no open relay.

Frames are passed on byte for byte: a router never decrypts, re-signs or
changes a packet, so the receiver checks the sender's signature as always,
and a router that tampers is caught there.  A sender the router knows a key
for is checked here too (a forgery in a known name costs the routed node
nothing), and only such a verified sender gets a reply path.

What a route may cost is bounded (:class:`RelayLimits`): ``max_routes``
routed nodes (``max_routes_per_ip`` from one address); ``max_queued`` bytes waiting for one route (frames held back
by its bandwidth plus what its connection has not written yet) and
``max_queued_total`` over all routes; each direction of a route is shaped to
``bandwidth`` bytes per second (0: not shaped).  A frame that would pass a
queue limit is refused by its header, before its payload is read (one frame
always fits an empty queue).  A route whose connection is lost is kept
``route_grace`` seconds for the node to come back: only its route request
(a fresh packet, replay-checked by the gateway) binds a route to a
connection, so a replayed packet of a routed node cannot pull its traffic
elsewhere.  Refusals are counted by reason (``refused``) and per route
(``dropped``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from bitnode.errors import BitnodeError, TooManyRequests, Unavailable
from bitnode.transport.packet import BadPacket, PacketHead, Verifier
from bitnode.transport.reintroduction import REFRESH_INTERVAL
from bitnode.transport.tcp import Address, PacketConnection, TCPTransport

MiB = 1024 * 1024
#: Ways a frame goes through a router: towards the routed node, or from it.
IN, OUT = "in", "out"


@dataclass(frozen=True)
class RelayLimits:
    """What the routes of one router may cost (every field is a setting of service_proxy_server)."""

    max_routes: int = 100
    max_routes_per_ip: int = 10  # routed nodes whose connections come from one IP (0: no limit)
    max_queued: int = 64 * MiB
    max_queued_total: int = 256 * MiB
    bandwidth: int = 0  # bytes per second, each way, per route (0: no shaping)
    route_grace: float = 60.0
    reply_paths: int = 10_000


class RelayRefused(BadPacket):
    """A frame the relay will not pass on; ``why`` names the relay's own counter."""

    reason = "relay_refused"

    def __init__(self, why: str, text: str) -> None:
        super().__init__(text)
        self.why = why


class _Frame:
    __slots__ = ("head", "body", "remote_id", "size")

    def __init__(self, head: bytes, body: bytes, remote_id: str) -> None:
        self.head = head
        self.body = body
        self.remote_id = remote_id
        self.size = len(head) + len(body)


class _Way:
    """One direction of a route: frames waiting (for bandwidth or a destination) and a token bucket."""

    def __init__(self, clock: IReactorTime, bandwidth: int) -> None:
        self.clock = clock
        self.bandwidth = bandwidth
        self.queue: deque[_Frame] = deque()
        self.queued = 0
        self.tokens = float(bandwidth)
        self.at = clock.seconds()
        self.pumping = False
        self.packets = 0
        self.bytes = 0

    def delay(self, size: int) -> float:
        """Seconds to wait before ``size`` bytes may go (0: now, and the bytes are taken from the bucket)."""
        if not self.bandwidth:
            return 0.0
        now = self.clock.seconds()
        self.tokens = min(float(self.bandwidth), self.tokens + (now - self.at) * self.bandwidth)
        self.at = now
        if self.tokens < 0:
            return -self.tokens / self.bandwidth
        self.tokens -= size  # may go below zero: a frame larger than a second's worth waits after, not before
        return 0.0


class Route:
    """One routed node: the connection it keeps to us, and what went each way."""

    def __init__(self, global_id: str, conn: PacketConnection, verifier: Optional[Verifier],
                 clock: IReactorTime, bandwidth: int) -> None:
        self.global_id = global_id
        self.conn: Optional[PacketConnection] = conn
        self.host = conn.address[0]  # where the node connects from (per-IP limit)
        self.verifier = verifier
        self.since = clock.seconds()
        self.lost_at: Optional[float] = None
        self.inbound = _Way(clock, bandwidth)
        self.outbound = _Way(clock, bandwidth)
        self.dropped: Counter[str] = Counter()
        self.expiry: Any = None

    def connection(self) -> Optional[PacketConnection]:
        """Its connection while open."""
        conn = self.conn
        return conn if conn is not None and conn.is_usable() else None

    def info(self) -> dict:
        """JSON-safe row for ``network_status(proxy=True)``."""
        conn = self.connection()
        return {
            "global_id": self.global_id,
            "connected": conn is not None,
            "address": f"{conn.address[0]}:{conn.address[1]}" if conn is not None else None,
            "since": self.since,
            "packets_in": self.inbound.packets, "bytes_in": self.inbound.bytes,
            "packets_out": self.outbound.packets, "bytes_out": self.outbound.bytes,
            "queued_bytes": self.inbound.queued + self.outbound.queued + (conn.unsent_bytes() if conn else 0),
            "dropped": dict(self.dropped),
        }


class Relay:
    """Forwards frames to and from the nodes routed through this one; see the module docstring.

    :param clock: time source (shaping, route grace).
    :param transport: the router's TCP transport; the relay installs itself as its ``relay``.
    :param resolve_verifier: ``global_id -> Verifier | None`` (the identity cache's keys).
    :param find_addresses: ``(global_id, refresh) -> Deferred[list[Address]]``: where a recipient
        that is not routed here can be reached (its identity's contacts; ``refresh``: fetched again from
        its identity servers, when every cached address failed).
    :param own_addresses: ``() -> set[Address]``: our own listening addresses (never dialled:
        a stale contact naming us must not loop a frame back in).
    :param limits: :class:`RelayLimits`.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, transport: TCPTransport, resolve_verifier: Callable[[str], Any],
                 find_addresses: Callable[[str], Deferred], own_addresses: Callable[[], set],
                 limits: RelayLimits = RelayLimits()) -> None:
        self.clock = clock
        self.transport = transport
        self.limits = limits
        self._resolve_verifier = resolve_verifier
        self._find_addresses = find_addresses
        self._own_addresses = own_addresses
        self._routes: dict[str, Route] = {}
        self._reply_paths: OrderedDict[str, Address] = OrderedDict()
        self._refreshed: OrderedDict[str, float] = OrderedDict()  # recipient -> when its identity was refetched
        self.contacts_refreshed = 0
        self.queued_total = 0
        self.refused: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()  # routes added / rebound / removed / expired
        self.totals: Counter[str] = Counter()  # packets and bytes each way, over every route ever
        self._closed = False
        transport.relay = self
        transport.lost_listeners.append(self._connection_lost)

    def close(self) -> None:
        """Stop routing: detach from the transport and forget every route and waiting frame."""
        self._closed = True
        if self.transport.relay is self:
            self.transport.relay = None
        if self._connection_lost in self.transport.lost_listeners:
            self.transport.lost_listeners.remove(self._connection_lost)
        for global_id in list(self._routes):
            self.remove_route(global_id)

    # -- routes ----------------------------------------------------------------

    def add_route(self, global_id: str, conn: PacketConnection) -> Route:
        """Route ``global_id`` over ``conn`` (again, if it was routed: the route moves to ``conn``).

        ``TooManyRequests`` when ``max_routes`` nodes are routed already.
        """
        route = self._routes.get(global_id)
        if route is not None:
            self._bind(route, conn)
            return route
        if len(self._routes) >= self.limits.max_routes:
            self.refused["too_many_routes"] += 1
            raise TooManyRequests(f"this router routes {len(self._routes)} nodes, its limit")
        per_ip = self.limits.max_routes_per_ip
        if per_ip and self._routes_from(conn.address[0]) >= per_ip:
            # one address cannot take every route with made-up identities
            self.refused["too_many_routes_per_ip"] += 1
            raise TooManyRequests(f"this router routes {per_ip} nodes from {conn.address[0]} already, its limit")
        route = self._routes[global_id] = Route(global_id, conn, self._resolve_verifier(global_id), self.clock,
                                                self.limits.bandwidth)
        self.counts["added"] += 1
        return route

    def _routes_from(self, host: str) -> int:
        """Routes whose connection (or, while it is lost, last connection) comes from ``host``."""
        return sum(1 for route in self._routes.values() if route.host == host)

    def remove_route(self, global_id: str, why: str = "removed") -> None:
        """Stop routing ``global_id``; frames waiting for it are dropped."""
        route = self._routes.pop(global_id, None)
        if route is None:
            return
        self.counts[why] += 1
        if route.expiry is not None and route.expiry.active():
            route.expiry.cancel()
        for way in (route.inbound, route.outbound):
            while way.queue:
                self._done(route, way, way.queue.popleft(), "route_gone")

    def route(self, global_id: str) -> Optional[Route]:
        """The route of ``global_id``, if it is routed here."""
        return self._routes.get(global_id)

    def routed(self) -> list[str]:
        """Global ids routed here."""
        return list(self._routes)

    def connection_of(self, global_id: str) -> Optional[Address]:
        """The open connection of a node routed here (our own packets to it go there)."""
        route = self._routes.get(global_id)
        conn = route.connection() if route is not None else None
        return conn.address if conn is not None else None

    def _bind(self, route: Route, conn: PacketConnection) -> None:
        if route.conn is conn:
            return
        route.conn = conn
        route.host = conn.address[0]
        route.lost_at = None
        if route.expiry is not None and route.expiry.active():
            route.expiry.cancel()
        route.expiry = None
        self.counts["rebound"] += 1
        self._pump(route, route.inbound, IN)  # frames that waited for it

    def _connection_lost(self, conn: PacketConnection) -> None:
        for route in self._routes.values():
            if route.conn is conn:
                route.conn = None
                route.lost_at = self.clock.seconds()
                route.expiry = self.clock.callLater(self.limits.route_grace, self._expire, route)

    def _expire(self, route: Route) -> None:
        route.expiry = None
        if route.conn is None and self._routes.get(route.global_id) is route:
            self.remove_route(route.global_id, "expired")

    # -- the transport's questions ------------------------------------------------

    def admit(self, conn: PacketConnection, head: PacketHead, body_length: int) -> bool:
        """Whether to keep and forward a frame for someone else (see :class:`~bitnode.transport.tcp.RelayHook`)."""
        if self._closed:
            return False
        source = self._routes.get(head.creator_id)
        target = self._routes.get(head.remote_id)
        if source is None and target is None:
            self.refused["not_routed"] += 1
            return False
        size = len(head.signed) + len(head.signature) + body_length
        if source is not None:
            # from any connection (a replay of it is refused by its recipient); it moves the route only
            # with a route request
            self._verify(head, source.verifier, source)
            way, route = source.outbound, source
        else:
            self._verify_stranger(head, conn)
            way, route = target.inbound, target
            if route.connection() is None and route.lost_at is None:
                self._refuse(route, "route_offline", f"{route.global_id} is not connected")
        waiting = way.queued
        if way is route.inbound:
            conn_to = route.connection()
            waiting += conn_to.unsent_bytes() if conn_to is not None else 0
        if waiting and waiting + size > self.limits.max_queued:
            self._refuse(route, "queue_full", f"{waiting} bytes wait for {route.global_id} already")
        if self.queued_total and self.queued_total + size > self.limits.max_queued_total:
            self._refuse(route, "queue_full", f"{self.queued_total} bytes wait at this router already")
        return True

    def forward(self, conn: PacketConnection, head_bytes: bytes, head: PacketHead, body: bytes) -> None:
        """Queue a frame ``admit`` accepted, and pass on what its route's bandwidth allows now."""
        source = self._routes.get(head.creator_id)
        target = self._routes.get(head.remote_id)
        if source is not None:
            route, way, direction = source, source.outbound, OUT
        elif target is not None:
            route, way, direction = target, target.inbound, IN
        else:  # the route went while the payload came in
            self.refused["route_gone"] += 1
            return
        frame = _Frame(head_bytes, body, head.remote_id)
        way.queue.append(frame)
        way.queued += frame.size
        self.queued_total += frame.size
        self._pump(route, way, direction)

    # -- passing frames on ------------------------------------------------------------

    def _pump(self, route: Route, way: _Way, direction: str) -> None:
        if way.pumping or not way.queue or self._closed:
            return
        way.pumping = True
        d = Deferred.fromCoroutine(self._drain(route, way, direction))
        d.addErrback(lambda f: self.log.failure("relay of {who} failed", f, who=route.global_id))

    async def _drain(self, route: Route, way: _Way, direction: str) -> None:
        try:
            while way.queue and not self._closed and self._routes.get(route.global_id) is route:
                frame = way.queue[0]
                delay = way.delay(frame.size)
                if delay:
                    await deferLater(self.clock, delay, lambda: None)
                    continue
                if direction == IN and route.connection() is None:
                    return  # waits (within the grace) for the node to come back; _bind pumps again
                way.queue.popleft()
                try:
                    if direction == IN:
                        self._write(route.connection(), frame)
                    else:
                        await self._deliver_out(frame)
                except BitnodeError as err:
                    self._done(route, way, frame, "unreachable")
                    self.log.debug("cannot pass a frame on to {who}: {err}", who=frame.remote_id, err=err)
                    continue
                self._done(route, way, frame, None)
        finally:
            way.pumping = False

    async def _deliver_out(self, frame: _Frame) -> None:
        conn = self._connection_for(frame.remote_id)
        if conn is not None:
            self._write(conn, frame)
            return
        errors: list[str] = []
        if await self._dial(frame, False, errors):
            return
        if self._may_refresh(frame.remote_id):
            # The cached identity may be stale: a node behind a real NAT publishes the NAT's address
            # (from STUN) until a router's probe fails, then its router; we may hold the first one.
            self.contacts_refreshed += 1
            if await self._dial(frame, True, errors):
                return
        raise Unavailable("; ".join(errors))

    async def _dial(self, frame: _Frame, refresh: bool, errors: list[str]) -> bool:
        """Write ``frame`` on a connection to the first address of its recipient that answers."""
        own = self._own_addresses()
        addresses = [a for a in await self._find_addresses(frame.remote_id, refresh) if tuple(a) not in own]
        if not addresses:
            errors.append(f"no address of {frame.remote_id} but this router's own")
            return False
        for address in addresses:
            try:
                conn = await self.transport.connect(address)
            except BitnodeError as err:
                errors.append(str(err))
                continue
            self._write(conn, frame)
            return True
        return False

    def _may_refresh(self, global_id: str) -> bool:
        """At most one fresh identity fetch per recipient per REFRESH_INTERVAL (remembered for a bounded few)."""
        now = self.clock.seconds()
        last = self._refreshed.get(global_id)
        if last is not None and now - last < REFRESH_INTERVAL:
            return False
        self._refreshed.pop(global_id, None)
        self._refreshed[global_id] = now
        while len(self._refreshed) > self.limits.reply_paths:
            self._refreshed.popitem(last=False)
        return True

    def _connection_for(self, global_id: str) -> Optional[PacketConnection]:
        """A connection that reaches ``global_id`` now: its route here, or the one it last sent on."""
        route = self._routes.get(global_id)
        if route is not None:
            return route.connection()
        address = self._reply_paths.get(global_id)
        return self.transport.connection_to(address) if address is not None else None

    def _write(self, conn: Optional[PacketConnection], frame: _Frame) -> None:
        """Hand one frame to a connection, unchanged (the only place a forwarded byte is written)."""
        if conn is None or not conn.is_usable():
            raise Unavailable("the connection closed")
        if conn.unsent_bytes() > self.limits.max_queued:
            raise Unavailable(f"{conn.unsent_bytes()} bytes are not written to {conn.address} yet")
        conn.send_frame(frame.head, frame.body)

    def _done(self, route: Route, way: _Way, frame: _Frame, dropped: Optional[str]) -> None:
        way.queued -= frame.size
        self.queued_total -= frame.size
        if dropped is None:
            way.packets += 1
            way.bytes += frame.size
            side = "in" if way is route.inbound else "out"
            self.totals["packets_" + side] += 1
            self.totals["bytes_" + side] += frame.size
        else:
            route.dropped[dropped] += 1
            self.refused[dropped] += 1

    # -- checks ---------------------------------------------------------------------

    def _verify(self, head: PacketHead, known: Optional[Verifier], route: Route) -> None:
        verifier = self._resolve_verifier(head.creator_id) or known
        if verifier is None:
            self._refuse(route, "unverified", f"no key of {head.creator_id} to check its packet with")
        try:
            head.verify(lambda _creator: verifier)
        except BadPacket:
            self._refuse(route, "bad_signature", f"a packet in the name of {head.creator_id} does not verify")

    def _verify_stranger(self, head: PacketHead, conn: PacketConnection) -> None:
        """A sender we know a key for must sign with it; only then may its route back be remembered."""
        verifier = self._resolve_verifier(head.creator_id)
        if verifier is None:
            return  # the routed node checks (and introduces) senders we have never met
        try:
            head.verify(lambda _creator: verifier)
        except BadPacket:
            target = self._routes.get(head.remote_id)
            self._refuse(target, "bad_signature", f"a packet in the name of {head.creator_id} does not verify")
        self._reply_paths.pop(head.creator_id, None)
        self._reply_paths[head.creator_id] = conn.address
        while len(self._reply_paths) > self.limits.reply_paths:
            self._reply_paths.popitem(last=False)

    def _refuse(self, route: Optional[Route], why: str, text: str) -> None:
        self.refused[why] += 1
        if route is not None:
            route.dropped[why] += 1
        raise RelayRefused(why, text)

    # -- reporting -----------------------------------------------------------------------

    def stats(self) -> dict:
        """Routes, bytes each way, what waits, refusals by reason, and the limits."""
        rows = [route.info() for route in self._routes.values()]
        return {
            "routes": len(rows),
            "routed_nodes": rows,
            **{key: self.totals[key] for key in ("packets_in", "bytes_in", "packets_out", "bytes_out")},
            "queued_bytes": self.queued_total,
            "reply_paths": len(self._reply_paths),
            "contacts_refreshed": self.contacts_refreshed,
            "refused": dict(self.refused),
            "routes_counts": dict(self.counts),
            "limits": asdict(self.limits),
        }

