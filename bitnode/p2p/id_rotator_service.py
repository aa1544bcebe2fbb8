"""service_identity_propagate: keeps my identity on live identity servers (the id_rotator machine).

The machine (:mod:`bitnode.p2p.id_rotator`) checks my identity's sources now
and then and moves my identity off a dead primary by itself while
``services/identity-propagate/automatic-rotate`` is on. It starts once I have
an identity (event ``my-identity-created``) and checks again at once when the
network comes back (``network-connected``) or after my identity was moved on
demand (``my-identity-rotated``, from ``identity_rotate``).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from bitnode.errors import Unavailable
from bitnode.main.options import BOOLEAN, FLOAT, Option
from bitnode.p2p.id_rotator import IdRotator
from bitnode.p2p.network_service import NetworkService
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.userid.id_service import IdentityService

PREFIX = "services/identity-propagate/"
AUTOMATIC_KEY = PREFIX + "automatic-rotate"
_CHECK_AGAIN = ("network-connected", "my-identity-rotated")


class IdentityPropagateService(Service):
    """Runs the id_rotator of this node."""

    name = "service_identity_propagate"
    requires = {"identity": IdentityService}
    optional = {"network": NetworkService}
    description = "Watches my identity servers; moves my identity off a dead primary (id_rotator)"
    options = (
        Option(AUTOMATIC_KEY, BOOLEAN, True,
               "Move my identity to another identity server by itself when the primary one is dead."),
        Option(PREFIX + "check-interval", FLOAT, 600.0,
               "Seconds between checks of my identity servers while they are well.", minimum=1.0,
               maximum=86400.0, restart_needed=True),
        Option(PREFIX + "recheck-interval", FLOAT, 60.0,
               "Seconds between checks while my primary identity server does not answer.", minimum=1.0,
               maximum=86400.0, restart_needed=True),
        Option(PREFIX + "dead-after", FLOAT, 1800.0,
               "Seconds my primary identity server must stay silent before my identity moves away from it.",
               minimum=1.0, maximum=30 * 86400.0, restart_needed=True),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.rotator: Optional[IdRotator] = None
        self._unsubscribe: list[Any] = []

    def start(self) -> None:
        """Build the machine; it starts checking once there is an identity."""
        get = self.ctx.settings.get
        identity = self.deps.identity
        self.rotator = IdRotator(
            self.ctx.clock, identity.probe_sources, identity.my_idurl, identity.move_identity, identity.republish,
            automatic=lambda: bool(get(AUTOMATIC_KEY)), online=self._online,
            dead_after=get(PREFIX + "dead-after"), check_interval=get(PREFIX + "check-interval"),
            recheck_interval=get(PREFIX + "recheck-interval"), registry=self.ctx.automats)
        self._unsubscribe = [self.ctx.events.subscribe(self._on_event)]
        if identity.my_identity() is not None:
            self.rotator.event("init")

    def stop(self) -> None:
        """Stop the machine; answers still on their way are dropped."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self.rotator is not None:
            self.rotator.event("stop")
            self.rotator.destroy()
            self.rotator = None

    def status(self) -> dict:
        """The machine's summary (state, primary, dead since, moves, sources...)."""
        return self.rotator.status() if self.rotator is not None else {}

    def require_rotator(self) -> IdRotator:
        """The running machine; Unavailable when the service is off."""
        if self.rotator is None:
            raise Unavailable(f"{self.name} is not running")
        return self.rotator

    def _online(self) -> bool:
        network = self.deps.network
        connector = network.connector if network is not None else None
        return connector is not None and connector.connected

    def _on_event(self, event: Any) -> None:
        rotator = self.rotator
        if rotator is None:
            return
        if event.event_id == "my-identity-created":
            rotator.event("init" if rotator.state == "AT_STARTUP" else "check")
        elif event.event_id in _CHECK_AGAIN and rotator.state != "AT_STARTUP":
            rotator.event("check")
