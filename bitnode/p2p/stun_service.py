"""service_ip_port_responder: a STUN server on UDP, for other nodes to learn their address."""

from __future__ import annotations

from typing import Any

from bitnode.main.schema import TCP_INTERFACE_KEY
from bitnode.p2p.stun import StunServer
from bitnode.services.base import Service
from bitnode.services.context import NodeContext

PORT_KEY = "services/ip-port-responder/udp-port"


class StunServerService(Service):
    """Answers RFC 5389 Binding requests on ``services/ip-port-responder/udp-port``."""

    name = "service_ip_port_responder"
    enabled_by_default = False
    description = "STUN server (RFC 5389 Binding) telling other nodes their address"

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.server: StunServer | None = None
        self._port = None

    def start(self) -> None:
        """Listen on the configured UDP port (0 picks a free one)."""
        self.server = StunServer()
        self._port = self.ctx.reactor.listenUDP(self.ctx.settings.get(PORT_KEY), self.server,
                                                 interface=self.ctx.settings.get(TCP_INTERFACE_KEY))

    def stop(self):
        """Close the UDP port."""
        port, self._port = self._port, None
        self.server = None
        return port.stopListening() if port is not None else None

    @property
    def port(self) -> int | None:
        """The UDP port listened on."""
        return self._port.getHost().port if self._port is not None else None

    def status(self) -> dict[str, Any]:
        """Port and counters."""
        return {"udp_port": self.port, **(dict(self.server.counters) if self.server else {})}
