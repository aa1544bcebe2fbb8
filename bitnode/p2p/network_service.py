"""service_network: the network_connector machine and the peers' online status.

The connector's neighbours are wired here (see
:mod:`bitnode.p2p.network_connector` for what "connected" means):

- transports ready: the gateway listens, or a router carries our packets
  (service_proxy_transport), and my identity lists the contacts
  :meth:`~bitnode.transport.gateway_service.GatewayService.wanted_contacts`
  says (fixed and published if not); a change of router checks again;
- restart: close every connection, then the same;
- probe: fetch my identity from my identity servers (over HTTP, not from
  the local copy); if they publish my current contact, the network can
  reach me.  If they hold a stale copy, publish mine again.  If no server
  answers, ping up to two peers that sent us packets recently; an Ack is
  enough.  Otherwise the check fails with every reason.

Entering CONNECTED / DISCONNECTED publishes ``network-connected`` /
``network-disconnected`` on the node's event bus (only on a change).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from bitnode.errors import BitnodeError, Unavailable
from bitnode.main.options import BOOLEAN, FLOAT, Option
from bitnode.main.schema import TCP_INTERFACE_KEY
from bitnode.p2p.external_address import STUN_SERVERS_KEY, ExternalAddress, stun_query
from bitnode.p2p.network_connector import NetworkConnector
from bitnode.p2p.online_status import OnlineStatus
from bitnode.p2p.proxy_transport_service import EXTERNAL_ADDRESS_CHANGED, ProxyTransportService
from bitnode.services.base import Service
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService

PREFIX = "services/network/"
STUN_PREFIX = "services/stun-client/"
#: Peers pinged when no identity server answers.
PEERS_TO_PING = 2
#: Events of service_proxy_transport after which "connected" must be checked again.
ROUTING_EVENTS = ("proxy-routed", "proxy-router-lost", "proxy-direct")


class NetworkService(Service):
    """Runs the network connector and the online-status table."""

    name = "service_network"
    requires = {"gateway": GatewayService, "identity": IdentityService}
    optional = {"proxy": ProxyTransportService}
    description = "Network connection state (network_connector) and peers' online status"
    options = (
        Option(PREFIX + "online-window", FLOAT, 300.0,
               "Seconds a packet from a peer counts as proof it is online (older: ping it first).",
               minimum=1.0, maximum=86400.0),
        Option(PREFIX + "probe-ping-timeout", FLOAT, 5.0,
               "Seconds a connectivity check waits for a peer's Ack when no identity server answers.",
               minimum=0.1, maximum=60.0),
        Option(STUN_PREFIX + "at-startup", BOOLEAN, True,
               "Ask the STUN servers for my external address at start-up and after a reconnect, and write it "
               "into my identity's tcp:// contact (services/gateway/external-host, when set, wins)."),
        Option(STUN_PREFIX + "min-interval", FLOAT, 60.0,
               "Seconds between two STUN checks of my address (a reconnect asks at once).",
               minimum=1.0, maximum=86400.0, restart_needed=True),
    )
    log = Logger()
    #: set while the service runs
    connector: Optional[NetworkConnector] = None
    online: Optional[OnlineStatus] = None
    external: Optional[ExternalAddress] = None
    _announced: Optional[bool] = None
    _unsubscribe: Any = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Build the online table and the connector, and fire ``init``."""
        gateway = self._gateway_service().require_gateway()
        self.online = OnlineStatus(self.ctx.clock, gateway, self.ctx.settings.get(PREFIX + "online-window"))
        self.ctx.settings.add_listener(PREFIX + "online-window", self._window_changed)
        self._announced = None
        get = self.ctx.settings.get
        self.external = ExternalAddress(
            self.ctx.clock, lambda servers: stun_query(self.ctx.reactor, self.ctx.clock, servers, 0,
                                                       get(TCP_INTERFACE_KEY)),
            servers=lambda: get(STUN_SERVERS_KEY), interface=lambda: get(TCP_INTERFACE_KEY),
            advertise=lambda host: self._gateway_service().advertise_external(host),
            enabled=lambda: bool(get(STUN_PREFIX + "at-startup")),
            min_interval=get(STUN_PREFIX + "min-interval"),
            changed=lambda ip: self.ctx.events.publish(EXTERNAL_ADDRESS_CHANGED, {"ip": ip}))
        self.connector = NetworkConnector(
            self.ctx.clock, self._transports_ready, self._restart_transports, self._probe, self._announce,
            registry=self.ctx.automats,
        )
        self.connector.event("init")
        self._unsubscribe = self.ctx.events.subscribe(self._on_event)

    def stop(self) -> None:
        """Stop the connector (its waiters fail with 503), a STUN check on its way and the online table."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.external is not None:
            self.external.stop()
            self.external = None
        if self.connector is not None:
            self.connector.shutdown()
            self.connector = None
        if self.online is not None:
            self.online.stop()
            self.online = None
            self.ctx.settings.remove_listener(PREFIX + "online-window", self._window_changed)

    def status(self) -> dict:
        """Facts for service_info."""
        if self.connector is None or self.online is None:
            return {}
        return dict(self.connector.status(), peers=self.online.counts(), external_address=self.external_status())

    def external_status(self) -> dict:
        """What STUN said about my address last, and the counters (for network_status and service_info)."""
        return self.external.status() if self.external is not None else {}

    # -- for the API ------------------------------------------------------------------

    def require_connector(self) -> NetworkConnector:
        """The running connector; ``Unavailable`` when the service is off."""
        if self.connector is None:
            raise Unavailable("service_network is not running")
        return self.connector

    def require_online(self) -> OnlineStatus:
        """The running online-status table; ``Unavailable`` when the service is off."""
        if self.online is None:
            raise Unavailable("service_network is not running")
        return self.online

    # -- the connector's neighbours --------------------------------------------------------

    def _gateway_service(self) -> GatewayService:
        return self.deps.gateway

    def _identity_service(self) -> IdentityService:
        return self.deps.identity

    def _transports_ready(self) -> Deferred:
        return Deferred.fromCoroutine(self._check_transports())

    async def _check_transports(self) -> str:
        service = self._gateway_service()
        gateway = service.require_gateway()
        self._require_reachable(gateway)
        me = self._identity_service().my_identity()
        if me is None:
            raise Unavailable("no identity")
        if list(me.contacts) != service.wanted_contacts():
            await service.ensure_contacts()
        self._learn_address(force=False)
        if gateway.link is not None:
            return f"routed through {gateway.link.router_id} ({gateway.link.contact})"
        return f"tcp listening at {gateway.contact}"

    def _require_reachable(self, gateway: Any) -> None:
        """Peers can reach us only if we listen or a router carries our packets."""
        if gateway.is_listening() or gateway.link is not None:
            return
        proxy = self.deps.proxy
        why = f": {proxy.reason()}" if proxy is not None else " (service_proxy_transport is off)"
        raise Unavailable(f"the gateway is not listening and no router carries our packets yet{why}")

    def _learn_address(self, force: bool) -> None:
        """STUN in the background: it may take seconds, the transports are ready without it."""
        external = self.external
        d = external.learn(force) if external is not None else None
        if d is not None:
            d.addErrback(lambda failure: None if failure.check(CancelledError) else
                         self.log.failure("STUN check of my address", failure))

    def _restart_transports(self) -> Deferred:
        async def restart() -> str:
            await self._gateway_service().require_gateway().close_connections()
            self._learn_address(force=True)  # a reconnect: the network may have changed under us
            return await self._check_transports()

        return Deferred.fromCoroutine(restart())

    def _probe(self) -> Deferred:
        return Deferred.fromCoroutine(self._check_network())

    async def _check_network(self) -> str:
        # Every check (start-up, every 5 minutes, after a disconnection) may find a new address (a home
        # connection's changes now and then); min-interval keeps it to one STUN query per interval.
        self._learn_address(force=False)
        gateway = self._gateway_service().require_gateway()
        identity = self._identity_service()
        me = identity.my_identity()
        if me is None:
            raise Unavailable("no identity")
        self._require_reachable(gateway)
        wanted = self._gateway_service().wanted_contacts()
        problems: list[str] = []
        client = getattr(identity, "client", None)
        if client is not None:
            try:
                published = await client.fetch_any(list(me.sources))
            except BitnodeError as err:
                problems.append(f"identity server: {err}")
            else:
                if wanted and set(wanted) <= set(published.contacts):
                    return f"identity server publishes {', '.join(wanted)} for {me.global_id}"
                try:
                    await identity.publisher.publish(me)
                    return f"re-published revision {me.revision} with {', '.join(me.contacts)}"
                except BitnodeError as err:
                    problems.append(f"identity server has stale contacts and re-publishing failed: {err}")
        online = self.require_online()
        timeout = self.ctx.settings.get(PREFIX + "probe-ping-timeout")
        for peer in [p for p in online.recent_peers(PEERS_TO_PING + 1) if p != me.global_id][:PEERS_TO_PING]:
            try:
                result = await online.ping(peer, timeout, 0)
            except BitnodeError as err:
                problems.append(f"peer {peer}: {err}")
                continue
            return f"peer {peer} answered a ping in {result['round_trip']:.3f}s"
        raise Unavailable("; ".join(problems) or "no identity server and no peer to ask")

    def _announce(self, connected: bool, reason: str) -> None:
        if connected == self._announced:
            return
        came_back = connected and self._announced is False
        self._announced = connected
        if came_back:
            self._learn_address(force=True)  # back after a disconnection: perhaps on another network
        event = "network-connected" if connected else "network-disconnected"
        self.log.info("{event}: {reason}", event=event, reason=reason)
        self.ctx.events.publish(event, {"reason": reason, "global_id": self._identity_service().my_global_id()})

    def _on_event(self, event: Any) -> None:
        """Our router changed (or we stopped being routed): check the network again now."""
        if getattr(event, "event_id", "") in ROUTING_EVENTS and self.connector is not None:
            self.connector.event("check-reconnect")

    def _window_changed(self, key: str, old: Any, new: Any) -> None:
        if self.online is not None:
            self.online.online_window = float(new)
