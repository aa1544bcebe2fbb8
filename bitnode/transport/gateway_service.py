"""service_gateway: the node's :class:`~bitnode.transport.gateway.Gateway`, listening for peers.

Starting needs an identity (packets are signed with its key and addressed to
its global id): without one the service fails with "no identity: call
identity_create first".  Once an identity is created (event
``my-identity-created``) the service starts itself, and the driver then
starts the enabled services that depend on it; when it is erased
(``my-identity-erased``) the service restarts, and so ends FAILED.

On start it listens on ``services/tcp-connections/interface`` :
``services/tcp-connections/tcp-port`` (port 0 picks a free port) and, when
the identity's ``tcp://`` contact is not the address really listened on,
publishes a new revision with the right one (:meth:`GatewayService.ensure_contacts`;
a failure to publish is reported in the status, not fatal: the network
connector checks and retries it).  With ``services/gateway/listen`` off it
opens no port at all (a node behind NAT): service_proxy_transport then routes
its packets through a router and publishes the router as its contact
(:meth:`GatewayService.wanted_contacts` decides what is published).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from bitnode.errors import BitnodeError, Conflict, Unavailable
from bitnode.main.options import BOOLEAN, DISK_SPACE, FLOAT, INTEGER, STRING, Option
from bitnode.main.schema import TCP_INTERFACE_KEY, TCP_PORT_KEY
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.transport.gateway import Gateway
from bitnode.transport.limits import PeerLimits
from bitnode.transport.packet import MAX_HEADER
from bitnode.transport.tcp import PROXY_SCHEME, TCP_SCHEME
from bitnode.userid.id_service import IdentityService

PREFIX = "services/gateway/"
_WILDCARDS = ("", "0.0.0.0", "::")


class GatewayService(Service):
    """Owns the gateway (signed packets over TCP) of one node."""

    name = "service_gateway"
    requires = {"identity": IdentityService}
    description = "Signed packets to and from other nodes over TCP"
    options = (
        Option(PREFIX + "packet-timeout", FLOAT, 30.0,
               "Seconds to wait for a peer's Ack, Fail or reply to a packet.", minimum=0.1, maximum=3600.0),
        Option(PREFIX + "connect-timeout", FLOAT, 10.0,
               "Seconds to wait for a TCP connection to a peer.", minimum=0.1, maximum=300.0, restart_needed=True),
        Option(PREFIX + "idle-timeout", FLOAT, 300.0,
               "Seconds without traffic before a connection is closed (0: never).", minimum=0.0,
               restart_needed=True),
        Option(PREFIX + "max-frame-size", DISK_SPACE, 16 * 1024 * 1024,
               "Largest packet payload sent or accepted; a bigger frame closes the connection.",
               minimum=64 * 1024, maximum=1024 ** 3, restart_needed=True),
        Option(PREFIX + "flood-limit", INTEGER, 2000,
               "Frames per second one connection may send before it is closed (0: no limit).", minimum=0,
               restart_needed=True),
        Option(PREFIX + "replay-window", FLOAT, 900.0,
               "How old a packet's date may be; replays inside it are refused.",
               minimum=10.0, maximum=86400.0, restart_needed=True),
        Option(PREFIX + "replay-max-future", FLOAT, 60.0,
               "Seconds a packet's date may be ahead of our clock; later ones are refused (dropped.too_new).",
               minimum=1.0, maximum=3600.0, restart_needed=True),
        Option(PREFIX + "replay-min-window", FLOAT, 30.0,
               "A flood never shortens the replay window below this; past it new packets are refused "
               "(dropped.replay_full).", minimum=1.0, maximum=3600.0, restart_needed=True),
        Option(PREFIX + "replay-entries", INTEGER, 100_000,
               "Packet ids of confirmed peers remembered against replays, in all.", minimum=100,
               maximum=10_000_000, restart_needed=True),
        Option(PREFIX + "replay-entries-per-peer", INTEGER, 25_000,
               "Packet ids remembered per peer (one busy or hostile peer fills only its own share).",
               minimum=10, maximum=10_000_000, restart_needed=True),
        Option(PREFIX + "introduction-entries", INTEGER, 1000,
               "Packet ids of strangers' introductions remembered (a cache of their own).", minimum=10,
               maximum=1_000_000, restart_needed=True),
        Option(PREFIX + "introductions-per-minute", INTEGER, 60,
               "Introductions from (and answers to) strangers per source IP per minute (0: no limit).",
               minimum=0, maximum=100_000, restart_needed=True),
        Option(PREFIX + "pending-introductions", INTEGER, 16,
               "Strangers' introductions checked with identity servers at once; more are dropped.",
               minimum=1, maximum=1000, restart_needed=True),
        Option(PREFIX + "stranger-max-payload", DISK_SPACE, 16 * 1024,
               "The largest Identity packet a stranger may send; its payload is not read past the header "
               "otherwise.", minimum=4 * 1024, maximum=64 * 1024, restart_needed=True),
        Option(PREFIX + "max-connections-per-ip", INTEGER, 64,
               "Incoming connections from one IP address (0: no limit).", minimum=0, maximum=100_000,
               restart_needed=True),
        Option(PREFIX + "max-connections", INTEGER, 512,
               "Incoming connections in all (0: no limit).", minimum=0, maximum=1_000_000, restart_needed=True),
        Option(PREFIX + "max-buffered", DISK_SPACE, 64 * 1024 * 1024,
               "Bytes of packets being received at once over all connections; past it reading pauses "
               "(one IP may hold half).", minimum=1024 * 1024, maximum=16 * 1024 ** 3, restart_needed=True),
        Option(PREFIX + "challenge-ttl", FLOAT, 300.0,
               "Seconds the challenge we give a peer for CancelService/DeleteBackup/DeleteFile stays valid "
               "(it never survives a restart).", minimum=10.0, maximum=86400.0, restart_needed=True),
        Option(PREFIX + "listen", BOOLEAN, True,
               "Accept incoming TCP connections. Off: no listening port at all (a node behind NAT); "
               "service_proxy_transport then routes our packets through a router.", restart_needed=True),
        Option(PREFIX + "tell-peers-on-move", INTEGER, 50,
               "When my identity moves to another identity server, how many recent peers are sent it at once.",
               minimum=0, maximum=10_000),
        Option(PREFIX + "external-host", STRING, "",
               "Host written into our tcp:// contact (empty: the address STUN servers see us at when some are "
               "configured, else the listening interface).",
               pattern=r"[A-Za-z0-9.:\-]*", restart_needed=True),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.gateway: Optional[Gateway] = None
        self.contacts_error = ""
        #: Set by service_proxy_transport: ``() -> list[str] | None``, the contacts to publish while we are
        #: routed (a router's ``proxy://``), None while we are not.
        self.routed_contacts: Optional[Callable[[], Optional[list[str]]]] = None
        ctx.events.subscribe(self._on_event)

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Deferred:
        """Build the gateway and listen; fails with Conflict when there is no identity yet."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        identity = self.deps.identity
        if not identity.my_global_id():
            raise Conflict("no identity: call identity_create first")
        if identity.packet_signer() is None:
            raise Conflict("no packet-signing key: recover the identity with identity_recover")
        settings = self.ctx.settings
        interface = settings.get(TCP_INTERFACE_KEY)
        external = settings.get(PREFIX + "external-host")
        if not external and interface in _WILDCARDS:
            self.log.warn("listening on all interfaces without {key}: advertising 127.0.0.1 until STUN "
                          "tells my external address", key=PREFIX + "external-host")
            external = "127.0.0.1"
        flood = settings.get(PREFIX + "flood-limit")
        gateway = Gateway(
            self.ctx.clock, self.ctx.reactor, identity, self.ctx.automats,
            interface=interface or "0.0.0.0",
            advertise_host=external,
            packet_timeout=settings.get(PREFIX + "packet-timeout"),
            idle_timeout=settings.get(PREFIX + "idle-timeout"),
            max_frame=settings.get(PREFIX + "max-frame-size") + MAX_HEADER,
            max_frames_per_second=flood or None,
            connect_timeout=settings.get(PREFIX + "connect-timeout"),
            replay_window=settings.get(PREFIX + "replay-window"),
            limits=self.peer_limits(),
        )
        if settings.get(PREFIX + "listen"):
            try:
                await gateway.listen(settings.get(TCP_PORT_KEY))
            except Exception:
                await gateway.stop()
                raise
        self.gateway = gateway
        settings.add_listener(PREFIX + "packet-timeout", self._timeout_changed)
        if gateway.contact is not None:
            self.log.info("gateway of {me} listening at {contact}", me=gateway.my_id, contact=gateway.contact)
        else:
            self.log.info("gateway of {me} accepts no connection ({key} is off): it needs a router",
                          me=gateway.my_id, key=PREFIX + "listen")
        try:
            await self.ensure_contacts()
        except BitnodeError as err:
            self.log.warn("could not publish our contact {contact}: {err}", contact=gateway.contact, err=err)

    def peer_limits(self) -> PeerLimits:
        """The :class:`~bitnode.transport.limits.PeerLimits` the settings say."""
        get = self.ctx.settings.get
        return PeerLimits(
            replay_future=get(PREFIX + "replay-max-future"),
            replay_min_window=get(PREFIX + "replay-min-window"),
            replay_entries=get(PREFIX + "replay-entries"),
            replay_entries_per_peer=get(PREFIX + "replay-entries-per-peer"),
            introduction_entries=get(PREFIX + "introduction-entries"),
            introductions_per_minute=get(PREFIX + "introductions-per-minute"),
            pending_introductions=get(PREFIX + "pending-introductions"),
            max_stranger_body=get(PREFIX + "stranger-max-payload"),
            connections_per_ip=get(PREFIX + "max-connections-per-ip"),
            connections=get(PREFIX + "max-connections"),
            max_buffered=get(PREFIX + "max-buffered"),
            challenge_ttl=get(PREFIX + "challenge-ttl"),
        )

    def stop(self) -> Optional[Deferred]:
        """Fail packets in flight, close every connection and the listening port."""
        gateway, self.gateway = self.gateway, None
        if gateway is None:
            return None
        self.ctx.settings.remove_listener(PREFIX + "packet-timeout", self._timeout_changed)
        return gateway.stop()

    def status(self) -> dict:
        """Facts for service_info."""
        gateway = self.gateway
        if gateway is None:
            return {}
        stats = gateway.stats
        return {
            "global_id": gateway.my_id,
            "contact": gateway.contact,
            "listening": gateway.is_listening(),
            "connections": len(gateway.transport.connections()),
            "packets_in": stats.packets_in,
            "packets_out": stats.packets_out,
            "dropped": stats.as_dict()["dropped_total"],
            "contacts_error": self.contacts_error,
            "limits": gateway.limits_stats(),
            "routing": gateway.routing_stats(),
        }

    # -- helpers for others -----------------------------------------------------

    def require_gateway(self) -> Gateway:
        """The running gateway; ``Unavailable`` (503) when the service is not on."""
        if self.gateway is None:
            raise Unavailable("service_gateway is not running")
        return self.gateway

    def wanted_contacts(self) -> list[str]:
        """The contacts our identity should publish: the one place that decides them.

        While we are routed (:attr:`routed_contacts` says so) the router's
        ``proxy://`` contact, else the ``tcp://`` address we listen on (none
        when we do not listen); then the identity's other contacts, kept.
        """
        gateway = self.require_gateway()
        me = self.deps.identity.my_identity()
        others = [c for c in (me.contacts if me is not None else ()) if not c.startswith((TCP_SCHEME, PROXY_SCHEME))]
        routed = self.routed_contacts() if self.routed_contacts is not None else None
        if routed is not None:
            return list(routed) + others
        return ([gateway.contact] if gateway.contact is not None else []) + others

    def advertise_external(self, host: str) -> Deferred:
        """Deferred[bool]: my contact names ``host`` (learnt by STUN) from now on, published; True if it changed.

        Does nothing (False) when the user fixed the host
        (``services/gateway/external-host``): that always wins.
        """
        gateway = self.require_gateway()
        if self.ctx.settings.get(PREFIX + "external-host"):
            return succeed(False)
        changed = gateway.set_advertised(host)
        d = self.ensure_contacts()
        return d.addCallback(lambda _: changed)

    def ensure_contacts(self) -> Deferred:
        """Publish a new revision of our identity if its contacts are not where we listen.

        Fires with True when a new revision was made, False when the contacts
        were already right.
        """
        return Deferred.fromCoroutine(self._ensure_contacts())

    async def _ensure_contacts(self) -> bool:
        identity = self.deps.identity
        me = identity.my_identity()
        wanted = self.wanted_contacts()
        if me is not None and list(me.contacts) == wanted:
            self.contacts_error = ""
            return False
        try:
            await identity.update_contacts(wanted)
        except BitnodeError as err:
            self.contacts_error = str(err)
            raise
        self.contacts_error = ""
        return True

    # -- reacting to the node ---------------------------------------------------------

    def _timeout_changed(self, key: str, old: Any, new: Any) -> None:
        if self.gateway is not None:
            self.gateway.packet_timeout = float(new)

    def _on_event(self, event: Any) -> None:
        """Start once an identity exists (the driver then starts enabled dependents); stop when it is erased.

        When my identity moved to another primary identity server (a new
        global id), the gateway sends as the new one, still accepts the old
        ones, and tells the peers it talked to lately.
        """
        lifecycle = self.lifecycle
        if event.event_id in ("my-identity-changed", "my-identity-rotated") and self.gateway is not None:
            self.gateway.follow_identity()
            if event.event_id == "my-identity-rotated":
                told = self.gateway.introduce_to_recent(self.ctx.settings.get(PREFIX + "tell-peers-on-move"))
                self.log.info("my identity moved to {new}: told {count} peer(s)", new=self.gateway.my_id,
                              count=len(told))
            return
        if event.event_id == "my-identity-created":
            if lifecycle.is_on() or not lifecycle.enabled():
                return
            if not self.deps.is_on("identity"):
                return
            d = lifecycle.start()
        elif event.event_id == "my-identity-erased" and lifecycle.is_on():
            # restarting without an identity leaves the service FAILED with the reason, dependents off
            d = lifecycle.restart()
        else:
            return
        d.addErrback(lambda failure: self.log.failure("{name} did not follow {event}", failure, name=self.name,
                                                      event=event.event_id))
