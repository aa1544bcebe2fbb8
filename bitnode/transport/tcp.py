"""Signed packets over TCP: listen, send (reusing connections), validate, dispatch.

Every packet is verified on its own (its ``creator_id`` names the key), so a
connection needs no handshake.  Connections are kept in a table keyed by the
remote socket address: an outgoing one by the address we dialled, an incoming
one by the peer's address as the socket reports it.  A handler receives that
address with each packet, so replying with ``send(address, ...)`` reuses the
connection the packet came in on.

Receive pipeline, in order: frame limits (framing) -> the header alone:
decode -> known command -> recipient is us -> signature over the header,
which covers the payload's SHA-256 (via ``resolve_verifier``) -> replay
window; only then is the payload read and kept (reserved first in the
transport's :class:`~bitnode.transport.limits.BufferBudget`), and once it is
in: its hash -> replay cache -> handler.  A frame whose header fails is read
past without keeping its payload.  Each rejection is counted in
:class:`PacketStats` under its reason and never raises out of the protocol.

Incoming connections are counted per IP and in all
(:class:`~bitnode.transport.limits.ConnectionLimits`); one over a limit is
closed at once.  A sender whose key we do not know gets no further than its
header here; :mod:`bitnode.transport.introduction` decides what such a
header may still do (introduce itself, or be told to).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode.errors import BadRequest, Conflict, Timeout, Unavailable
from bitnode.transport.commands import Command, command_name, is_known
from bitnode.transport.framing import KEEP, SKIP, FrameProtocol
from bitnode.transport.limits import BufferBudget, ConnectionLimits
from bitnode.transport.packet import (
    DIGEST_HOLD,
    MAX_HEADER,
    BadPacket,
    BadSignature,
    Packet,
    PacketHead,
    ResolveVerifier,
    UnknownCommand,
    UnknownSender,
    WrongRecipient,
)
from bitnode.transport.replay import ReplayCache
from bitnode.transport.stats import PacketStats

Address = tuple[str, int]


#: A contact reached directly, and one reached through a router (the router's own TCP address).
TCP_SCHEME = "tcp://"
PROXY_SCHEME = "proxy://"


def parse_tcp_contact(contact: str, scheme: str = TCP_SCHEME) -> Address | None:
    """``tcp://host:port`` (or another ``scheme``) -> ``(host, port)``; None for other protocols or bad text."""
    if not isinstance(contact, str) or not contact.startswith(scheme):
        return None
    host, _, port = contact[len(scheme):].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def contact_addresses(contacts: Any) -> list[Address]:
    """The TCP addresses of an identity's contacts to try, in order: direct (``tcp://``) ones first,
    then routers (``proxy://``: the peer accepts no connection, its router carries its packets)."""
    direct = [parse_tcp_contact(c) for c in contacts]
    routed = [parse_tcp_contact(c, PROXY_SCHEME) for c in contacts]
    return [address for address in direct + routed if address is not None]
Handler = Callable[[Packet, Address], Any]


class RelayHook(Protocol):
    """What a transport asks about frames for someone else (see :class:`bitnode.transport.relay.Relay`).

    ``admit(conn, head, body_length)``: True to keep and forward the frame,
    False when it is nobody's business here (dropped as ``wrong_recipient``);
    raises a :class:`BadPacket` to refuse it with that drop reason.
    ``forward(conn, head_bytes, head, body)``: the frame, whole and with its
    payload hash checked, to pass on unchanged.
    """

    def admit(self, conn: PacketConnection, head: PacketHead, body_length: int) -> bool: ...

    def forward(self, conn: PacketConnection, head_bytes: bytes, head: PacketHead, body: bytes) -> None: ...
#: What a frame's header said about its sender: a verified sender, one introducing itself, or a frame
#: for someone else that this node forwards (:mod:`bitnode.transport.relay`).
VERIFIED = "verified"
INTRODUCTION = "introduction"
RELAYED = "relayed"
#: Default bound on the bytes of payloads being received, over all connections.
DEFAULT_MAX_BUFFERED = 64 * 1024 * 1024


