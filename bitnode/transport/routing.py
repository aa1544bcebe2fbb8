"""Which connection a packet leaves on: direct, through our router, or down a route we carry.

The :class:`~bitnode.transport.gateway.Gateway` mixes this in.  Three cases,
asked in this order for every outgoing packet (:meth:`Routing._routed_address`):

1. We are routed (behind NAT: ``service_proxy_transport`` called
   :meth:`Routing.route_through`): *every* packet goes on the one connection
   to our router, which passes it on unchanged; our identity names the router
   as our contact (``proxy://host:port``), so answers come back the same way.
2. We are a router and the recipient is routed through us: the packet goes
   down the connection it keeps to us (:class:`~bitnode.transport.relay.Relay`).
3. Otherwise the gateway's usual path: the connection the peer last used, else
   the first address of its identity, ``tcp://`` (it accepts connections) before
   ``proxy://`` (through its router) — see
   :func:`~bitnode.transport.tcp.contact_addresses`.

``route_counts`` counts packets by the path they took (``direct``,
``via_router``, ``to_routed``): a routed node that shows only ``via_router``
sent everything through its router.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from bitnode.errors import BadRequest, Unavailable
from bitnode.transport.tcp import PROXY_SCHEME, Address, parse_tcp_contact


@dataclass(frozen=True)
class RouterLink:
    """The router we are routed through: its global id and the address we keep a connection to."""

    router_id: str
    address: Address
    since: float

    @property
    def contact(self) -> str:
        """What we publish as our contact while routed: ``proxy://<router host>:<router port>``."""
        return f"{PROXY_SCHEME}{self.address[0]}:{self.address[1]}"


def router_link(router_id: str, router_contact: str, since: float) -> RouterLink:
    """A :class:`RouterLink` to the router whose ``tcp://`` contact is ``router_contact``."""
    address = parse_tcp_contact(router_contact)
    if address is None:
        raise BadRequest(f"router {router_id} has no tcp contact (got {router_contact!r})")
    return RouterLink(router_id, address, since)


class Routing:
    """Gateway methods choosing a packet's path (needs the gateway's ``transport`` and ``clock``)."""

    transport: Any
    clock: Any
    log: Any
    _live: dict

    def _init_routing(self) -> None:
        self.link: Optional[RouterLink] = None
        self.route_counts: Counter[str] = Counter()

    def route_through(self, router_id: str, router_contact: str) -> RouterLink:
        """Send every packet through the router ``router_id`` (reached at its ``tcp://`` contact) from now on."""
        self.link = router_link(router_id, router_contact, self.clock.seconds())
        self.log.info("routed through {router} at {address}", router=router_id, address=self.link.address)
        return self.link

    def stop_routing(self) -> None:
        """Send packets on the direct path again."""
        if self.link is not None:
            self.log.info("no longer routed through {router}", router=self.link.router_id)
        self.link = None

    def router_lost(self, why: str) -> int:
        """Our router's connection closed: stop routing, and fail the packets sent through it that wait for an answer.

        Their answers would come to our published contact, the lost router:
        failing them now (``Unavailable``) lets their senders try again over
        the next router at once instead of after their timeout.  Packets not
        sent yet stay queued.  Answers how many failed.
        """
        link = self.link
        self.stop_routing()
        if link is None:
            return 0
        failed = 0
        for machine in list(self._live):
            if machine.state in ("SENDING", "WAITING"):
                machine.event("cancel", Unavailable(f"router {link.router_id} was lost before the answer came: {why}"))
                failed += 1
        self.route_counts["failed_router_lost"] += failed
        return failed

    def _routed_address(self, peer_id: str) -> Optional[Address]:
        """Where a packet for ``peer_id`` must go instead of the direct path, counting the path taken."""
        if self.link is not None:
            self.route_counts["via_router"] += 1
            return self.link.address
        relay = self.transport.relay
        address = relay.connection_of(peer_id) if relay is not None else None
        if address is not None:
            self.route_counts["to_routed"] += 1
            return address
        self.route_counts["direct"] += 1
        return None

    def _proxy_roles(self) -> dict:
        """Connection address -> ``"router"`` (ours) or ``"routed"`` (a node routed through us)."""
        roles = {}
        if self.link is not None:
            roles[self.link.address] = "router"
        relay = self.transport.relay
        for global_id in relay.routed() if relay is not None else ():
            address = relay.connection_of(global_id)
            if address is not None:
                roles[address] = "routed"
        return roles

    def routing_stats(self) -> dict:
        """The router we go through (if any) and packets by path."""
        link = self.link
        return {
            "router": link.router_id if link is not None else None,
            "router_address": f"{link.address[0]}:{link.address[1]}" if link is not None else None,
            "contact": link.contact if link is not None else None,
            "since": link.since if link is not None else None,
            "packets": {path: self.route_counts[path] for path in ("direct", "via_router", "to_routed")},
            "failed_router_lost": self.route_counts["failed_router_lost"],
        }
