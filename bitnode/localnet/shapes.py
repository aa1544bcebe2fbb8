"""Shapes of a local network beyond "everybody listens": routers, and nodes behind NAT.

A node *behind NAT* opens no listening TCP port at all (``services/gateway/listen``
off) and is told it is not reachable, so it must get routed: it finds a
router in the DHT, keeps one connection to it and publishes the router as its
contact (service_proxy_transport).  A *router* runs service_proxy_server and
advertises itself in the DHT.  Routers start right after the identity
servers, so they are in the DHT before anyone looks for one.

``bitnode localnet up --behind-nat`` puts every customer behind NAT,
``--suppliers-behind-nat N`` the last N suppliers; ``--routers N`` starts N
routers (default: one as soon as anything is behind NAT).  The roles land in
``network.json`` (``router``, ``behind-nat``).
"""

from __future__ import annotations

from typing import Any, Optional

from bitnode.errors import BadRequest

ROUTER = "router"
BEHIND_NAT = "behind-nat"
#: Routers one local network may have.
MAX_ROUTERS = 8
#: Settings these roles switch on (merged with the node's other roles').
SHAPE_SETTINGS: dict[str, dict] = {
    # every node of a local network connects from 127.0.0.1: the per-address limit meant for strangers is off
    ROUTER: {"services/proxy-server/enabled": True, "services/proxy-server/max-routes-per-ip": 0},
    BEHIND_NAT: {"services/gateway/listen": False, "services/proxy-transport/reachable": "no"},
}


def routers_wanted(routers: Optional[int], behind_nat: int) -> int:
    """How many routers to start: as asked, else one when ``behind_nat`` nodes need one (none otherwise)."""
    wanted = (1 if behind_nat else 0) if routers is None else routers
    if not 0 <= wanted <= MAX_ROUTERS:
        raise BadRequest(f"a local network has 0 to {MAX_ROUTERS} routers")
    if behind_nat and not wanted:
        raise BadRequest("nodes behind NAT need a router: --routers must be at least 1")
    return wanted


def shaped_names(suppliers: int, customers: int, routers: int, suppliers_behind_nat: int,
                 customers_behind_nat: int) -> list[tuple[str, tuple[str, ...]]]:
    """Routers, suppliers and customers with their roles: the last N of each kind are behind NAT."""
    if not 0 <= suppliers_behind_nat <= suppliers:
        raise BadRequest(f"--suppliers-behind-nat is 0 to the number of suppliers ({suppliers})")
    if not 0 <= customers_behind_nat <= customers:
        raise BadRequest(f"customers behind NAT are 0 to the number of customers ({customers})")
    names = [(f"router-{i}", (ROUTER,)) for i in range(1, routers + 1)]
    for kind, count, natted in (("supplier", suppliers, suppliers_behind_nat),
                                ("customer", customers, customers_behind_nat)):
        for i in range(1, count + 1):
            names.append((f"{kind}-{i}", (kind, BEHIND_NAT) if i > count - natted else (kind,)))
    return names


def routers_of(plans: list[Any]) -> list[Any]:
    """The routers among a network's node plans."""
    return [plan for plan in plans if ROUTER in plan.roles]