class _Incoming:
    """A frame whose header was accepted; its payload is on the way."""

    __slots__ = ("head", "kind", "error")

    def __init__(self, head: PacketHead, kind: str, error: BadPacket | None = None) -> None:
        self.head = head
        self.kind = kind
        self.error = error  # why the sender could not be verified (for a stranger's packet)
#: Bytes per recv() and per send() on a packet connection. Twisted's defaults (64 KiB in, 128 KiB out)
#: cost a reactor turn and a Python call per 64 KiB of a multi-MiB block; bigger steps cost no copy more.
IO_STEP = 1024 * 1024


class PacketConnection(FrameProtocol):
    """One TCP connection carrying packet frames for a :class:`TCPTransport`."""

    log = Logger()

    def __init__(self, owner: TCPTransport, direction: str, address: Address) -> None:
        super().__init__(
            owner.clock,
            owner.max_frame,
            max_head=MAX_HEADER,
            max_frames_per_second=owner.max_frames_per_second,
            digest_bodies=True,
            budget=owner.budget,
            digest_hold=DIGEST_HOLD,
        )
        self._owner = owner
        self.incoming: _Incoming | None = None  # the frame being received, once its header passed
        self.admitted_ip: str | None = None  # counted in the owner's connection limits
        self.direction = direction
        self.address = address
        self.connected_at = owner.clock.seconds()
        self.last_activity = self.connected_at
        self._idle_call: Any = None
        self._closed_waiters: list[Deferred[None]] = []
        self._lost = False

    def connectionMade(self) -> None:
        """Join the owner's table and start the idle timer."""
        if hasattr(self.transport, "SEND_LIMIT"):  # a real socket transport (tests may use fakes)
            self.transport.bufferSize = IO_STEP
            self.transport.SEND_LIMIT = IO_STEP
        self.connected_at = self.last_activity = self._owner.clock.seconds()
        self._owner._connection_made(self)
        if self._owner.idle_timeout:
            self._idle_call = self._owner.clock.callLater(self._owner.idle_timeout, self._check_idle)

    def dataReceived(self, data: bytes) -> None:
        """Note activity, then cut frames."""
        self.last_activity = self._owner.clock.seconds()
        super().dataReceived(data)

    def headReceived(self, head: bytes, body_length: int) -> str:
        """Let the owner judge the header before the payload is read."""
        return self._owner._head_received(self, head, body_length)

    def frameReceived(self, head: bytes, body: bytes, body_sha256: bytes | None,
                      body_prefix: tuple | None = None) -> None:
        """Hand the frame to the owner's validation pipeline."""
        self._owner._frame_received(self, head, body, body_sha256, body_prefix)

    def frameSkipped(self, head: bytes) -> None:
        """A refused header's payload was read past."""
        self.incoming = None

    def frameRejected(self, reason: str) -> None:
        """Count a stream-level rejection (oversize, malformed prefix, flood)."""
        self._owner.stats.record_drop(reason)

    def send_frame(self, head: bytes, body: bytes) -> int:
        """Write one frame and note activity."""
        self.last_activity = self._owner.clock.seconds()
        return self.sendFrame(head, body)

    def is_usable(self) -> bool:
        """Whether packets may still be sent on this connection."""
        return not (self._lost or self.closing or self.transport is None or self.transport.disconnecting)

    def unsent_bytes(self) -> int:
        """Bytes handed to the socket transport and not written yet (Twisted's write buffers)."""
        transport = self.transport
        if transport is None:
            return 0
        try:
            buffered = len(getattr(transport, "dataBuffer", b"")) - int(getattr(transport, "offset", 0))
            return max(0, buffered) + int(getattr(transport, "_tempDataLen", 0))
        except (TypeError, ValueError):
            return 0

    def _check_idle(self) -> None:
        self._idle_call = None
        if self._lost or self.closing:
            return
        idle_for = self._owner.clock.seconds() - self.last_activity
        if idle_for >= self._owner.idle_timeout:
            self.log.info("closing idle connection {address}", address=self.address)
            self.closeConnection()
        else:
            self._idle_call = self._owner.clock.callLater(self._owner.idle_timeout - idle_for, self._check_idle)

    def when_closed(self) -> Deferred[None]:
        """A Deferred that fires (with None) once the connection is gone."""
        if self._lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closed_waiters.append(waiter)
        return waiter

    def connectionLost(self, reason: Any = None) -> None:
        """Leave the owner's table, stop the idle timer, wake waiters."""
        super().connectionLost(reason)
        self._lost = True
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        self._owner._connection_lost(self)
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def info(self) -> dict:
        """JSON-safe description for ``connections_list``."""
        host, port = self.address
        return {
            "address": f"{host}:{port}",
            "host": host,
            "port": port,
            "direction": self.direction,
            "state": "closing" if self.closing else "open",
            "connected_at": self.connected_at,
            "last_activity": self.last_activity,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


class _Dial:
    """An outgoing connection attempt and its timeout on the injected clock."""

    def __init__(self, attempt: Deferred[Any], timer: Any) -> None:
        self.attempt = attempt
        self.timer = timer
        self.timed_out = False


class _ConnectionFactory(Factory):
    """Builds :class:`PacketConnection` objects for one transport."""

    def __init__(self, owner: TCPTransport, direction: str, address: Address | None = None) -> None:
        self._owner = owner
        self._direction = direction
        self._address = address

    def buildProtocol(self, addr: Any) -> PacketConnection | None:
        if self._direction == "in" and not self._owner.limits.admit(addr.host):
            return None  # Twisted closes the socket at once
        address = self._address if self._address is not None else (addr.host, addr.port)
        conn = PacketConnection(self._owner, self._direction, address)
        if self._direction == "in":
            conn.admitted_ip = addr.host
        return conn


class TCPTransport:
    """Sends and receives signed packets over TCP for the node ``my_id``.

    :param clock: time source for idle and connect timeouts.
    :param reactor: provides ``listenTCP``/``connectTCP``.
    :param my_id: our global id; packets for anyone else are dropped.
    :param resolve_verifier: ``creator_id -> Verifier | None``.
    :param stats: where traffic and drops are counted.
    :param replay: the replay cache for incoming packets.
    :param max_frame: largest frame (header + payload) sent or accepted.
    :param idle_timeout: seconds without traffic before a connection is
        closed (``0`` or ``None``: never).
    :param interface: the address listened on.
    :param connect_timeout: seconds to wait for an outgoing connection.
    :param max_frames_per_second: per-connection flood limit (``None``: off).
    :param max_connections_per_ip: incoming connections from one IP (0: no limit).
    :param max_connections: incoming connections in all (0: no limit).
    :param max_buffered: bytes of payloads being received at once, over all
        connections (one frame always fits).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        reactor: IReactorTCP,
        my_id: str,
        resolve_verifier: ResolveVerifier,
        stats: PacketStats,
        replay: ReplayCache,
        max_frame: int,
        idle_timeout: float | None,
        interface: str = "127.0.0.1",
        connect_timeout: float = 10.0,
        max_frames_per_second: int | None = None,
        max_connections_per_ip: int = 0,
        max_connections: int = 0,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        self.clock = clock
        self.reactor = reactor
        self.my_id = my_id
        #: every name of ours (a moved identity keeps its old names); packets to any of them are ours
        self.my_names: frozenset[str] = frozenset({my_id})
        self.stats = stats
        self.replay = replay
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout or 0
        self.interface = interface
        self.connect_timeout = connect_timeout
        self.max_frames_per_second = max_frames_per_second
        self.limits = ConnectionLimits(max_connections_per_ip, max_connections)
        self.budget = BufferBudget(max_buffered)
        self._resolve_verifier = resolve_verifier
        self._handlers: dict[str, Handler] = {}
        self._ports: list[IListeningPort] = []
        self._by_address: dict[Address, PacketConnection] = {}
        self._open: set[PacketConnection] = set()
        self._dialling: dict[Address, _Dial] = {}
        self._waiting: dict[Address, list[Deferred[PacketConnection]]] = {}
        self._stopped = False
        #: Forwards frames for other nodes when this node is a router (None: such frames are dropped).
        self.relay: RelayHook | None = None
        #: ``listener(conn)`` for every connection that closes (the relay and the routed side watch theirs).
        self.lost_listeners: list[Callable[[PacketConnection], Any]] = []

    # -- public API -------------------------------------------------------

    def listen(self, port: int = 0) -> Deferred[int]:
        """Listen on ``interface``:``port``; fires with the bound port number."""
        if self._stopped:
            return fail(Unavailable("transport is stopped"))
        try:
            listening = self.reactor.listenTCP(port, _ConnectionFactory(self, "in"), interface=self.interface)
        except CannotListenError as exc:
            return fail(Unavailable(f"cannot listen on {self.interface}:{port}: {exc.socketError}"))
        self._ports.append(listening)
        return succeed(listening.getHost().port)

    def listening_ports(self) -> list[IListeningPort]:
        """The ports opened by :meth:`listen`."""
        return list(self._ports)

    def register_handler(self, command: str | Command, handler: Handler) -> None:
        """Call ``handler(packet, address)`` for each valid incoming ``command``.

        Raises ``BadRequest`` for an unknown command and ``Conflict`` if the
        command already has a handler.
        """
        name = command_name(command)
        if not is_known(name):
            raise BadRequest(f"unknown command {name!r}")
        if name in self._handlers:
            raise Conflict(f"command {name!r} already has a handler")
        self._handlers[name] = handler

    def unregister_handler(self, command: str | Command) -> None:
        """Stop dispatching ``command`` (no error if it had no handler)."""
        self._handlers.pop(command_name(command), None)

    def send(self, address: Address, packet: Packet) -> Deferred[None]:
        """Send ``packet`` to ``address``, reusing an open connection to it.

        Fires with None once the frame is handed to the connection; fails with
        ``Timeout`` if connecting takes longer than ``connect_timeout``,
        ``Unavailable`` if the connection cannot be made or the transport is
        stopped, ``BadRequest`` if the packet is over ``max_frame``.
        """
        if self._stopped:
            return fail(Unavailable("transport is stopped"))
        header = packet.encode_header()
        size = len(header) + len(packet.payload)
        if size > self.max_frame:
            return fail(BadRequest(f"packet of {size} bytes is over the frame limit {self.max_frame}"))
        address = (str(address[0]), int(address[1]))
        d = self._connection_to(address)
        d.addCallback(self._write_packet, header, packet)
        return d

    def connect(self, address: Address) -> Deferred[PacketConnection]:
        """The open connection to ``address``, made first if there is none (fails like :meth:`send`).

        A router writes frames of other nodes on it, unchanged.
        """
        if self._stopped:
            return fail(Unavailable("transport is stopped"))
        return self._connection_to((str(address[0]), int(address[1])))

    def connections(self) -> list[dict]:
        """One JSON-safe dict per open or pending connection."""
        rows = [conn.info() for conn in sorted(self._open, key=lambda c: c.connected_at)]
        for host, port in self._dialling:
            rows.append({"address": f"{host}:{port}", "host": host, "port": port, "direction": "out",
                         "state": "connecting"})
        return rows

    def connection_to(self, address: Address) -> PacketConnection | None:
        """The open connection keyed by ``address``, if any."""
        conn = self._by_address.get((str(address[0]), int(address[1])))
        return conn if conn is not None and conn.is_usable() else None

    def stop(self) -> Deferred[None]:
        """Stop listening, abandon pending connects, close every connection."""
        self._stopped = True
        waits: list[Deferred[Any]] = []
        ports, self._ports = self._ports, []
        for listening in ports:
            waits.append(maybeDeferred(listening.stopListening))
        for dial in list(self._dialling.values()):
            dial.attempt.cancel()
        for conn in list(self._open):
            waits.append(conn.when_closed())
            conn.closeConnection()
        done = gatherResults(waits, consumeErrors=True)
        return done.addCallback(lambda _: None)

    # -- connections ------------------------------------------------------

    def _connection_to(self, address: Address) -> Deferred[PacketConnection]:
        conn = self._by_address.get(address)
        if conn is not None and conn.is_usable():
            return succeed(conn)
        waiter: Deferred[PacketConnection] = Deferred()
        self._waiting.setdefault(address, []).append(waiter)
        if address not in self._dialling:
            host, port = address
            endpoint_class = TCP6ClientEndpoint if isIPv6Address(host) else TCP4ClientEndpoint
            # the reactor's own timeout is a backstop; ours runs on the injected clock
            endpoint = endpoint_class(self.reactor, host, port, timeout=int(self.connect_timeout) + 1)
            attempt = endpoint.connect(_ConnectionFactory(self, "out", address))
            if not attempt.called:
                dial = _Dial(attempt, self.clock.callLater(self.connect_timeout, self._dial_timed_out, address))
                self._dialling[address] = dial
            attempt.addBoth(self._dial_done, address)
        return waiter

    def _dial_timed_out(self, address: Address) -> None:
        dial = self._dialling.get(address)
        if dial is not None:
            dial.timed_out = True
            dial.attempt.cancel()

    def _dial_done(self, result: Any, address: Address) -> None:
        dial = self._dialling.pop(address, None)
        if dial is not None and dial.timer.active():
            dial.timer.cancel()
        waiters = self._waiting.pop(address, [])
        if isinstance(result, Failure):
            host, port = address
            if dial is not None and dial.timed_out:
                error: Exception = Timeout(f"connecting to {host}:{port} timed out")
            elif self._stopped:
                error = Unavailable(f"connecting to {host}:{port} abandoned: transport stopped")
            else:
                error = Unavailable(f"cannot connect to {host}:{port}: {result.getErrorMessage()}")
            for waiter in waiters:
                waiter.errback(error)
            return None
        for waiter in waiters:
            waiter.callback(result)
        return None

    def _write_packet(self, conn: PacketConnection, header: bytes, packet: Packet) -> None:
        if not conn.is_usable():
            raise Unavailable(f"connection to {conn.address[0]}:{conn.address[1]} closed")
        size = conn.send_frame(header, packet.payload)
        self.stats.record_out(packet.command, packet.remote_id, size)

    def _connection_made(self, conn: PacketConnection) -> None:
        if self._stopped:
            conn.closeConnection()
            return
        self._open.add(conn)
        self._by_address[conn.address] = conn

    def _connection_lost(self, conn: PacketConnection) -> None:
        if conn.admitted_ip is not None:
            self.limits.release(conn.admitted_ip)
            conn.admitted_ip = None
        self._open.discard(conn)
        if self._by_address.get(conn.address) is conn:
            del self._by_address[conn.address]
        for listener in list(self.lost_listeners):
            try:
                listener(conn)
            except Exception:
                self.log.failure("connection-lost listener failed")

    # -- receiving --------------------------------------------------------

    def _head_received(self, conn: PacketConnection, head: bytes, body_length: int) -> str:
        """Judge a frame's header before its payload: KEEP the payload or SKIP it; never raises."""
        conn.incoming = None
        try:
            packet_head = PacketHead.decode(head, max_payload=self.max_frame)
            if packet_head.payload_length != body_length:
                raise BadPacket(f"frame carries {body_length} payload bytes, header says {packet_head.payload_length}")
            if not is_known(packet_head.command):
                raise UnknownCommand(f"unknown command {packet_head.command!r}")
            if packet_head.remote_id != self.my_id and packet_head.remote_id not in self.my_names:
                if self.relay is None or not self.relay.admit(conn, packet_head, body_length):
                    raise WrongRecipient(f"packet for {packet_head.remote_id!r}, we are {self.my_id!r}")
                conn.incoming = _Incoming(packet_head, RELAYED)  # not ours: no signature or replay duty here
                return KEEP
            error: BadPacket | None = None
            try:
                packet_head.verify(self._resolve_verifier)
                kind = VERIFIED
            except (UnknownSender, BadSignature) as err:
                kind, error = self._stranger_head(conn, packet_head, body_length, err), err
            self.replay.peek(packet_head.creator_id, packet_head.packet_id, packet_head.date)
        except BadPacket as exc:
            self._refused(conn, exc, len(head) + body_length)
            return SKIP
        except Exception:
            self.stats.record_drop("malformed")
            self.stats.record_frame_in(len(head) + body_length)
            self.log.failure("unexpected error reading a packet header from {address}", address=conn.address)
            return SKIP
        conn.incoming = _Incoming(packet_head, kind, error)
        return KEEP

    def _stranger_head(self, conn: PacketConnection, head: PacketHead, body_length: int, error: BadPacket) -> str:
        """A header whose sender cannot be verified: its kind if it may go on, else raise (default: ``error``)."""
        raise error

    def _refused(self, conn: PacketConnection, error: BadPacket, size: int) -> None:
        self.stats.record_frame_in(size)
        self.stats.record_drop(error.reason)
        self.log.debug("dropped packet from {address}: {error}", address=conn.address, error=error)
        try:
            self._dropped(conn, error)
        except Exception:
            self.log.failure("answering a dropped packet failed")

    def _frame_received(self, conn: PacketConnection, head: bytes, body: bytes, digest: bytes | None,
                        prefix: tuple | None = None) -> None:
        """Finish one frame whose header passed: check the payload, then dispatch; never raises."""
        incoming, conn.incoming = conn.incoming, None
        if incoming is None:  # cannot happen: a body is kept only after _head_received said so
            return
        size = len(head) + len(body)
        self.stats.record_frame_in(size)
        if incoming.kind == RELAYED:
            self._relay_frame(conn, incoming.head, head, body, digest)
            return
        try:
            packet = incoming.head.packet(body, digest, prefix)
            if incoming.kind == VERIFIED:
                self.replay.check(packet.creator_id, packet.packet_id, packet.date)
            else:
                packet = self._stranger_packet(conn, incoming, packet)
        except BadPacket as exc:
            self.stats.record_drop(exc.reason)
            self.log.debug("dropped packet from {address}: {error}", address=conn.address, error=exc)
            return
        except Exception:
            self.stats.record_drop("malformed")
            self.log.failure("unexpected error validating a packet from {address}", address=conn.address)
            return
        handler = self._handlers.get(packet.command)
        if handler is None:
            self.stats.record_drop("no_handler")
            return
        self.stats.record_in(packet.command, packet.creator_id, size)
        d = maybeDeferred(handler, packet, conn.address)
        d.addErrback(self._handler_failed, packet)

    def _relay_frame(self, conn: PacketConnection, head: PacketHead, head_bytes: bytes, body: bytes,
                     digest: bytes | None) -> None:
        """Pass a frame for someone else to the relay, if its payload is the one its sender signed for."""
        relay = self.relay
        try:
            head.packet(body, digest)  # checks the payload's length and hash against the header
            if relay is None:
                raise WrongRecipient(f"packet for {head.remote_id!r}, and this node routes nobody now")
            relay.forward(conn, head_bytes, head, body)
        except BadPacket as exc:
            self.stats.record_drop(exc.reason)
        except Exception:
            self.stats.record_drop("malformed")
            self.log.failure("unexpected error forwarding a frame from {address}", address=conn.address)

    def _stranger_packet(self, conn: PacketConnection, incoming: _Incoming, packet: Packet) -> Packet:
        """The whole packet of a header :meth:`_stranger_head` let through; raise BadPacket to drop it."""
        raise UnknownSender("no key known for the sender")

    def limits_stats(self) -> dict:
        """Connections and buffered bytes, with their limits and refusals (for ``packets_stats``)."""
        return {"connections": self.limits.stats(), "buffer": self.budget.stats(), "replay": self.replay.stats()}

    def _dropped(self, conn: PacketConnection, error: BadPacket) -> None:
        """A frame from ``conn`` was refused with ``error``; subclasses may answer it (default: nothing)."""

    def _handler_failed(self, failure: Failure, packet: Packet) -> None:
        self.stats.record_drop("handler_error")
        self.log.failure(
            "handler for {command} failed on packet {packet_id}",
            failure,
            command=packet.command,
            packet_id=packet.packet_id,
        )
