"""service_proxy_transport: find out whether peers can connect to us, and if not, get routed.

The :class:`~bitnode.p2p.proxy_receiver.ProxyReceiver` machine decides; this
service gives it its neighbours:

- reachable?  ``services/proxy-transport/reachable``: ``yes`` / ``no`` force
  it; ``auto`` (the default): a router never routes itself; a node that does
  not listen (``services/gateway/listen`` off) is not reachable; otherwise
  :class:`~bitnode.p2p.reachability.Reachability` decides from two
  witnesses: STUN (the configured servers, ``services/stun-client/servers``:
  an external address that is none of this machine's own means a NAT), then
  a *dial-back*: a router found in the DHT is asked to connect to us (a
  *probe*: it dials the address our request came from at our listening port
  and answers on that new connection).  An answer that arrives on a
  connection the router made proves we are reachable; "unreachable" from the
  router disproves it; without an answer within
  ``services/proxy-transport/witness-timeout`` seconds STUN's word stands
  (and with neither we assume we are reachable: a node with a public address
  needs no router).  When STUN later sees us at another address (event
  ``external-address-changed``: the network changed), it is decided again.
- routers: the last one first, then ``services/proxy-transport/routers``,
  then random members of the routers' DHT layer;
- linking: the gateway sends every packet through the router
  (:meth:`~bitnode.transport.routing.Routing.route_through`) and our identity
  publishes ``proxy://<router address>`` (the gateway service asks
  :meth:`ProxyTransportService.published_contacts`); a lost connection to the
  router is ``router-lost`` at once; when my identity moves to a new global id
  (``my-identity-rotated``) the route is asked for again at once, so the router
  passes on packets sent under the new name (it keeps routing the old one).

Events: ``proxy-routed``, ``proxy-router-lost``, ``proxy-direct`` (the network
connector checks the network again on each).  ``network_status`` shows the
reachability decision and why (``reachability``); with ``proxy=true`` also
the machine's state, the router and packets by path.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from bitnode import globalid
from bitnode.dht.dht_service import DHTService
from bitnode.errors import BadRequest, BitnodeError, Unavailable
from bitnode.main.options import FLOAT, STRING, STRING_LIST, Option
from bitnode.main.schema import TCP_INTERFACE_KEY
from bitnode.p2p.external_address import STUN_SERVERS_KEY, WILDCARDS, parse_stun_server, stun_query
from bitnode.p2p.proxy_protocol import ROUTERS_LAYER, decode_answer, proxy_request
from bitnode.p2p.proxy_receiver import ProxyReceiver
from bitnode.p2p.proxy_server_service import ProxyServerService
from bitnode.p2p.reachability import REACHABLE, UNKNOWN, UNREACHABLE, Reachability, local_ip_addresses
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.transport.commands import Command
from bitnode.transport.gateway import Gateway
from bitnode.transport.gateway_service import GatewayService
from bitnode.transport.packet_out import PeerRefused
from bitnode.transport.tcp import PROXY_SCHEME, TCP_SCHEME, PacketConnection
from bitnode.userid.id_service import IdentityService

PREFIX = "services/proxy-transport/"
REACHABLE_KEY = PREFIX + "reachable"
#: Routers asked for a probe, and router candidates taken from the DHT at once.
PROBE_ROUTERS = 2
DHT_ROUTERS = 5
#: States in which we want to be routed but have no router yet (keep publishing the last one meanwhile).
SEEKING = ("FIND_ROUTER", "REQUEST", "LINKING", "OFFLINE")
#: The event service_network publishes when STUN sees us at a new address.
EXTERNAL_ADDRESS_CHANGED = "external-address-changed"


class ProxyTransportService(Service):
    """Keeps this node reachable: direct, or through a router; see the module docstring."""

    name = "service_proxy_transport"
    requires = {"gateway": GatewayService, "identity": IdentityService}
    optional = {"dht": DHTService, "server": ProxyServerService}
    description = "Checks whether peers can connect to us; if not, routes our packets through a router (NAT)"
    options = (
        Option(REACHABLE_KEY, STRING, "auto",
               "Whether peers can connect to this node: auto (find out: a router tries), yes (never use a "
               "router), no (always go through a router).", choices=("auto", "yes", "no")),
        Option(PREFIX + "routers", STRING_LIST, [],
               "Routers (global ids or IDURLs) to ask first, before the ones found in the DHT."),
        Option(PREFIX + "keepalive-interval", FLOAT, 60.0,
               "Seconds between keep-alives to our router (they also keep NAT mappings open).",
               minimum=5.0, maximum=3600.0, restart_needed=True),
        Option(PREFIX + "recheck-interval", FLOAT, 3600.0,
               "Seconds between reachability checks while we are reachable (auto).", minimum=60.0,
               maximum=7 * 86400.0, restart_needed=True),
        Option(PREFIX + "request-timeout", FLOAT, 15.0,
               "Seconds to wait for a router's answer to a route request, a keep-alive or a probe.",
               minimum=1.0, maximum=300.0),
        Option(PREFIX + "witness-timeout", FLOAT, 10.0,
               "Seconds each witness of the reachability check may take: STUN, then routers trying to connect "
               "to us (without their answer, what STUN saw decides: an address that is none of ours means NAT).",
               minimum=0.5, maximum=300.0),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.receiver: Optional[ProxyReceiver] = None
        self.reachability: Optional[Reachability] = None
        self._gateway: Optional[Gateway] = None
        self._unsubscribe: Any = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Build the machine and let it decide."""
        service = self.deps.gateway
        gateway = self._gateway = service.require_gateway()
        settings = self.ctx.settings
        self.reachability = Reachability(self.ctx.clock, self._stun, self._local_addresses, self._dial_back_d,
                                         lambda: float(settings.get(PREFIX + "witness-timeout")))
        self.receiver = ProxyReceiver(
            self.ctx.clock, self._check_reachable_d, self._find_routers_d, self._request_route_d, self._link,
            self._unlink, self._keepalive, self._announce, registry=self.ctx.automats,
            timer_intervals={"timer-keepalive": settings.get(PREFIX + "keepalive-interval"),
                             "timer-recheck": settings.get(PREFIX + "recheck-interval")})
        service.routed_contacts = self.published_contacts
        gateway.transport.lost_listeners.append(self._connection_lost)
        settings.add_listener(REACHABLE_KEY, self._setting_changed)
        self._unsubscribe = self.ctx.events.subscribe(self._on_event)
        self.receiver.event("start")

    def stop(self) -> None:
        """Leave our router (without publishing anything new: the node may be going down)."""
        self.ctx.settings.remove_listener(REACHABLE_KEY, self._setting_changed)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        gateway, self._gateway = self._gateway, None
        if gateway is not None and self._connection_lost in gateway.transport.lost_listeners:
            gateway.transport.lost_listeners.remove(self._connection_lost)
        if self.deps.gateway.routed_contacts == self.published_contacts:
            self.deps.gateway.routed_contacts = None
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.event("stop")
        if gateway is not None:
            gateway.stop_routing()

    def status(self) -> dict:
        """Facts for service_info and network_status: the machine, the router, packets by path."""
        if self.receiver is None or self._gateway is None:
            return {}
        return dict(self.receiver.status(), routing=self._gateway.routing_stats(),
                    setting=self.ctx.settings.get(REACHABLE_KEY), reachability=self.reachability_status())

    def reachability_status(self) -> dict:
        """The reachability decision (reachable, reason, who decided, what STUN saw) and its counters."""
        if self.reachability is None:
            return {}
        return dict(self.reachability.status(), setting=self.ctx.settings.get(REACHABLE_KEY))

    def reason(self) -> str:
        """Why we are (not) routed, in a few words (the network connector shows it)."""
        if self.receiver is None:
            return "service_proxy_transport is not running"
        return f"{self.receiver.state}: {self.receiver.reason}"

    def published_contacts(self) -> Optional[list[str]]:
        """The contacts to publish while we are routed (see ``GatewayService.routed_contacts``); None: our own."""
        gateway, receiver = self._gateway, self.receiver
        if gateway is None or receiver is None:
            return None
        if gateway.link is not None:
            return [gateway.link.contact]
        if receiver.state in SEEKING and receiver.reachable is False:
            # between routers: keep the last one published (a new one follows) rather than an address nobody reaches
            me = self.deps.identity.my_identity()
            return [c for c in (me.contacts if me is not None else ()) if c.startswith(PROXY_SCHEME)]
        return None

    # -- the machine's neighbours -----------------------------------------------------

    def _require_gateway(self) -> Gateway:
        if self._gateway is None:
            raise Unavailable("service_proxy_transport is not running")
        return self._gateway

    def _check_reachable_d(self) -> Deferred:
        return Deferred.fromCoroutine(self._check_reachable())

    async def _check_reachable(self) -> tuple[bool, str]:
        reachability = self.reachability
        assert reachability is not None
        if self.deps.server is not None:
            return reachability.record(True, "this node is a router", "router")
        setting = self.ctx.settings.get(REACHABLE_KEY)
        if setting != "auto":
            return reachability.record(setting == "yes", f"{REACHABLE_KEY} is {setting}", "setting")
        gateway = self._require_gateway()
        if not gateway.is_listening() or gateway.port is None:
            return reachability.record(False, "this node accepts no connection (services/gateway/listen is off)",
                                       "not-listening")
        return await reachability.check()

    def _stun(self) -> Deferred:
        """What the configured STUN servers see (Reachability's first witness)."""
        settings = self.ctx.settings
        try:
            servers = [parse_stun_server(text) for text in settings.get(STUN_SERVERS_KEY)]
        except BitnodeError as err:
            return fail(err)
        return stun_query(self.ctx.reactor, self.ctx.clock, servers, 0, settings.get(TCP_INTERFACE_KEY))

    def _local_addresses(self) -> set[str]:
        """This machine's addresses, and the one we listen on (a NAT rewrites every one of them)."""
        found = local_ip_addresses()
        interface = self.ctx.settings.get(TCP_INTERFACE_KEY)
        if interface not in WILDCARDS:
            found.add(interface)
        return found

    def _dial_back_d(self) -> Deferred:
        return Deferred.fromCoroutine(self._dial_back())

    async def _dial_back(self) -> tuple[str, str]:
        """Ask routers to connect to our port (Reachability's second witness): (verdict, why)."""
        gateway = self._require_gateway()
        if gateway.port is None:
            return UNKNOWN, "no listening port to test"
        tried = []
        for router in (await self._find_routers())[:PROBE_ROUTERS]:
            try:
                await gateway.request(Command.REQUEST_SERVICE, router, proxy_request("probe", gateway.port),
                                      timeout=self._timeout())
            except PeerRefused as err:
                if err.reason.startswith("unreachable"):
                    return UNREACHABLE, f"router {router} could not connect to us: {err.reason}"
                tried.append(f"{router}: {err.reason}")
                continue
            except BitnodeError as err:
                tried.append(f"{router}: {err}")
                continue
            conn: Optional[PacketConnection] = gateway.peer_connection(router)
            if conn is not None and conn.direction == "in":
                return REACHABLE, f"router {router} connected to us"
            tried.append(f"{router}: its answer came on our own connection")
        why = f" ({'; '.join(tried)})" if tried else ""
        return UNKNOWN, f"no router could test whether peers connect to us{why}"

    def _find_routers_d(self) -> Deferred:
        return Deferred.fromCoroutine(self._find_routers())

    async def _find_routers(self) -> list[str]:
        """Candidates, best first: our last router, the configured ones, then random ones from the DHT."""
        me = self.deps.identity.my_global_id()
        candidates: list[str] = []
        receiver = self.receiver
        if receiver is not None and receiver.last_router:
            candidates.append(receiver.last_router)
        for text in self.ctx.settings.get(PREFIX + "routers"):
            try:
                candidates.append(str(globalid.to_global_id(text)))
            except (BadRequest, ValueError):
                self.log.warn("ignoring router {text!r} in {key}", text=text, key=PREFIX + "routers")
        dht = self.deps.dht
        if dht is not None:
            try:
                found = await dht.random_nodes(ROUTERS_LAYER, DHT_ROUTERS)
            except BitnodeError as err:
                self.log.info("looking for routers in the DHT: {err}", err=err)
                found = []
            for contact in found:
                user = contact.get("user") or ""
                try:
                    candidates.append(str(globalid.to_global_id(user)))
                except (BadRequest, ValueError):
                    continue
        return [c for c in dict.fromkeys(candidates) if c != me]

    def _request_route_d(self, router: str) -> Deferred:
        return Deferred.fromCoroutine(self._request_route(router))

    async def _request_route(self, router: str) -> str:
        """Ask ``router`` to route us; its ``tcp://`` contact (where our connection goes) once it accepts."""
        gateway = self._require_gateway()
        identity = await self.deps.identity.fetch_identity(router)
        contact = next((c for c in identity.contacts if c.startswith(TCP_SCHEME)), None)
        if contact is None:
            raise Unavailable(f"{router} publishes no tcp contact: it cannot be a router")
        try:
            answer = await gateway.request(Command.REQUEST_SERVICE, router, proxy_request("route"),
                                           timeout=self._timeout())
        except PeerRefused as err:
            raise Unavailable(f"refused: {err.reason}") from None
        if not decode_answer(answer.payload).get("accepted"):
            raise Unavailable(f"{router} did not accept us")
        return contact

    def _link(self, router: str, contact: str) -> Deferred:
        gateway = self._require_gateway()
        gateway.route_through(router, contact)
        return self.deps.gateway.ensure_contacts()

    def _unlink(self, leave: bool) -> Deferred:
        async def unlink() -> None:
            gateway = self._gateway
            if gateway is None:
                return
            link = gateway.link
            gateway.stop_routing()
            if leave and self.receiver is not None and self.receiver.state == "DIRECT":
                await self.deps.gateway.ensure_contacts()
            if leave and link is not None:
                await gateway.request(Command.REQUEST_SERVICE, link.router_id, proxy_request("leave"),
                                      timeout=self._timeout())

        return Deferred.fromCoroutine(unlink())

    def _keepalive(self, router: str) -> Deferred:
        gateway = self._require_gateway()
        return gateway.request(Command.REQUEST_SERVICE, router, proxy_request("route"), timeout=self._timeout())

    def _announce(self, event_id: str, data: dict) -> None:
        self.log.info("{event}: {data}", event=event_id, data=data)
        self.ctx.events.publish(event_id, data)

    # -- reacting ----------------------------------------------------------------------------------

    def _connection_lost(self, conn: PacketConnection) -> None:
        gateway, receiver = self._gateway, self.receiver
        if gateway is None or receiver is None or gateway.link is None:
            return
        if conn.address == gateway.link.address:
            why = f"the connection to router {gateway.link.router_id} closed"
            gateway.router_lost(why)
            receiver.event("router-lost", why)

    def _on_event(self, event: Any) -> None:
        """My identity moved: renew my route under the new name.  STUN sees a new address: decide again."""
        event_id = getattr(event, "event_id", "")
        if event_id == "my-identity-rotated" and self.receiver is not None:
            self.receiver.event("renew")
        if event_id != EXTERNAL_ADDRESS_CHANGED:
            return
        ip = str((event.data or {}).get("ip") or "")
        if ip and self.reachability is not None and self.receiver is not None and self.reachability.external_seen(ip):
            self.receiver.event("recheck", f"the network changed: STUN now sees us at {ip}")

    def _setting_changed(self, key: str, old: Any, new: Any) -> None:
        if self.receiver is not None:
            self.receiver.event("recheck", f"{key} is now {new}")

    def _timeout(self) -> float:
        return self.ctx.settings.get(PREFIX + "request-timeout")
