"""My address as the network sees it: ask STUN servers, and decide what my identity advertises.

:func:`stun_query` asks the configured STUN servers (``host:port``) in turn,
from one local UDP port, which address they see us at (``network_stun``
and :class:`ExternalAddress` both use it).

:class:`ExternalAddress` runs it when the network connector checks the
transports (at start-up and after a reconnect, i.e. a network change), at most
once per ``min_interval`` seconds unless forced, one query at a time, and
hands the answer to the gateway (``advertise``), which writes it into the
``tcp://`` contact of my identity and republishes it. It never overrides a
host the user fixed (``services/gateway/external-host``), and a node that
listens on a loopback address only takes a loopback answer: a public
address in its contact would point where nobody can reach it.  An answer
naming another address than the one before is told to ``changed(ip)``
(service_network publishes ``external-address-changed``: the network
changed, reachability is decided again).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.errors import BadRequest, BitnodeError, Conflict, Unavailable
from bitnode.p2p.stun import StunClient

#: Listening addresses that mean "every interface".
WILDCARDS = ("", "0.0.0.0", "::")
#: The STUN servers to ask (a setting of the schema, given by the network file).
STUN_SERVERS_KEY = "services/stun-client/servers"


def parse_stun_server(text: str) -> tuple[str, int]:
    """``host:port`` of a STUN server; BadRequest when it is not one."""
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"STUN server must be host:port, got {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def stun_query(reactor: Any, clock: Any, servers: list[tuple[str, int]], local_port: int = 0,
               interface: str = "") -> defer.Deferred:
    """Deferred[dict]: ``{local_port, ip, port, server}`` from the first server that answers.

    Conflict when the local UDP port cannot be used; Unavailable naming every
    server's error when none answers.
    """
    return defer.ensureDeferred(_stun_query(reactor, clock, servers, local_port, interface))


async def _stun_query(reactor: Any, clock: Any, servers: list[tuple[str, int]], local_port: int,
                      interface: str) -> dict:
    if not servers:
        raise Unavailable("no STUN server configured")
    client = StunClient(clock)
    try:
        listening = reactor.listenUDP(local_port, client, interface=interface)
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


def host_to_advertise(answer: str, interface: str) -> tuple[str | None, str]:
    """(host my contact should name, why) for a STUN ``answer`` seen while listening on ``interface``."""
    if interface not in WILDCARDS and is_loopback(interface) and not is_loopback(answer):
        return None, f"listening on {interface} only: {answer} would not reach this node"
    return answer, f"seen at {answer} by STUN"


class ExternalAddress:
    """Learns my external address from STUN and gives it to the gateway (see the module docstring).

    :param clock: time source (``min_interval``).
    :param query: ``(servers) -> Deferred[dict]``, :func:`stun_query` bound to the reactor.
    :param servers: ``() -> list[str]``: the configured STUN servers (``host:port``).
    :param interface: ``() -> str``: the address the peer transport listens on.
    :param advertise: ``(host) -> Deferred[bool]``: the gateway advertises ``host`` (True: it changed),
        or does nothing when the user fixed the host.
    :param enabled: ``() -> bool``: may STUN run at all.
    :param min_interval: seconds between two queries that were not forced.
    :param changed: ``(ip) -> None``: told when STUN sees us at another address than the time before.
    """

    log = Logger()

    def __init__(self, clock: Any, query: Callable[[list], defer.Deferred], servers: Callable[[], list],
                 interface: Callable[[], str], advertise: Callable[[str], defer.Deferred],
                 enabled: Callable[[], bool], min_interval: float,
                 changed: Callable[[str], None] = lambda ip: None) -> None:
        self.clock = clock
        self._query = query
        self._servers = servers
        self._interface = interface
        self._advertise = advertise
        self._enabled = enabled
        self.min_interval = min_interval
        self._changed = changed
        self._seen_ip: str | None = None
        self._running: defer.Deferred | None = None
        self.last: dict = {}
        self.counters = {"queries": 0, "answers": 0, "failures": 0, "applied": 0, "ignored": 0, "changes": 0}

    def learn(self, force: bool = False) -> defer.Deferred | None:
        """Ask the STUN servers now (in the background); None when not due, off, or one runs already."""
        if self._running is not None or not self._enabled():
            return None
        try:
            servers = [parse_stun_server(text) for text in self._servers()]
        except BadRequest as err:
            self.last = {"at": self.clock.seconds(), "error": str(err)}
            return None
        if not servers:
            return None
        if not force and self.last.get("at") is not None and \
                self.clock.seconds() - self.last["at"] < self.min_interval:
            return None
        self.counters["queries"] += 1
        d = self._running = defer.ensureDeferred(self._learn(servers))
        return d

    async def _learn(self, servers: list[tuple[str, int]]) -> dict:
        try:
            try:
                answer = await self._query(servers)
            except BitnodeError as err:
                self.counters["failures"] += 1
                self.last = {"at": self.clock.seconds(), "error": str(err)}
                self.log.info("STUN: {err}", err=err)
                return self.last
            self.counters["answers"] += 1
            if answer["ip"] != self._seen_ip:
                self._seen_ip = answer["ip"]
                self.counters["changes"] += 1
                self._changed(answer["ip"])
            host, why = host_to_advertise(answer["ip"], self._interface())
            self.last = {"at": self.clock.seconds(), "ip": answer["ip"], "port": answer["port"],
                         "server": answer["server"], "advertised": host is not None, "reason": why}
            if host is None:
                self.counters["ignored"] += 1
                return self.last
            try:
                changed = await self._advertise(host)
            except BitnodeError as err:
                self.last["error"] = f"publishing my contact: {err}"
                return self.last
            if changed:
                self.counters["applied"] += 1
                self.log.info("my external address is {host} ({why})", host=host, why=why)
            return self.last
        finally:
            self._running = None

    def stop(self) -> None:
        """Cancel a query on its way (its UDP port closes); nothing is advertised from it."""
        running, self._running = self._running, None
        if running is not None:
            running.cancel()

    def status(self) -> dict:
        """The last answer (or error) and the counters."""
        return {"last": dict(self.last), "running": self._running is not None, **self.counters}
