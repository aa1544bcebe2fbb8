"""API method network_stun: ask a STUN server which address it sees us at."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from bitnode.errors import BadRequest, Conflict, Unavailable
from bitnode.p2p.stun import StunClient

SERVERS_KEY = "services/stun-client/servers"


def _server(text: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"STUN server must be host:port, got {text!r}")
    return host, int(port)


class StunMethods:
    """Mixin of :class:`bitnode.interface.api.API`."""

    node: Any

    def network_stun(self, udp_port: int | None = None, dht_port: int | None = None) -> defer.Deferred:
        """External address of each probed local UDP port (``udp_port``, ``dht_port``; default one free port)."""
        servers = [_server(s) for s in self.node.settings.get(SERVERS_KEY)]
        if not servers:
            raise Unavailable(f"no STUN server configured (set {SERVERS_KEY})")
        ports = [p for p in (udp_port, dht_port) if p is not None] or [0]
        for port in ports:
            if not 0 <= port < 65536:
                raise BadRequest(f"port {port} is out of range")
        return defer.ensureDeferred(self._stun_all(servers, ports))

    async def _stun_all(self, servers: list[tuple[str, int]], ports: list[int]) -> list[dict]:
        results = []
        for port in ports:
            results.append(await self._stun_one(servers, port))
        return results

    async def _stun_one(self, servers: list[tuple[str, int]], local_port: int) -> dict:
        client = StunClient(self.node.clock)
        try:
            listening = self.node.reactor.listenUDP(local_port, client, interface=self.node.settings.get(
                "services/tcp-connections/interface"))
        except Exception as err:  # noqa: BLE001 - CannotListenError and friends: say which port
            raise Conflict(f"cannot use local UDP port {local_port}: {err}") from None
        try:
            errors = []
            for server in servers:
                try:
                    host, port = await client.query(server)
                except Exception as err:  # noqa: BLE001 - try the next server, report all
                    errors.append(f"{server[0]}:{server[1]}: {err}")
                    continue
                return {"local_port": listening.getHost().port, "ip": host, "port": port,
                        "server": f"{server[0]}:{server[1]}"}
            raise Unavailable("no STUN server answered: " + "; ".join(errors))
        finally:
            await defer.maybeDeferred(listening.stopListening)
