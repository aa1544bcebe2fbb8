"""service_key_exchange: sharing keys with other users and auditing them.

Owns the :class:`~bitnode.access.key_exchange.KeyExchange` of the node: it
handles incoming ``Key`` and ``AuditKey`` packets on the gateway while the
service runs, and serves ``key_share`` / ``key_audit``.  It depends on
service_gateway (packets) which depends on service_identity (the key store),
so it starts by itself once an identity exists.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from bitnode.access.key_exchange import KeyExchange
from bitnode.errors import Unavailable
from bitnode.main.options import INTEGER, Option
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService

PREFIX = "services/key-exchange/"


class KeyExchangeService(Service):
    """Runs the key exchange of one node."""

    name = "service_key_exchange"
    requires = {"gateway": GatewayService, "identity": IdentityService}
    description = "Share keys with other users (Key packets) and audit that they hold them (AuditKey)"
    options = (
        Option(PREFIX + "max-concurrent", INTEGER, 8,
               "Peers' key shares and audits handled at once; more are refused as busy.", minimum=1, maximum=256),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.exchange: Optional[KeyExchange] = None

    def start(self) -> None:
        """Register the packet handlers on the running gateway."""
        gateway = self.deps.gateway.require_gateway()
        exchange = KeyExchange(self.ctx.clock, gateway, self.deps.identity, self.ctx.run_in_thread,
                               self.ctx.events.publish, self.ctx.settings.get(PREFIX + "max-concurrent"))
        exchange.start()
        self.exchange = exchange
        self.ctx.settings.add_listener(PREFIX + "max-concurrent", self._limit_changed)

    def stop(self) -> None:
        """Unregister the handlers."""
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            self.ctx.settings.remove_listener(PREFIX + "max-concurrent", self._limit_changed)
            exchange.stop()

    def status(self) -> dict:
        """Counters for service_info."""
        if self.exchange is None:
            return {}
        return dict(self.exchange.counters, busy=self.exchange.busy)

    def require_exchange(self) -> KeyExchange:
        """The running key exchange; Unavailable (503) when the service is off."""
        if self.exchange is None:
            raise Unavailable(f"{self.name} is not running")
        return self.exchange

    def _limit_changed(self, key: str, old: Any, new: Any) -> None:
        if self.exchange is not None:
            self.exchange.max_busy = int(new)
