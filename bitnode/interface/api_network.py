"""API methods for packets, connections, the network state and peers' online status.

Thin: each method checks its arguments and asks service_gateway
(:mod:`bitnode.transport.gateway_service`) or service_network
(:mod:`bitnode.p2p.network_service`).  A method whose service is not running
answers 503 with the service's state and reason.

Result shapes:

- ``packets_stats``: ``{"in", "out", "frames_in", "frame_bytes_in", "dropped"
  (every reason), "dropped_total", "gateway": {in flight, finished by state}}``;
- ``packets_list``: rows ``{"direction", "state", "command", "packet_id", ...}``,
  packets in flight first, then the recently finished ones;
- ``connections_list``: rows ``{"protocol", "address", "host", "port",
  "direction", "state", "peers", traffic counters}``;
- ``streams_list``: rows for frames being received (``bytes_done``,
  ``bytes_total``, ``progress``) and bytes not yet written (``bytes_pending``);
- ``network_connected``: the connector's ``{"state", "connected", "reason", ...}``;
- ``user_status``: ``{"global_id", "idurl", "state", "online", "last_seen", ...}``;
  ``user_ping`` adds ``round_trip`` and ``attempts``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed

from bitnode.customer.customer_service import CustomerService
from bitnode.dht.dht_service import DHTService
from bitnode.errors import BadRequest, Unavailable
from bitnode.main.schema import TCP_INTERFACE_KEY, TCP_PORT_KEY
from bitnode.p2p.network_service import NetworkService
from bitnode.p2p.proxy_server_service import ProxyServerService
from bitnode.p2p.proxy_transport_service import ProxyTransportService
from bitnode.supplier.supplier_service import SupplierService
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService

# States of an enabled service that may still turn ON by themselves.
COMING_UP = ("STARTING", "DEPENDS_OFF", "OFF")
PROTOCOLS = ("tcp", "udp", "proxy")
# bitnode has one packet transport, TCP; UDP carries only the DHT. The relay (proxy) rides on TCP too.
NO_UDP = {"available": False, "reason": "no UDP packet transport: packets travel over tcp (the DHT uses UDP, "
          "see the dht section)"}


class NetworkMethods:
    """packets_*, connections_list, streams_list, network_* and user_ping/status methods."""

    node: Any

    def _running(self, kind: type) -> Any:
        return self.node.service_driver.running(kind)

    def _gateway(self) -> Any:
        return self._running(GatewayService).require_gateway()

    # --- packets and connections ---------------------------------------------------

    def packets_stats(self) -> dict:
        """Traffic and drop counters of the packet transport."""
        return self._gateway().stats_dict()

    def packets_list(self) -> list:
        """Packets being sent, waited for or handled now, then the recently finished ones."""
        return self._gateway().packets()

    def connections_list(self, protocols: list | None = None) -> list:
        """Open and pending connections of the wanted protocols: tcp (all), proxy (those to our router or
        of nodes routed through us: their ``proxy`` says which)."""
        if _wants_tcp(protocols):
            return self._gateway().connections()
        if "proxy" in [str(p).strip().lower() for p in protocols or ()]:
            return [row for row in self._gateway().connections() if row.get("proxy")]
        return []

    def streams_list(self, protocols: list | None = None) -> list:
        """Data being received or written right now; empty when nothing is in flight."""
        if not _wants_tcp(protocols):
            return []
        return self._gateway().streams()

    # --- the network ---------------------------------------------------------------

    def network_reconnect(self) -> dict:
        """Fire ``reconnect`` at the network_connector (connections are closed and re-checked)."""
        connector = self._running(NetworkService).require_connector()
        connector.event("reconnect")
        return dict(connector.status(), reconnect="started")

    def network_connected(self, wait_timeout: float = 5) -> Deferred:
        """The connector's status once CONNECTED, waiting up to ``wait_timeout``; else 503 with the state.

        While service_network is still coming up (starting, or waiting for a
        dependency, as just after identity_create or identity_recover) the wait
        includes its start.
        """
        if not 0 <= wait_timeout <= 3600:
            raise BadRequest("wait_timeout must be between 0 and 3600 seconds")
        driver = self.node.service_driver
        if wait_timeout > 0 and driver.state(NetworkService) in COMING_UP:
            info = driver.info(NetworkService.name)
            if info["enabled"]:
                return self._network_started(wait_timeout)
        connector = self._running(NetworkService).require_connector()
        if connector.connected:
            return succeed(connector.status())
        if connector.state == "DISCONNECTED":
            connector.event("check-reconnect")
        if wait_timeout == 0 and not connector.connected:
            status = connector.status()
            raise Unavailable(f"not connected: state {status['state']}, {status['reason']}")
        return connector.when_connected(wait_timeout)

    def _network_started(self, wait_timeout: float) -> Deferred:
        """network_connected once service_network is ON, within ``wait_timeout`` in all.

        Waits for the driver's ``service-state-changed`` event (no polling).
        """
        clock, events = self.node.clock, self.node.events
        deadline = clock.seconds() + wait_timeout
        started: Deferred = Deferred()

        def on_event(event: Any) -> None:
            data = event.data if isinstance(event.data, dict) else {}
            if (event.event_id == "service-state-changed" and data.get("name") == NetworkService.name
                    and data.get("new_state") == "ON" and not started.called):
                started.callback(None)

        unsubscribe = events.subscribe(on_event)
        timer = clock.callLater(wait_timeout, lambda: None if started.called else started.callback(None))

        def waited(_: Any) -> Deferred:
            unsubscribe()
            if timer.active():
                timer.cancel()
            return self.network_connected(max(0.0, deadline - clock.seconds()))

        if self.node.service_driver.find(NetworkService) is not None:
            started.callback(None)  # came up between the check and the subscription
        return started.addCallback(waited)

    def network_status(self, suppliers: bool = False, customers: bool = False, cache: bool = False,
                       tcp: bool = False, udp: bool = False, proxy: bool = False, dht: bool = False) -> Deferred:
        """Connection state, plus the sections asked for.

        ``suppliers``: my suppliers by position (as suppliers_list); ``customers``:
        the customers I store for (as customers_list); ``tcp``: listening port and
        connections; ``cache``: known identities; ``dht``: the DHT node and its
        routing table; ``proxy``: whether we are routed (our router, packets by
        path) and whom we route (routed nodes, bytes each way, refusals). ``udp``
        says that transport does not exist (packets go over TCP). A section whose
        service is off says so.
        """
        driver = self.node.service_driver
        identity = driver.find(IdentityService)
        me = identity.my_identity() if identity is not None else None
        result: dict = {"global_id": me.global_id if me else None, "idurl": me.idurl if me else None}
        network = driver.find(NetworkService)
        if network is not None:
            result.update(network.require_connector().status())
            result["external_address"] = network.external_status()
        else:
            info = driver.info(NetworkService.name) if driver.installed(NetworkService) else {"state": "NOT_INSTALLED"}
            result.update({"state": info["state"], "connected": False, "reason": info.get("reason", "")})
        result["reachability"] = self._reachability_section()
        if tcp:
            result["tcp"] = self._tcp_section()
        if cache:
            result["cache"] = self._cache_section(identity)
        if dht:
            result["dht"] = self._dht_section()
        if udp:
            result["udp"] = dict(NO_UDP)
        if proxy:
            result["proxy"] = self._proxy_section()
        if suppliers:
            result["suppliers"] = self._market_section(CustomerService, lambda service: service.suppliers(False))
        if customers:
            result["customers"] = self._market_section(SupplierService, lambda service: service.customers())

        async def sections_answered() -> dict:
            for key, value in list(result.items()):
                if isinstance(value, Deferred):
                    result[key] = await value
            return result

        return Deferred.fromCoroutine(sections_answered())

    def _market_section(self, kind: type, rows) -> Any:
        """``{"available", "items"}`` from a market service, or why it is not available."""
        driver = self.node.service_driver
        service = driver.find(kind)
        if service is None:
            return {"available": False, "reason": f"{kind.name} is {driver.state(kind)}"}
        return maybeDeferred(rows, service).addCallback(
            lambda items: {"available": True, "count": len(items), "items": items})

    def network_configuration(self) -> dict:
        """Settings and state of the network services, and where we listen."""
        driver = self.node.service_driver
        settings = self.node.settings
        gateway_service = driver.find(GatewayService)
        gateway = gateway_service.gateway if gateway_service is not None else None
        return {
            "tcp": {
                "interface": settings.get(TCP_INTERFACE_KEY),
                "port": settings.get(TCP_PORT_KEY),
                "listening_port": gateway.port if gateway is not None else None,
                "contact": gateway.contact if gateway is not None else None,
            },
            "identity_servers": settings.get("personal/identity-servers"),
            "network": self.node.network.describe(),
            "services": [driver.info(kind.name, with_configs=True)
                         for kind in (IdentityService, GatewayService, NetworkService) if driver.installed(kind)],
            "udp": dict(NO_UDP),
            "proxy": {kind.name: driver.info(kind.name, with_configs=True)
                      for kind in (ProxyTransportService, ProxyServerService) if driver.installed(kind)},
        }

    # --- users -----------------------------------------------------------------------

    def user_ping(self, user_id: str, timeout: float = 15, retries: int = 2) -> Deferred:
        """Send our Identity packet and wait for the Ack; ``timeout`` is per attempt."""
        if not 0 < timeout <= 600:
            raise BadRequest("timeout must be more than 0 and at most 600 seconds")
        if not 0 <= retries <= 10:
            raise BadRequest("retries must be between 0 and 10")
        return self._running(NetworkService).require_online().ping(user_id, timeout, retries)

    def user_status(self, user_id: str) -> dict:
        """The user's online status from the traffic seen (no packet is sent)."""
        return self._running(NetworkService).require_online().status(user_id)

    def user_status_check(self, user_id: str, timeout: float = 5) -> Deferred:
        """The user's status, pinging once first unless they sent us something recently."""
        if not 0 < timeout <= 600:
            raise BadRequest("timeout must be more than 0 and at most 600 seconds")
        return self._running(NetworkService).require_online().check(user_id, timeout)

    # --- sections of network_status -------------------------------------------------------

    def _tcp_section(self) -> dict:
        driver = self.node.service_driver
        service = driver.find(GatewayService)
        if service is None:
            info = driver.info(GatewayService.name) if driver.installed(GatewayService) else {"state": "NOT_INSTALLED"}
            return {"available": False,
                    "reason": f"{GatewayService.name} is {info['state']} {info.get('reason', '')}".strip()}
        gateway = service.require_gateway()
        stats = gateway.stats
        return {
            "available": True,
            "listening": gateway.is_listening(),
            "contact": gateway.contact,
            "connections": gateway.connections(),
            "packets_in": stats.packets_in,
            "packets_out": stats.packets_out,
            "dropped_total": stats.as_dict()["dropped_total"],
            "limits": gateway.limits_stats(),
        }

    def _reachability_section(self) -> dict:
        """Can peers connect to us: the last decision (who decided, what STUN saw), its reason and counters."""
        driver = self.node.service_driver
        transport = driver.find(ProxyTransportService)
        if transport is None:
            state = driver.state(ProxyTransportService) if driver.installed(ProxyTransportService) else "NOT_INSTALLED"
            return {"available": False, "reason": f"{ProxyTransportService.name} is {state}"}
        return {"available": True, **transport.reachability_status()}

    def _proxy_section(self) -> dict:
        """Are we routed (through which router, packets by path), and whom do we route (bytes each way, refusals)."""
        driver = self.node.service_driver
        transport, server = driver.find(ProxyTransportService), driver.find(ProxyServerService)
        gateway_service = driver.find(GatewayService)
        if gateway_service is None or (transport is None and server is None):
            states = ", ".join(f"{kind.name} is {driver.state(kind) if driver.installed(kind) else 'NOT_INSTALLED'}"
                               for kind in (ProxyTransportService, ProxyServerService))
            return {"available": False, "reason": states}
        gateway = gateway_service.require_gateway()
        routing = gateway.routing_stats()
        relay = server.status() if server is not None else {}
        return {
            "available": True,
            "mode": "router" if server is not None else ("routed" if gateway.link is not None else "direct"),
            "router": routing["router"],
            "contact": routing["contact"],
            "packets_by_path": routing["packets"],
            "routed_nodes": relay.get("routed_nodes", []),
            "bytes_in": relay.get("bytes_in", 0),
            "bytes_out": relay.get("bytes_out", 0),
            "refused": relay.get("refused", {}),
            "transport": transport.status() if transport is not None else
            {"state": driver.state(ProxyTransportService)},
            "server": relay or {"state": driver.state(ProxyServerService)},
        }

    def _cache_section(self, identity: Any) -> dict:
        if identity is None or getattr(identity, "cache", None) is None:
            return {"available": False, "reason": "service_identity is not running"}
        network = self.node.service_driver.find(NetworkService)
        online = network.online if network is not None else None
        items = []
        for known in identity.cache.list():
            item = {"global_id": known.global_id, "idurl": known.idurl, "revision": known.revision,
                    "contacts": list(known.contacts)}
            if online is not None:
                item["state"] = online.status(known.global_id)["state"]
            items.append(item)
        fetcher = getattr(identity, "fetcher", None)
        return {"available": True, "identities": len(items), "items": items, "limits": identity.cache.stats(),
                "fetches": fetcher.stats() if fetcher is not None else {}}

    def _dht_section(self) -> dict:
        driver = self.node.service_driver
        if driver.installed(DHTService) is None:
            return {"available": False, "reason": "no DHT service is installed"}
        service = driver.find(DHTService)
        if service is None:
            return {"available": False, "reason": f"{DHTService.name} is {driver.state(DHTService)}"}
        return dict(service.status(), available=True)


def _wants_tcp(protocols: list | None) -> bool:
    """Whether the ``protocols`` filter (None: all) includes tcp; unknown names are a BadRequest."""
    if protocols is None:
        return True
    wanted = [str(p).strip().lower() for p in protocols]
    unknown = [p for p in wanted if p not in PROTOCOLS]
    if unknown:
        raise BadRequest(f"unknown protocols {unknown}; known: {', '.join(PROTOCOLS)}")
    return not wanted or "tcp" in wanted
