"""service_proxy_transport: find out whether peers can connect to us, and if not, get routed.

The :class:`~bitnode.p2p.proxy_receiver.ProxyReceiver` machine decides; this
service gives it its neighbours:

- reachable?  ``services/proxy-transport/reachable``: ``yes`` / ``no`` force
  it; ``auto`` (the default): a router never routes itself; a node that does
  not listen (``services/gateway/listen`` off) is not reachable; otherwise a
  router found in the DHT is asked to connect to us (a *probe*: it dials the
  address our request came from at our listening port and answers on that
  new connection).  An answer that arrives on a connection the router made
  proves it; "unreachable" from the router disproves it; with no router to
  ask we assume we are reachable (a node with a public address needs none).
- routers: the last one first, then ``services/proxy-transport/routers``,
  then random members of the routers' DHT layer;
- linking: the gateway sends every packet through the router
  (:meth:`~bitnode.transport.routing.Routing.route_through`) and our identity
  publishes ``proxy://<router address>`` (the gateway service asks
  :meth:`ProxyTransportService.published_contacts`); a lost connection to the
  router is ``router-lost`` at once.

Events: ``proxy-routed``, ``proxy-router-lost``, ``proxy-direct`` (the network
connector checks the network again on each).  ``network_status proxy=true``
shows the machine's state, the router, packets by path and why.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bitnode import globalid
from bitnode.dht.dht_service import DHTService
from bitnode.errors import BadRequest, BitnodeError, Unavailable
from bitnode.main.options import FLOAT, STRING, STRING_LIST, Option
from bitnode.p2p.proxy_protocol import ROUTERS_LAYER, decode_answer, proxy_request
from bitnode.p2p.proxy_receiver import ProxyReceiver
from bitnode.p2p.proxy_server_service import ProxyServerService
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
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.receiver: Optional[ProxyReceiver] = None
        self._gateway: Optional[Gateway] = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Build the machine and let it decide."""
        service = self.deps.gateway
        gateway = self._gateway = service.require_gateway()
        settings = self.ctx.settings
        self.receiver = ProxyReceiver(
            self.ctx.clock, self._check_reachable_d, self._find_routers_d, self._request_route_d, self._link,
            self._unlink, self._keepalive, self._announce, registry=self.ctx.automats,
            timer_intervals={"timer-keepalive": settings.get(PREFIX + "keepalive-interval"),
                             "timer-recheck": settings.get(PREFIX + "recheck-interval")})
        service.routed_contacts = self.published_contacts
        gateway.transport.lost_listeners.append(self._connection_lost)
        settings.add_listener(REACHABLE_KEY, self._setting_changed)
        self.receiver.event("start")

    def stop(self) -> None:
        """Leave our router (without publishing anything new: the node may be going down)."""
        self.ctx.settings.remove_listener(REACHABLE_KEY, self._setting_changed)
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
                    setting=self.ctx.settings.get(REACHABLE_KEY))

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
        if self.deps.server is not None:
            return True, "this node is a router"
        setting = self.ctx.settings.get(REACHABLE_KEY)
        if setting != "auto":
            return setting == "yes", f"{REACHABLE_KEY} is {setting}"
        gateway = self._require_gateway()
        if not gateway.is_listening() or gateway.port is None:
            return False, "this node accepts no connection (services/gateway/listen is off)"
        tried = []
        for router in (await self._find_routers())[:PROBE_ROUTERS]:
            try:
                await gateway.request(Command.REQUEST_SERVICE, router, proxy_request("probe", gateway.port),
                                      timeout=self._timeout())
            except PeerRefused as err:
                if err.reason.startswith("unreachable"):
                    return False, f"router {router} could not connect to us: {err.reason}"
                tried.append(f"{router}: {err.reason}")
                continue
            except BitnodeError as err:
                tried.append(f"{router}: {err}")
                continue
            conn: Optional[PacketConnection] = gateway.peer_connection(router)
            if conn is not None and conn.direction == "in":
                return True, f"router {router} connected to us"
            tried.append(f"{router}: its answer came on our own connection")
        why = f" ({'; '.join(tried)})" if tried else ""
        return True, f"no router could test whether peers connect to us: assuming they do{why}"

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

    def _setting_changed(self, key: str, old: Any, new: Any) -> None:
        if self.receiver is not None:
            self.receiver.event("recheck", f"{key} is now {new}")

    def _timeout(self) -> float:
        return self.ctx.settings.get(PREFIX + "request-timeout")
