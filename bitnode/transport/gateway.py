"""The gateway: this node's packets in and out, over one TCP transport.

Outgoing, :meth:`Gateway.send` runs a :class:`~bitnode.transport.packet_out.PacketOut`
machine per packet.  Packets for one peer go through that peer's queue, in
order: the first one resolves the peer's address (an open connection with
them if there is one, else the first address of their identity's contacts,
``tcp://`` before ``proxy://``, fetched through the identity provider; while
we are routed, our router's — see :mod:`bitnode.transport.routing`), and every packet reuses
the transport's connection.  If a cached address refuses, the identity is
fetched again once (contacts change when a node restarts on another port).

Incoming, every valid packet (the transport has already checked framing,
signature, recipient and replay, and counted what it dropped) is first
matched against the packets waiting for an answer, by ``(sender,
packet_id)``; a match is that packet's ``Ack``, ``Fail`` or reply.  Otherwise
it goes to the route the services registered for it on :attr:`Gateway.router`
(:mod:`bitnode.transport.router`).  ``Ack``/``Fail``
that match nothing (late or unsolicited) and commands nobody handles are
dropped and counted (``unmatched_response``, ``no_handler``).

``Identity`` is handled here: its payload is the sender's signed identity
document, which updates the identity cache (a newer revision, same pinned
key), and the sender gets an ``Ack`` (``user_ping`` is built on that).  A
sender we know no key for may introduce itself this way; how such a packet
gets through and is confirmed before anything is cached or answered is in
:mod:`bitnode.transport.introduction`.

Payloads travel raw in one frame (see :mod:`bitnode.transport.framing`): a
packet payload is held in memory whole on both sides, up to ``max_frame``
bytes; larger data must be cut by the caller (storage sends blocks).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict, deque
from typing import Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode import globalid
from bitnode.errors import BadRequest, BitnodeError, Conflict, NotFound, TooManyRequests, Unavailable
from bitnode.transport import challenge
from bitnode.transport.challenge import DESTRUCTIVE, Challenges
from bitnode.transport.commands import Command, command_name
from bitnode.transport.introduction import (
    IntroducingTransport,
    IntroductionRefused,
    asks_introduction,
    carried_identity,
    confirm_introduction,
    introduced_identity,
)
from bitnode.transport.limits import PeerLimits, RateLimit
from bitnode.transport.packet import DEFAULT_MAX_PAYLOAD, MAX_HEADER, Packet, Signer, Verifier
from bitnode.transport.packet_out import PacketOut, gateway_stopped
from bitnode.transport.reintroduction import REFRESH_INTERVAL, Reintroduction
from bitnode.transport.replay import ReplayCache
from bitnode.transport.router import PacketRouter
from bitnode.transport.routing import Routing
from bitnode.transport.stats import PacketStats
from bitnode.transport.tcp import Address, contact_addresses, parse_tcp_contact  # noqa: F401 (re-exported)
from bitnode.userid.identity import Identity

DEFAULT_MAX_FRAME = DEFAULT_MAX_PAYLOAD + MAX_HEADER

_RESPONSE_EVENTS = {Command.ACK.value: "ack", Command.FAIL.value: "fail"}


class IdentityProvider(Protocol):
    """What the gateway needs from the identity service (``service_identity``).

    ``my_global_id()`` / ``my_identity()`` (None before an identity exists),
    ``packet_signer()`` (``.algorithm``, ``.sign(data)``), ``resolve_verifier(
    global_id)`` (synchronous, None for an unknown user), ``fetch_identity(
    idurl_or_global_id, refresh, stranger)`` (a Deferred Identity, from the cache
    unless ``refresh``; ``stranger``: on behalf of a stranger's introduction), and ``.cache.put(identity)`` (an
    :class:`~bitnode.userid.idcache.IdentityCache`) to store what peers send.
    """

    cache: Any

    def my_global_id(self) -> Optional[str]: ...

    def my_identity(self) -> Optional[Identity]: ...

    def packet_signer(self) -> Signer: ...

    def resolve_verifier(self, global_id: str) -> Optional[Verifier]: ...

    def fetch_identity(self, idurl_or_global_id: str, refresh: bool = False, stranger: bool = False) -> Deferred: ...


class _Peer:
    """What the gateway knows about one remote node."""

    def __init__(self, global_id: str) -> None:
        self.global_id = global_id
        self.address: Optional[Address] = None  # the connection last used with them
        self.tail: Deferred[None] = succeed(None)  # the end of their send queue
        self.queued = 0
        self.refreshed_at = float("-inf")
        self.introduced_at = float("-inf")
        self.challenge: Optional[bytes] = None  # the nonce they gave us for destructive commands


#: Names of one peer looked at when matching its answer (a moved identity lists at most 10 sources).
MAX_NAMES = 10


class Gateway(Reintroduction, Routing):
    """Signed packets to and from other nodes, over one TCP transport.

    Peers that moved or forgot us are found again: see :mod:`bitnode.transport.reintroduction`.
    Through a router, or for nodes routed through us: see :mod:`bitnode.transport.routing`.

    :param clock: time source (timeouts, packet dates).
    :param reactor: provides ``listenTCP``/``connectTCP``.
    :param identity: the :class:`IdentityProvider`; an identity must exist.
    :param registry: the node's automats registry (packet_out machines live there).
    :param interface: address to listen on.
    :param advertise_host: host written into our ``tcp://`` contact
        (defaults to ``interface``).
    :param packet_timeout: default seconds to wait for an answer.
    :param idle_timeout: close connections idle this long (0: never).
    :param max_frame: largest frame (header + payload) sent or accepted.
    :param max_frames_per_second: per-connection flood limit (None: off).
    :param connect_timeout: seconds to wait for an outgoing connection.
    :param replay_window: how old a packet's date may be.
    :param limits: what peers and strangers may cost (:class:`~bitnode.transport.limits.PeerLimits`).
    :param history_size: finished packets kept for ``packets_list``.
    :param max_queue: packets waiting per peer before sends are refused.
    :param max_peers: peers remembered (idle ones are forgotten first).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        reactor: IReactorTCP,
        identity: IdentityProvider,
        registry: Any = None,
        *,
        interface: str = "127.0.0.1",
        advertise_host: str = "",
        packet_timeout: float = 30.0,
        idle_timeout: float = 300.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_frames_per_second: Optional[int] = None,
        connect_timeout: float = 10.0,
        replay_window: float = 900.0,
        limits: PeerLimits = PeerLimits(),
        history_size: int = 100,
        max_queue: int = 1000,
        max_peers: int = 10_000,
    ) -> None:
        my_id = identity.my_global_id()
        if not my_id:
            raise Conflict("no identity: call identity_create first")
        self.clock = clock
        self.identity = identity
        self.my_id = my_id
        self.packet_timeout = float(packet_timeout)
        self.advertise_host = advertise_host or interface
        self.advertise_port: Optional[int] = None
        self.max_queue = max_queue
        self.max_peers = max_peers
        self.stats = PacketStats()
        self.limits = limits

        def replay_cache(entries: int, per_sender: Optional[int]) -> ReplayCache:
            # refuse_before_start: a packet captured before a restart cannot be played after it
            return ReplayCache(clock, window_seconds=replay_window, max_entries=entries,
                               max_future_seconds=limits.replay_future, min_window_seconds=limits.replay_min_window,
                               max_per_sender=per_sender, refuse_before_start=True)

        self.transport = IntroducingTransport(
            clock, reactor, my_id, identity.resolve_verifier, self.stats,
            replay_cache(limits.replay_entries, limits.replay_entries_per_peer),
            max_frame, idle_timeout, interface=interface, connect_timeout=connect_timeout,
            max_frames_per_second=max_frames_per_second, max_connections_per_ip=limits.connections_per_ip,
            max_connections=limits.connections, max_buffered=limits.max_buffered,
            introduce=introduced_identity, on_stranger=self._on_stranger,
            introduction_replay=replay_cache(limits.introduction_entries, None),
            strangers=RateLimit(clock, per_minute=limits.introductions_per_minute),
            max_stranger_body=limits.max_stranger_body,
        )
        self._confirming = 0
        self._introductions: Counter[str] = Counter()
        self.challenges = Challenges(clock, ttl=limits.challenge_ttl)
        for command in Command:
            self.transport.register_handler(command, self._on_packet)
        self.port: Optional[int] = None
        self._registry = registry
        #: Where incoming packets that answer nothing go (services register their commands here).
        self.router = PacketRouter(self._refuse)
        self._listeners: list[Callable[[str, str], Any]] = []
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._live: dict[PacketOut, None] = {}
        self._waiting: dict[tuple[str, str], PacketOut] = {}
        self._incoming: dict[int, dict] = {}
        self._incoming_seq = 0
        self._history: deque[dict] = deque(maxlen=history_size)
        self._finished: Counter[str] = Counter()
        self._stopped = False
        self._init_routing()
        self.follow_identity()

    # -- lifecycle ----------------------------------------------------------

    def follow_identity(self) -> None:
        """My identity changed: send as my current global id; accept packets for any of my names.

        A moved identity (a new primary identity server) has a new global id;
        peers that still know an old one reach us under it.
        """
        current = self.identity.my_global_id()
        if not current:
            return
        names = getattr(self.identity, "my_names", None)
        self.my_id = current
        self.transport.my_id = current
        self.transport.my_names = frozenset([current, *(names() if names is not None else ())])

    def introduce_to_recent(self, limit: int = 50) -> list[str]:
        """Send my identity to the peers used most recently (at most ``limit``); answers are not waited for.

        After my identity moved, they learn my new name and contacts now
        rather than at their next packet.
        """
        peers = [peer_id for peer_id in reversed(self._peers) if peer_id not in self.transport.my_names][:limit]
        for peer_id in peers:
            self.ping(peer_id).addErrback(
                lambda f, who=peer_id: self.log.info("could not tell {who} my new identity: {err}", who=who,
                                                     err=f.getErrorMessage()))
        return peers

    def listen(self, port: int = 0) -> Deferred[int]:
        """Listen for peers; fires with the real port (useful with port 0)."""
        d = self.transport.listen(port)

        def listening(real_port: int) -> int:
            self.port = real_port
            return real_port

        return d.addCallback(listening)

    @property
    def contact(self) -> Optional[str]:
        """Our ``tcp://host:port`` once listening (the advertised port, if one was set, else the real one)."""
        if self.port is None:
            return None
        return f"tcp://{self.advertise_host}:{self.advertise_port or self.port}"

    def set_advertised(self, host: str, port: Optional[int] = None) -> bool:
        """Publish ``host`` (and ``port``, e.g. a NAT's mapping learnt by STUN) in our ``tcp://`` contact.

        Only the contact changes (True when it did); call ``GatewayService.ensure_contacts`` to publish it.
        """
        before = self.contact
        self.advertise_host, self.advertise_port = host, port
        return self.contact != before

    def is_listening(self) -> bool:
        """Whether the transport accepts connections."""
        return not self._stopped and bool(self.transport.listening_ports())

    def close_connections(self) -> Deferred[None]:
        """Close every open connection (they are made again by the next send)."""
        waits = []
        for row in self.transport.connections():
            conn = self.transport.connection_to((row["host"], row["port"]))
            if conn is not None:
                waits.append(conn.when_closed())
                conn.closeConnection()
        return gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    def stop(self) -> Deferred[None]:
        """Fail the packets in flight with ``Unavailable`` and close the transport."""
        self._stopped = True
        for machine in list(self._live):
            machine.event("cancel", gateway_stopped())
        return self.transport.stop()

    # -- handlers and listeners ---------------------------------------------

    def add_listener(self, listener: Callable[[str, str], Any]) -> None:
        """Call ``listener(peer_id, what)`` on traffic news.

        ``what`` is ``"received"`` (a valid packet came from them),
        ``"unreachable"`` (a send to them failed) or ``"timeout"`` (they did
        not answer in time).
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[str, str], Any]) -> None:
        """Stop calling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- sending --------------------------------------------------------------

    def build(self, command: str | Command, remote_id: str, payload: bytes = b"", key_id: str = "",
              packet_id: Optional[str] = None, as_name: Optional[str] = None,
              payload_sha256: Optional[bytes] = None) -> Packet:
        """A packet from us to ``remote_id`` (a global id or an IDURL), signed now.

        A destructive command carries the challenge the peer last gave us, if any
        (see :mod:`bitnode.transport.challenge`). ``as_name``: another of my
        names to send as (an answer goes out under the name it was sent to).
        ``payload_sha256``: the SHA-256 of ``payload`` computed by the caller
        (trusted, see :meth:`Packet.create`).
        """
        me = as_name if as_name is not None and as_name in self.transport.my_names else self.my_id
        remote = str(globalid.to_global_id(remote_id))
        if command_name(command) in DESTRUCTIVE:
            peer = self._peers.get(remote)
            if peer is not None and peer.challenge is not None:
                payload = challenge.wrap(peer.challenge, challenge.unwrap(payload)[1])
                payload_sha256 = None  # not the payload the caller hashed
        return Packet.create(self.clock, command, me, me, remote, payload,
                             self.identity.packet_signer(), key_id=key_id, packet_id=packet_id,
                             payload_sha256=payload_sha256)

    def send(self, packet: Packet, wait_response: bool = True, timeout: Optional[float] = None) -> Deferred:
        """Send ``packet``; see :mod:`bitnode.transport.packet_out` for what the Deferred fires with."""
        if self._stopped:
            return fail(Unavailable("the gateway is stopped"))
        if packet.creator_id != self.my_id and packet.creator_id not in self.transport.my_names:
            return fail(BadRequest(f"packet was created by {packet.creator_id}, we are {self.my_id}"))
        timeout = self.packet_timeout if timeout is None else timeout
        if not timeout > 0:
            return fail(BadRequest("timeout must be positive"))
        key = (packet.remote_id, packet.packet_id)
        if wait_response and key in self._waiting:
            return fail(Conflict(f"packet {packet.packet_id} to {packet.remote_id} is already waiting"))
        machine = PacketOut(self.clock, packet, self._write, wait_response, timeout,
                            on_finished=self._on_finished, registry=self._registry)
        self._live[machine] = None
        if wait_response:
            self._waiting[key] = machine
        return machine.run()

    def request(self, command: str | Command, remote_id: str, payload: bytes = b"", wait_response: bool = True,
                timeout: Optional[float] = None, key_id: str = "",
                payload_sha256: Optional[bytes] = None) -> Deferred:
        """Build and :meth:`send` a packet in one call (``payload_sha256`` as in :meth:`build`)."""
        try:
            packet = self.build(command, remote_id, payload, key_id=key_id, payload_sha256=payload_sha256)
        except BitnodeError as err:
            return fail(err)
        return self.send(packet, wait_response, timeout)

    def reply(self, incoming: Packet, command: str | Command, payload: bytes = b"") -> Deferred:
        """Answer ``incoming`` (``Ack``, ``Fail`` or a reply) with its packet id; fires once sent.

        The answer is signed under the name ``incoming`` was sent to (an old
        name of mine, if the peer has not heard that my identity moved), so
        the peer matches it to its request.
        """
        try:
            packet = self.build(command, incoming.creator_id, payload, packet_id=incoming.packet_id,
                                as_name=incoming.remote_id)
        except BitnodeError as err:
            return fail(err)
        return self.send(packet, wait_response=False)

    def ping(self, remote_id: str, timeout: Optional[float] = None) -> Deferred:
        """Send our identity document and wait for the peer's ``Ack``."""
        me = self.identity.my_identity()
        if me is None:
            return fail(Conflict("no identity: call identity_create first"))
        return self.request(Command.IDENTITY, remote_id, me.to_xml(), timeout=timeout)

    def _write(self, machine: PacketOut) -> Deferred[None]:
        """PacketOut's ``write``: queue behind the peer's earlier packets."""
        peer = self._peer(machine.packet.remote_id)
        if peer.queued >= self.max_queue:
            return fail(TooManyRequests(f"{peer.queued} packets already queued for {peer.global_id}"))
        peer.queued += 1
        outcome: Deferred[None] = Deferred()

        def deliver(_: Any) -> Deferred[None]:
            d = Deferred.fromCoroutine(self._deliver(peer, machine))
            d.addBoth(settle)
            return d

        def settle(result: Any) -> None:
            peer.queued -= 1
            if isinstance(result, Failure):
                outcome.errback(result)
            else:
                outcome.callback(None)
            return None  # the queue goes on whatever happened to this packet

        peer.tail.addCallback(deliver)
        return outcome

    async def _deliver(self, peer: _Peer, machine: PacketOut) -> None:
        if machine.destroyed:
            return  # timed out or cancelled while queued: nothing to send
        packet = machine.packet
        routed = self._routed_address(peer.global_id)
        if routed is not None:
            await self._know(peer)
            await self.transport.send(routed, packet)
            return
        address = self._open_address(peer)
        if address is not None:
            try:
                await self.transport.send(address, packet)
                return
            except Unavailable:
                peer.address = None  # that connection just went away: find them through their identity
                if machine.destroyed:
                    return
        address = await self._resolve(peer, refresh=False)
        if machine.destroyed:
            return
        try:
            await self.transport.send(address, packet)
        except Unavailable:
            if self.clock.seconds() - peer.refreshed_at < REFRESH_INTERVAL:
                raise
            fresh = await self._resolve(peer, refresh=True)
            if fresh == address or machine.destroyed:
                raise
            address = fresh
            await self.transport.send(address, packet)
        peer.address = address

    def peer_connection(self, peer_id: str) -> Any:
        """The open connection ``peer_id``'s last packet came on (or ours to it), if any.

        Its ``direction`` says who dialled: ``"in"`` (they connected to us) or ``"out"``.
        """
        peer = self._peers.get(peer_id)
        address = self._open_address(peer) if peer is not None else None
        return self.transport.connection_to(address) if address is not None else None

    def _open_address(self, peer: _Peer) -> Optional[Address]:
        if peer.address is not None and self.transport.connection_to(peer.address) is not None:
            return peer.address
        return None

    async def _know(self, peer: _Peer, refresh: bool = False) -> Identity:
        """The peer's identity (cached, else fetched): its answers are checked with its key."""
        if refresh:
            peer.refreshed_at = self.clock.seconds()
        try:
            return await self.identity.fetch_identity(peer.global_id, refresh=refresh)
        except NotFound as err:
            raise NotFound(f"unknown user {peer.global_id}: {err}") from err

    async def _resolve(self, peer: _Peer, refresh: bool) -> Address:
        identity = await self._know(peer, refresh)
        addresses = contact_addresses(identity.contacts)
        if not addresses:
            raise Unavailable(f"{peer.global_id} publishes no tcp or proxy contact")
        return addresses[0]

    def _on_finished(self, machine: PacketOut) -> None:
        self._live.pop(machine, None)
        if self._waiting.get(machine.key) is machine:
            del self._waiting[machine.key]
        self._finished[machine.state] += 1
        self._history.append(machine.info())
        if machine.state == "TIMEOUT":
            self._recheck(machine.packet.remote_id)
            self._tell(machine.packet.remote_id, "timeout")
        elif machine.send_failure is not None and machine.send_failure.check(Unavailable):
            self._tell(machine.packet.remote_id, "unreachable")

    # -- receiving --------------------------------------------------------------

    def _on_packet(self, packet: Packet, address: Address) -> Any:
        """Every valid incoming packet: an answer, an introduction, or a handler's job."""
        key = (packet.creator_id, packet.packet_id)
        document = self.transport.introductions.pop(key, None)
        if document is not None:
            # not trusted yet: no routing, no answers matched, until the id server agrees
            if self._confirming >= self.limits.pending_introductions:
                self.stats.record_drop("introductions_busy")
                self._introductions["busy"] += 1
                return None
            self._confirming += 1
            d = Deferred.fromCoroutine(self._on_identity(packet, address, document))
            return self._track(packet, d.addBoth(self._confirmation_done))
        self._seen(packet.creator_id, address)
        refused_id = asks_introduction(packet)
        if refused_id is not None:
            machine = self._waiting_for(packet.creator_id, refused_id)
            if machine is not None and not machine.reintroduced:
                machine.reintroduced = True
                return Deferred.fromCoroutine(self._reintroduce(machine, packet))
            if machine is None:
                # a packet sent without waiting is lost, but the next ones will get through
                self._introduce_once(packet.creator_id)
            key = (packet.creator_id, refused_id)  # asked twice: the packet fails with the refusal
        machine = self._waiting_for(*key)
        if machine is not None:
            nonce = challenge.asks_challenge(packet.payload) if packet.command == Command.FAIL.value else None
            if nonce is not None and machine.packet.command in DESTRUCTIVE and not machine.challenged:
                machine.challenged = True
                return Deferred.fromCoroutine(self._answer_challenge(machine, nonce, packet))
            machine.event(_RESPONSE_EVENTS.get(packet.command, "reply"), packet)
            return None
        if packet.command in _RESPONSE_EVENTS:
            self.stats.record_drop("unmatched_response")
            return None
        if packet.command == Command.IDENTITY.value:
            return self._track(packet, Deferred.fromCoroutine(self._on_identity(packet, address, None)))
        if packet.command in DESTRUCTIVE:
            packet = self._challenged(packet)
            if packet is None:
                return None
        handler = self.router.handler_for(packet)
        if handler is None:
            self.stats.record_drop("no_handler")
            return None
        return self._track(packet, maybeDeferred(handler, packet, address))

    def _waiting_for(self, peer_id: str, packet_id: str) -> Optional[PacketOut]:
        """Our packet ``packet_id`` sent to ``peer_id``, or to another name of that peer (it moved)."""
        machine = self._waiting.get((peer_id, packet_id))
        if machine is None:
            names = getattr(self.identity, "names", None)
            for name in names(peer_id)[:MAX_NAMES] if names is not None else ():
                machine = self._waiting.get((name, packet_id))
                if machine is not None:
                    break
        return machine

    def _challenged(self, packet: Packet) -> Optional[Packet]:
        """A destructive packet with this process's nonce for its sender, unwrapped; else None, refused.

        The refusal hands out the nonce to send again with (see :mod:`bitnode.transport.challenge`).
        """
        nonce, payload = challenge.unwrap(packet.payload)
        if self.challenges.accept(packet.creator_id, nonce):
            return dataclasses.replace(packet, payload=payload)
        d = self.reply(packet, Command.FAIL, challenge.challenge_refusal(self.challenges.issue(packet.creator_id)))
        d.addErrback(lambda f: self.log.info("could not challenge {who}: {err}", who=packet.creator_id,
                                             err=f.getErrorMessage()))
        return None

    async def _answer_challenge(self, machine: PacketOut, nonce: bytes, refusal: Packet) -> None:
        """The peer wants a fresh challenge for our destructive packet: send it again, once, carrying ``nonce``.

        A new packet (new id, the nonce in its payload) takes the old one's place in the same machine,
        so the caller gets the answer to it; if that cannot be sent the caller gets the refusal.
        """
        peer = self._peer(machine.packet.remote_id)
        peer.challenge = nonce
        self.challenges.counts["answered"] += 1
        old = machine.packet
        try:
            # the same packet but for its id and date, now carrying the nonce (the owner may not be us)
            fresh = Packet.create(self.clock, old.command, old.owner_id, self.my_id, old.remote_id,
                                  challenge.wrap(nonce, challenge.unwrap(old.payload)[1]),
                                  self.identity.packet_signer(), key_id=old.key_id)
            if machine.destroyed:
                return
            if self._waiting.get(machine.key) is machine:
                del self._waiting[machine.key]
            machine.packet = fresh
            self._waiting[machine.key] = machine
            await self._write(machine)
        except Exception as err:  # whatever went wrong, the peer's refusal stands
            self.log.info("could not answer the challenge of {who}: {err}", who=old.remote_id, err=err)
            if not machine.destroyed:
                machine.event("fail", refusal)

    async def _on_identity(self, packet: Packet, address: Address, introduced: Optional[Identity]) -> None:
        """Cache the sender's identity document and Ack it (Fail with the reason if refused)."""
        if introduced is None:
            try:
                document = carried_identity(packet)
            except BadRequest as err:
                self.stats.record_drop("bad_identity")
                await self._answer(packet, Command.FAIL, str(err))
                return
        else:
            try:
                await confirm_introduction(self.identity.fetch_identity, introduced)
            except IntroductionRefused:
                self._introductions["refused"] += 1
                self.stats.record_drop("bad_introduction")
                self.log.warn("{who} introduced itself with a key its identity server does not publish",
                              who=packet.creator_id)
                return
            except BitnodeError as err:
                self._introductions["unconfirmed"] += 1
                self.stats.record_drop("bad_introduction")
                self.log.info("could not check {who}'s identity: {err}", who=packet.creator_id, err=err)
                return
            document = introduced
            self._introductions["confirmed"] += 1
            self.transport.confirmed(packet)
            self._seen(packet.creator_id, address)
        try:
            self._remember(document)
        except BitnodeError as err:
            await self._answer(packet, Command.FAIL, str(err))
            return
        await self._answer(packet, Command.ACK, "")

    def _confirmation_done(self, result: Any) -> Any:
        self._confirming -= 1
        return result

    def _remember(self, document: Identity) -> None:
        # the cache enforces the pinned key and revision order, and raises why it refuses
        self.identity.cache.put(document)

    def _refuse(self, packet: Packet, text: str) -> Deferred:
        return Deferred.fromCoroutine(self._answer(packet, Command.FAIL, text))

    async def _answer(self, packet: Packet, command: Command, text: str) -> None:
        try:
            await self.reply(packet, command, text.encode("utf-8"))
        except BitnodeError as err:
            self.log.info("could not answer {who}: {err}", who=packet.creator_id, err=err)

    def _track(self, packet: Packet, d: Deferred) -> Deferred:
        """Show a packet being handled in ``packets_list`` until its handler is done."""
        self._incoming_seq += 1
        token = self._incoming_seq
        self._incoming[token] = {
            "direction": "in", "state": "HANDLING", "command": packet.command, "packet_id": packet.packet_id,
            "creator_id": packet.creator_id, "payload_size": len(packet.payload), "started": self.clock.seconds(),
        }

        def done(result: Any) -> Any:
            self._incoming.pop(token, None)
            return result

        return d.addBoth(done)

    def _seen(self, peer_id: str, address: Address) -> None:
        peer = self._peer(peer_id)
        peer.address = address
        self._tell(peer_id, "received")

    def _peer(self, peer_id: str) -> _Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer(peer_id)
            self._forget_idle_peers()
        else:
            self._peers.move_to_end(peer_id)
        return peer

    def _forget_idle_peers(self) -> None:
        excess = len(self._peers) - self.max_peers
        for peer_id in list(self._peers):
            if excess <= 0:
                break
            if self._peers[peer_id].queued == 0:
                del self._peers[peer_id]
                excess -= 1

    def _tell(self, peer_id: str, what: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(peer_id, what)
            except Exception:
                self.log.failure("gateway listener failed on {what} for {peer}", what=what, peer=peer_id)

    # -- reporting -----------------------------------------------------------------

    def packets(self) -> list[dict]:
        """Packets in flight (out, then in), then the recently finished ones, newest last."""
        rows = [machine.info() for machine in self._live]
        rows += [dict(row) for row in self._incoming.values()]
        rows += [dict(row) for row in self._history]
        return rows

    def stats_dict(self) -> dict:
        """Transport counters (with every drop reason) plus the gateway's own."""
        data = self.stats.as_dict()
        data["gateway"] = {
            "outgoing_in_flight": len(self._live),
            "waiting_response": len(self._waiting),
            "incoming_in_flight": len(self._incoming),
            "finished": {state: self._finished[state] for state in ("DONE", "FAILED", "TIMEOUT", "CANCELLED")},
            "peers": len(self._peers),
        }
        data["limits"] = self.limits_stats()
        return data

    def limits_stats(self) -> dict:
        """What peers and strangers cost now, against the limits (``packets_stats`` and ``network_status``).

        ``connections`` (incoming, refused_per_ip, refused_total), ``buffer``
        (bytes_buffered, peak, waits), ``replay`` (the confirmed peers' cache),
        ``introductions`` (rate_limited per IP, their own replay cache, and how
        many were confirmed, refused, left unconfirmed or dropped as busy).
        """
        limits = self.transport.limits_stats()
        limits["challenges"] = self.challenges.stats()
        limits["introductions"].update(
            confirming=self._confirming, max_confirming=self.limits.pending_introductions,
            **{what: self._introductions[what] for what in ("confirmed", "refused", "unconfirmed", "busy")})
        return limits

    def connections(self) -> list[dict]:
        """Open and pending connections, with the peers using them."""
        users = self._peers_by_address()
        proxy = self._proxy_roles()
        rows = []
        for row in self.transport.connections():
            row = dict(row, protocol="tcp")
            row["peers"] = sorted(users.get((row["host"], row["port"]), ()))
            role = proxy.get((row["host"], row["port"]))
            if role:
                row["proxy"] = role
            rows.append(row)
        return rows

    def streams(self) -> list[dict]:
        """Frames partly received and bytes still waiting to be written, per connection.

        Only what is in flight right now: an idle node answers an empty list.
        """
        users = self._peers_by_address()
        rows = []
        for row in self.transport.connections():
            conn = self.transport.connection_to((row["host"], row["port"]))
            if conn is None:
                continue
            peers = sorted(users.get(conn.address, ()))
            receiving = conn.receiving
            if receiving is not None:
                done, total = receiving
                rows.append({"protocol": "tcp", "direction": "in", "address": row["address"], "peers": peers,
                             "bytes_done": done, "bytes_total": total,
                             "progress": round(100.0 * done / total, 1) if total else 100.0})
            pending = conn.unsent_bytes()
            if pending:
                rows.append({"protocol": "tcp", "direction": "out", "address": row["address"], "peers": peers,
                             "bytes_pending": pending})
        return rows

    def _peers_by_address(self) -> dict[Address, set[str]]:
        users: dict[Address, set[str]] = {}
        for peer in self._peers.values():
            if peer.address is not None:
                users.setdefault(peer.address, set()).add(peer.global_id)
        return users

