"""API method network_stun: ask a STUN server which address it sees us at."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from bitnode.errors import BadRequest, Unavailable
from bitnode.main.schema import TCP_INTERFACE_KEY
from bitnode.p2p.external_address import parse_stun_server, stun_query

SERVERS_KEY = "services/stun-client/servers"


class StunMethods:
    """Mixin of :class:`bitnode.interface.api.API`."""

    node: Any

    def network_stun(self, udp_port: int | None = None, dht_port: int | None = None) -> defer.Deferred:
        """External address of each probed local UDP port (``udp_port``, ``dht_port``; default one free port)."""
        servers = [parse_stun_server(s) for s in self.node.settings.get(SERVERS_KEY)]
        if not servers:
            raise Unavailable(f"no STUN server configured (set {SERVERS_KEY} or name one in the network file)")
        ports = [p for p in (udp_port, dht_port) if p is not None] or [0]
        for port in ports:
            if not 0 <= port < 65536:
                raise BadRequest(f"port {port} is out of range")
        return defer.ensureDeferred(self._stun_all(servers, ports))

    async def _stun_all(self, servers: list[tuple[str, int]], ports: list[int]) -> list[dict]:
        interface = self.node.settings.get(TCP_INTERFACE_KEY)
        results = []
        for port in ports:
            results.append(await stun_query(self.node.reactor, self.node.clock, servers, port, interface))
        return results
