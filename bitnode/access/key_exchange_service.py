"""service_key_exchange: sharing keys with other users and auditing them.

Owns the :class:`~bitnode.access.key_exchange.KeyExchange` of the node: it
handles incoming ``Key`` and ``AuditKey`` packets on the gateway while the
service runs, and serves ``key_share`` / ``key_audit``.  It depends on
service_gateway (packets) which depends on service_identity (the key store),
so it starts by itself once an identity exists.

Other services add rules for their kinds of keys, by alias prefix, that
outlive restarts of this service: :meth:`KeyExchangeService.set_reshare_policy`
(may a key of someone else's namespace be passed on?) and
:meth:`KeyExchangeService.set_own_key_handler` (a peer offers a key of *my*
namespace: service_shares takes a share proposed to me).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

from bitnode.access.key_exchange import KeyExchange
from bitnode.errors import Forbidden, Unavailable
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
        self._reshare: dict[str, Callable[[str, str, bool], Any]] = {}
        self._own_key: dict[str, Callable[[Any, str], Any]] = {}

    def start(self) -> None:
        """Register the packet handlers on the running gateway."""
        gateway = self.deps.gateway.require_gateway()
        exchange = KeyExchange(self.ctx.clock, gateway, self.deps.identity, self.ctx.run_in_thread,
                               self.ctx.events.publish, self.ctx.settings.get(PREFIX + "max-concurrent"),
                               reshare=self._check_reshare, own_key=self._take_own_key)
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

    def set_reshare_policy(self, prefix: str, check: Callable[[str, str, bool], Any]) -> Callable[[], None]:
        """Ask ``check(key_id, recipient, include_private)`` before a key of someone else whose alias starts
        with ``prefix`` is passed on (it raises Forbidden to refuse); returns the function that removes it."""
        return _register(self._reshare, prefix, check)

    def set_own_key_handler(self, prefix: str, take: Callable[[Any, str], Any]) -> Callable[[], None]:
        """``take(offer, sender)`` stores (or refuses with Forbidden) a key of my namespace a peer offers,
        for aliases starting with ``prefix``; returns the function that removes it."""
        return _register(self._own_key, prefix, take)

    def _check_reshare(self, key_id: str, recipient: str, include_private: bool) -> Any:
        check = _longest(self._reshare, key_id)
        return check(key_id, recipient, include_private) if check is not None else None

    def _take_own_key(self, offer: Any, sender: str) -> Any:
        take = _longest(self._own_key, offer.key_id)
        if take is None:
            raise Forbidden(f"{offer.key_id} is a key of this node: it is not taken from others")
        return take(offer, sender)

    def _limit_changed(self, key: str, old: Any, new: Any) -> None:
        if self.exchange is not None:
            self.exchange.max_busy = int(new)


def _register(table: dict, prefix: str, fn: Callable) -> Callable[[], None]:
    table[prefix] = fn

    def remove() -> None:
        if table.get(prefix) is fn:
            del table[prefix]

    return remove


def _longest(table: dict, key_id: str) -> Any:
    """The entry of ``table`` whose prefix is the longest start of the key id's alias, else None."""
    alias = key_id.partition("$")[0]
    matches = [prefix for prefix in table if alias.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None
