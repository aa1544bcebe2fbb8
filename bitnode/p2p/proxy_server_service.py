"""service_proxy_server: this node is a router for nodes that cannot accept connections.

A routed node (behind NAT) connects to us and asks to be routed
(:mod:`bitnode.p2p.proxy_protocol`); from then on our transport passes its
packets on both ways, unread and unchanged (:class:`~bitnode.transport.relay.Relay`).
We advertise ourselves by joining the DHT layer
:data:`~bitnode.p2p.proxy_protocol.ROUTERS_LAYER`, and we answer reachability
probes: a node asks whether we can connect to it, we dial the address its
request came from and answer on that new connection (or say we could not).

Limits (settings under ``services/proxy-server/``): routed nodes (in all
and per source IP), bytes
waiting per route and in all, bandwidth per route each way, how long a lost
route waits for its node, probes per source IP per minute and at once.
Counters: ``service_info service_proxy_server`` and ``network_status
proxy=true`` (routes with bytes each way, refusals by reason, probes).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bitnode.dht.dht_service import DHTService
from bitnode.errors import BadRequest, BitnodeError, TooManyRequests, Unavailable
from bitnode.main.options import DISK_SPACE, FLOAT, INTEGER, Option
from bitnode.p2p.proxy_protocol import ROUTERS_LAYER, encode_answer, is_proxy_request, parse_proxy_request
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.transport.limits import RateLimit
from bitnode.transport.packet import Packet
from bitnode.transport.relay import MiB, Relay, RelayLimits
from bitnode.transport.tcp import Address, contact_addresses
from bitnode.userid.id_service import IdentityService

PREFIX = "services/proxy-server/"
#: Seconds between attempts to join the routers' DHT layer while not joined.
JOIN_RETRY = 60.0


class ProxyServerService(Service):
    """Routes packets for nodes behind NAT; see the module docstring."""

    name = "service_proxy_server"
    requires = {"gateway": GatewayService, "identity": IdentityService}
    optional = {"dht": DHTService}
    enabled_by_default = False
    description = "Router: carries packets for nodes that cannot accept connections (behind NAT)"
    options = (
        Option(PREFIX + "max-routes", INTEGER, 100, "Nodes routed through this one at most; more are refused.",
               minimum=1, maximum=100_000, restart_needed=True),
        Option(PREFIX + "max-routes-per-ip", INTEGER, 10,
               "Nodes connecting from one IP address routed at most (0: no limit); more are refused.",
               minimum=0, maximum=100_000, restart_needed=True),
        Option(PREFIX + "route-queue", DISK_SPACE, 64 * MiB,
               "Bytes waiting for one routed node (held for bandwidth or not written yet) before its packets "
               "are refused.", minimum=1 * MiB, maximum=16 * 1024 * MiB, restart_needed=True),
        Option(PREFIX + "queue-total", DISK_SPACE, 256 * MiB,
               "Bytes waiting for all routed nodes together before packets are refused.",
               minimum=1 * MiB, maximum=64 * 1024 * MiB, restart_needed=True),
        Option(PREFIX + "route-bandwidth", DISK_SPACE, 16 * MiB,
               "Bytes per second passed on for one routed node, each way (0: no limit); the rest waits.",
               minimum=0, maximum=16 * 1024 * MiB, restart_needed=True),
        Option(PREFIX + "route-grace", FLOAT, 60.0,
               "Seconds a routed node whose connection closed keeps its route (packets for it wait).",
               minimum=1.0, maximum=3600.0, restart_needed=True),
        Option(PREFIX + "probes-per-minute", INTEGER, 10,
               "Reachability probes (we connect back to the asker) per source IP per minute (0: no limit).",
               minimum=0, maximum=10_000, restart_needed=True),
        Option(PREFIX + "probes-at-once", INTEGER, 8, "Reachability probes running at once; more are refused.",
               minimum=1, maximum=1000, restart_needed=True),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.relay: Optional[Relay] = None
        self.layer_joined = False
        self.layer_error = ""
        self.probes: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._probe_limit: Optional[RateLimit] = None
        self._probing = 0
        self._route: Any = None
        self._join: Optional[LoopingCall] = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Attach the relay to the gateway's transport, take proxy requests, join the routers' layer."""
        gateway = self.deps.gateway.require_gateway()
        get = self.ctx.settings.get
        limits = RelayLimits(max_routes=get(PREFIX + "max-routes"), max_routes_per_ip=get(PREFIX + "max-routes-per-ip"),
                             max_queued=get(PREFIX + "route-queue"),
                             max_queued_total=get(PREFIX + "queue-total"),
                             bandwidth=get(PREFIX + "route-bandwidth"), route_grace=get(PREFIX + "route-grace"))
        self.relay = Relay(self.ctx.clock, gateway.transport, self.deps.identity.resolve_verifier,
                           self._addresses_of, self._own_addresses, limits)
        self._probe_limit = RateLimit(self.ctx.clock, per_minute=get(PREFIX + "probes-per-minute"))
        self._route = gateway.router.add(Command.REQUEST_SERVICE, self._on_request, accepts=is_proxy_request,
                                         owner=self.name)
        self._join = LoopingCall(self._join_layer)
        self._join.clock = self.ctx.clock
        self._join.start(JOIN_RETRY, now=True).addErrback(lambda f: self.log.failure("joining the routers' layer", f))

    def stop(self) -> None:
        """Stop routing (routed nodes find another router) and taking requests."""
        if self._join is not None and self._join.running:
            self._join.stop()
        self._join = None
        if self._route is not None:
            self._route.remove()
            self._route = None
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        self.layer_joined = False

    def status(self) -> dict:
        """Facts for service_info: the relay's counters, probes and the DHT layer."""
        if self.relay is None:
            return {}
        return dict(self.relay.stats(), probes=self.probe_stats(), requests=dict(self.requests),
                    dht_layer=ROUTERS_LAYER, layer_joined=self.layer_joined, layer_error=self.layer_error)

    def probe_stats(self) -> dict:
        """Reachability probes: dialled, unreachable, refused (rate or busy), running now."""
        limit = self._probe_limit.stats() if self._probe_limit is not None else {}
        return dict(self.probes, running=self._probing, per_minute=limit.get("per_minute"))

    # -- being found ------------------------------------------------------------------

    def _join_layer(self) -> Optional[Deferred]:
        if self.layer_joined:
            return None
        dht = self.deps.dht
        if dht is None:
            self.layer_error = "service_entangled_dht is not running: nobody finds this router"
            return None
        return Deferred.fromCoroutine(self._joining(dht))

    async def _joining(self, dht: Any) -> None:
        try:
            await dht.join_layer(ROUTERS_LAYER)
        except BitnodeError as err:
            self.layer_error = str(err)
            self.log.info("joining the routers' DHT layer: {err}", err=err)
            return
        self.layer_joined, self.layer_error = True, ""

    # -- the relay's neighbours ------------------------------------------------------------

    def _addresses_of(self, global_id: str, refresh: bool = False) -> Deferred:
        d = self.deps.identity.fetch_identity(global_id, refresh=refresh)
        return d.addCallback(lambda identity: contact_addresses(identity.contacts))

    def _own_addresses(self) -> set:
        gateway = self.deps.gateway.gateway
        if gateway is None or gateway.port is None:
            return set()
        hosts = {gateway.advertise_host, "127.0.0.1", "localhost", gateway.transport.interface}
        return {(host, gateway.port) for host in hosts}

    # -- requests -------------------------------------------------------------------------------

    def _on_request(self, packet: Packet, address: Address) -> Deferred:
        return Deferred.fromCoroutine(self._handle(packet, address))

    async def _handle(self, packet: Packet, address: Address) -> None:
        gateway = self.deps.gateway.require_gateway()
        relay = self.relay
        try:
            request = parse_proxy_request(packet.payload)
            self.requests[request.action] += 1
            if relay is None:
                raise Unavailable("this node does not route now")
            if request.action == "probe":
                await self._probe(packet, address, request.port)
                return
            if request.action == "leave":
                relay.remove_route(packet.creator_id, "left")
                await gateway.reply(packet, Command.ACK, encode_answer({"left": True}))
                return
            conn = gateway.transport.connection_to(address)
            if conn is None:
                raise Unavailable("the connection of the request closed")
            new = relay.route(packet.creator_id) is None
            relay.add_route(packet.creator_id, conn)
            if new:
                self.log.info("routing {who} ({routes} routed)", who=packet.creator_id, routes=len(relay.routed()))
                self.ctx.events.publish("proxy-route-added", {"global_id": packet.creator_id})
            await gateway.reply(packet, Command.ACK, encode_answer(
                {"accepted": True, "router": gateway.my_id, "contact": gateway.contact}))
        except BitnodeError as err:
            self.requests["refused"] += 1
            await gateway.reply(packet, Command.FAIL, str(err).encode("utf-8"))

    async def _probe(self, packet: Packet, address: Address, port: int) -> None:
        """Connect to the asker's IP at ``port``; the Ack goes on that new connection, or Fail says why not."""
        gateway = self.deps.gateway.require_gateway()
        if self._probe_limit is not None and not self._probe_limit.allow(address[0]):
            self.probes["rate_limited"] += 1
            raise TooManyRequests("too many reachability probes from your address; try later")
        if self._probing >= self.ctx.settings.get(PREFIX + "probes-at-once"):
            self.probes["busy"] += 1
            raise TooManyRequests("this router is probing others now; try later")
        target = (address[0], port)
        if target in self._own_addresses():
            raise BadRequest("that is this router's own address")
        answer = gateway.build(Command.ACK, packet.creator_id, encode_answer({"probe": "dialled"}),
                               packet_id=packet.packet_id)
        self._probing += 1
        try:
            conn = await gateway.transport.connect(target)
            # left open (the transport's idle timeout closes it): the asker takes the connection its answer
            # came on for its next packet to us, which a close racing that packet would lose
            conn.send_frame(answer.encode_header(), answer.payload)
        except BitnodeError as err:
            self.probes["unreachable"] += 1
            raise Unavailable(f"unreachable: cannot connect to {target[0]}:{target[1]}: {err}") from None
        finally:
            self._probing -= 1
        self.probes["dialled"] += 1
