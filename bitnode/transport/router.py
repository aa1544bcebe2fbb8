"""The packet router: which handler takes an incoming packet that answers nothing.

The gateway matches answers (Ack, Fail, replies) to the packets waiting for
them and handles ``Identity`` itself; every other incoming packet goes to the
route registered for its command. A service registers, when it starts, the
commands it handles, and removes them when it stops::

    self._route = gateway.router.add(Command.MESSAGE, self._on_message, owner=self.name)
    ...
    self._route.remove()

A route may take only some packets of a command (``accepts``: a predicate on
the packet — group frames inside ``Message`` packets, a supplier's rejection
notice inside ``CancelService``). Such routes are asked first, in the order
they were added; the command's one general route (no ``accepts``) takes the
rest. A packet no route takes is dropped and counted (``no_handler``) —
unless the general route was removed with a ``refusal``: then the packet is
answered ``Fail <refusal>`` at once (until a route takes the command again),
so a peer learns that the service is off instead of waiting for a timeout.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from bitnode.errors import BadRequest, Conflict
from bitnode.transport.commands import Command, command_name

Handler = Callable[[Any, Any], Any]
Predicate = Callable[[Any], bool]
#: Commands the gateway handles itself (never routed).
GATEWAY_COMMANDS = frozenset({Command.IDENTITY.value, Command.ACK.value, Command.FAIL.value})


class Route:
    """One registration: ``handler(packet, address)`` for ``commands`` (those ``accepts`` says yes to)."""

    def __init__(self, router: PacketRouter, commands: tuple[str, ...], handler: Handler,
                 accepts: Optional[Predicate], owner: str):
        self._router = router
        self.commands = commands
        self.handler = handler
        self.accepts = accepts
        self.owner = owner
        self.active = True

    def remove(self, refusal: str = "") -> None:
        """Stop routing here; with ``refusal`` (general routes only) these commands are answered Fail ``refusal``."""
        if self.active:
            self.active = False
            self._router._remove(self, refusal)


class PacketRouter:
    """The routes of one gateway; see the module docstring.

    :param refuse: ``refuse(packet, text)`` answers a packet ``Fail text`` (returns a Deferred).
    """

    def __init__(self, refuse: Callable[[Any, str], Any]):
        self._refuse = refuse
        self._general: dict[str, Route] = {}
        self._special: dict[str, list[Route]] = {}
        self._refusals: dict[str, str] = {}

    def add(self, commands: str | Command | Iterable[str | Command], handler: Handler,
            accepts: Optional[Predicate] = None, owner: str = "") -> Route:
        """Route ``commands`` to ``handler(packet, address)``; returns the :class:`Route` (``.remove()``).

        BadRequest for an unknown command or one the gateway handles itself;
        Conflict when a command already has a general route.
        """
        if isinstance(commands, (str, Command)):
            commands = [commands]
        names = tuple(dict.fromkeys(command_name(c) for c in commands))
        known = {c.value for c in Command}
        for name in names:
            if name not in known:
                raise BadRequest(f"unknown command {name!r}")
            if name in GATEWAY_COMMANDS:
                raise Conflict(f"command {name!r} is handled by the gateway itself")
            if accepts is None and name in self._general:
                raise Conflict(f"command {name!r} already has a handler ({self._general[name].owner or '?'})")
        route = Route(self, names, handler, accepts, owner)
        for name in names:
            if accepts is None:
                self._general[name] = route
                self._refusals.pop(name, None)
            else:
                self._special.setdefault(name, []).append(route)
        return route

    def refuse(self, commands: Iterable[str | Command], refusal: str) -> None:
        """Answer ``commands`` that no route takes ``Fail refusal`` (instead of dropping them) from now on."""
        for command in commands:
            name = command_name(command)
            if name not in self._general:
                self._refusals[name] = refusal

    def handler_for(self, packet: Any) -> Optional[Handler]:
        """The handler that takes ``packet`` (a refusal answers it), None when nobody does."""
        name = packet.command
        for route in self._special.get(name, ()):
            if route.accepts(packet):
                return route.handler
        route = self._general.get(name)
        if route is not None:
            return route.handler
        refusal = self._refusals.get(name)
        if refusal:
            return lambda incoming, address: self._refuse(incoming, refusal)
        return None

    def table(self) -> list[dict]:
        """Every route: command, owner, whether it takes only some packets; refusals of removed routes."""
        rows = [{"command": name, "owner": route.owner, "partial": True}
                for name, routes in sorted(self._special.items()) for route in routes]
        rows += [{"command": name, "owner": route.owner, "partial": False}
                 for name, route in sorted(self._general.items())]
        rows += [{"command": name, "owner": "", "refusal": text} for name, text in sorted(self._refusals.items())]
        return rows

    def _remove(self, route: Route, refusal: str) -> None:
        for name in route.commands:
            if route.accepts is None:
                if self._general.get(name) is route:
                    del self._general[name]
                    if refusal:
                        self._refusals[name] = refusal
            else:
                routes = self._special.get(name, [])
                if route in routes:
                    routes.remove(route)
                if not routes:
                    self._special.pop(name, None)
