"""Tests for bitnode.transport.tcp: real loopback TCP, injected Clock for timers."""

from __future__ import annotations

import dataclasses
import hashlib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from bitnode.errors import BadRequest, Conflict, Timeout, Unavailable
from bitnode.transport.commands import Command
from bitnode.transport.packet import Packet
from bitnode.transport.replay import ReplayCache
from bitnode.transport.stats import PacketStats
from bitnode.transport.tcp import TCPTransport
from tests.support import clock_at
from tests.transport.test_support import Ed25519Signer, KeyBook, seed

MiB = 1024 * 1024
START = 1700000000.0


class Inbox:
    """A handler that records packets and lets a test wait for a given one."""

    def __init__(self) -> None:
        self.received: list[tuple[Packet, tuple[str, int]]] = []
        self._waiting: list[tuple[str | None, Deferred]] = []

    def __call__(self, packet: Packet, address: tuple[str, int]) -> None:
        self.received.append((packet, address))
        # Take the waiters first: a callback may register a new waiter at once.
        waiting, self._waiting = self._waiting, []
        for packet_id, d in waiting:
            if packet_id is None or packet_id == packet.packet_id:
                d.callback((packet, address))
            else:
                self._waiting.append((packet_id, d))

    def next(self, packet_id: str | None = None) -> Deferred:
        """Fires with (packet, address) for the next packet (with ``packet_id`` if given)."""
        d: Deferred = Deferred()
        self._waiting.append((packet_id, d))
        return d


class Node:
    """One transport with its own key, stats and replay cache."""

    def __init__(self, case: unittest.TestCase, name: str, n: int, clock: Clock, keys: KeyBook, **kw) -> None:
        self.id = f"{name}@127.0.0.1_{8000 + n}"
        self.signer = Ed25519Signer(seed(n))
        keys.add(self.id, self.signer)
        self.clock = clock
        self.stats = PacketStats()
        self.replay = ReplayCache(clock, window_seconds=300, max_entries=10_000)
        the_reactor = kw.pop("reactor", reactor)
        options = dict(max_frame=MiB, idle_timeout=60.0)
        options.update(kw)
        self.transport = TCPTransport(clock, the_reactor, self.id, keys, self.stats, self.replay, **options)
        case.addCleanup(self.transport.stop)
        self.inbox = Inbox()
        for command in (Command.MESSAGE, Command.ACK, Command.DATA):
            self.transport.register_handler(command, self.inbox)
        self.address: tuple[str, int] | None = None

    @inlineCallbacks
    def listen(self):
        port = yield self.transport.listen(0)
        self.address = ("127.0.0.1", port)
        return port

    def packet(self, to: Node | str, payload: bytes = b"hi", command: str | Command = Command.MESSAGE,
               signer: Ed25519Signer | None = None, **kw) -> Packet:
        remote = to if isinstance(to, str) else to.id
        return Packet.create(self.clock, command, self.id, self.id, remote, payload, signer or self.signer, **kw)


class TCPTransportTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.clock = clock_at(START)
        self.keys = KeyBook()

    @inlineCallbacks
    def two_nodes(self, alice_kw: dict | None = None, bob_kw: dict | None = None):
        alice = Node(self, "alice", 1, self.clock, self.keys, **(alice_kw or {}))
        bob = Node(self, "bob", 2, self.clock, self.keys, **(bob_kw or {}))
        yield alice.listen()
        yield bob.listen()
        return alice, bob

    @inlineCallbacks
    def deliver(self, sender: Node, receiver: Node, packet: Packet):
        """Send ``packet`` and wait until the receiver dispatched it."""
        arrived = receiver.inbox.next(packet.packet_id)
        yield sender.transport.send(receiver.address, packet)
        result = yield arrived
        return result

    @inlineCallbacks
    def flush_with_sentinel(self, sender: Node, receiver: Node):
        """Send a valid packet after others on the same connection and wait for it:
        everything sent before it has been processed by then."""
        yield self.deliver(sender, receiver, sender.packet(receiver, b"sentinel"))

    # -- listening -------------------------------------------------------------

    @inlineCallbacks
    def test_listens_on_loopback_only(self) -> None:
        node = Node(self, "alice", 1, self.clock, self.keys)
        port = yield node.listen()
        (listening,) = node.transport.listening_ports()
        self.assertEqual(listening.getHost().host, "127.0.0.1")
        self.assertEqual(listening.getHost().port, port)
        self.assertNotEqual(port, 0)

    @inlineCallbacks
    def test_listen_on_a_taken_port_fails_with_unavailable(self) -> None:
        node = Node(self, "alice", 1, self.clock, self.keys)
        port = yield node.listen()
        other = Node(self, "bob", 2, self.clock, self.keys)
        yield self.assertFailure(other.transport.listen(port), Unavailable)

    # -- exchange ---------------------------------------------------------------

    @inlineCallbacks
    def test_packets_flow_both_ways_over_one_connection(self) -> None:
        alice, bob = yield self.two_nodes()
        sent = alice.packet(bob, b"ping")
        packet, reply_address = yield self.deliver(alice, bob, sent)
        self.assertEqual(packet, sent)
        self.assertEqual(reply_address[0], "127.0.0.1")

        arrived = alice.inbox.next()
        yield bob.transport.send(reply_address, bob.packet(alice, b"pong", Command.ACK))
        packet, _ = yield arrived
        self.assertEqual((packet.command, packet.payload), ("Ack", b"pong"))

        for i in range(3):
            yield self.deliver(alice, bob, alice.packet(bob, b"again %d" % i))
        self.assertEqual(len(alice.transport.connections()), 1)
        self.assertEqual(len(bob.transport.connections()), 1)
        self.assertEqual(alice.transport.connections()[0]["direction"], "out")
        self.assertEqual(bob.transport.connections()[0]["direction"], "in")
        self.assertEqual(alice.stats.packets_out, 4)
        self.assertEqual(bob.stats.packets_in, 4)
        self.assertEqual(alice.stats.as_dict()["in"]["by_command"], {"Ack": 1})
        self.assertEqual(bob.stats.as_dict()["in"]["by_peer"][alice.id]["packets"], 4)

    @inlineCallbacks
    def test_sends_before_connecting_share_one_connection_and_keep_order(self) -> None:
        alice, bob = yield self.two_nodes()
        sends = [alice.transport.send(bob.address, alice.packet(bob, b"%d" % i)) for i in range(10)]
        self.assertEqual(alice.transport.connections()[0]["state"], "connecting")
        for d in sends:
            yield d
        while len(bob.inbox.received) < 10:
            yield bob.inbox.next()
        self.assertEqual([p.payload for p, _a in bob.inbox.received], [b"%d" % i for i in range(10)])
        self.assertEqual(len(alice.transport.connections()), 1)
        self.assertEqual(len(bob.transport.connections()), 1)

    @inlineCallbacks
    def test_sixteen_mib_payload_arrives_intact(self) -> None:
        alice, bob = yield self.two_nodes({"max_frame": 17 * MiB}, {"max_frame": 17 * MiB})
        payload = hashlib.sha256(b"seed").digest() * (16 * MiB // 32)
        self.assertEqual(len(payload), 16 * MiB)
        packet, _ = yield self.deliver(alice, bob, alice.packet(bob, payload, Command.DATA))
        self.assertEqual(len(packet.payload), 16 * MiB)
        self.assertEqual(hashlib.sha256(packet.payload).digest(), hashlib.sha256(payload).digest())

    # -- rejections -------------------------------------------------------------

    @inlineCallbacks
    def test_forged_packet_is_dropped_and_counted_not_dispatched(self) -> None:
        alice, bob = yield self.two_nodes()
        mallory = Ed25519Signer(seed(66))
        forged = alice.packet(bob, b"send me your files", signer=mallory)  # claims to be alice
        yield alice.transport.send(bob.address, forged)
        yield self.flush_with_sentinel(alice, bob)
        self.assertEqual([p.payload for p, _a in bob.inbox.received], [b"sentinel"])
        self.assertEqual(bob.stats.dropped("bad_signature"), 1)
        self.assertEqual(bob.stats.as_dict()["dropped_total"], 1)

    @inlineCallbacks
    def test_every_packet_rejection_is_counted(self) -> None:
        alice, bob = yield self.two_nodes()
        send = alice.transport.send
        # wrong recipient
        yield send(bob.address, alice.packet("carol@127.0.0.1_9999"))
        # unknown sender: a creator bob has no key for
        stranger = Ed25519Signer(seed(77))
        yield send(bob.address, Packet.create(self.clock, Command.MESSAGE, "zed@x", "zed@x", bob.id, b"", stranger))
        # replay: the same packet twice (the first one is accepted)
        once = alice.packet(bob, b"once")
        yield send(bob.address, once)
        yield send(bob.address, once)
        # too old and too new
        old_clock, new_clock = Clock(), Clock()
        old_clock.advance(START - 301)
        new_clock.advance(START + 301)
        for clock in (old_clock, new_clock):
            yield send(bob.address, Packet.create(clock, Command.MESSAGE, alice.id, alice.id, bob.id, b"", alice.signer))
        # unknown command, properly signed
        unsigned = dataclasses.replace(alice.packet(bob), command="Shutdown", algorithm="ed25519")
        yield send(bob.address, dataclasses.replace(unsigned, signature=alice.signer.sign(unsigned.signed_data())))
        # tampered payload: the header's hash no longer matches
        good = alice.packet(bob, b"original")
        conn = alice.transport.connection_to(bob.address)
        conn.send_frame(good.encode_header(), b"0riginal")
        # malformed header
        conn.send_frame(b"\x01garbage", b"")
        # known command without a handler
        yield send(bob.address, alice.packet(bob, command=Command.KEY))
        yield self.flush_with_sentinel(alice, bob)

        self.assertEqual([p.payload for p, _a in bob.inbox.received], [b"once", b"sentinel"])
        dropped = bob.stats.as_dict()["dropped"]
        expected = {"wrong_recipient": 1, "unknown_sender": 1, "replay": 1, "too_old": 1, "too_new": 1,
                    "unknown_command": 1, "bad_signature": 1, "malformed": 1, "no_handler": 1}
        self.assertEqual({k: v for k, v in dropped.items() if v}, expected)
        # the connection survived all of it
        self.assertEqual(len(bob.transport.connections()), 1)

    @inlineCallbacks
    def test_oversize_frame_closes_connection_and_is_counted(self) -> None:
        alice, bob = yield self.two_nodes({"max_frame": 4 * MiB}, {"max_frame": 64 * 1024})
        yield self.deliver(alice, bob, alice.packet(bob, b"small"))
        conn = alice.transport.connection_to(bob.address)
        closed = conn.when_closed()
        yield alice.transport.send(bob.address, alice.packet(bob, b"x" * (128 * 1024)))
        yield closed
        self.assertEqual(bob.stats.dropped("oversize"), 1)
        self.assertEqual(len(bob.inbox.received), 1)
        self.assertEqual(alice.transport.connections(), [])

    @inlineCallbacks
    def test_flooding_peer_is_disconnected_and_counted(self) -> None:
        alice, bob = yield self.two_nodes(bob_kw={"max_frames_per_second": 5})
        for i in range(20):
            d = alice.transport.send(bob.address, alice.packet(bob, b"%d" % i))
            if i == 0:
                yield d
                closed = alice.transport.connection_to(bob.address).when_closed()
        yield closed
        self.assertEqual(bob.stats.dropped("flood"), 1)
        self.assertEqual(len(bob.inbox.received), 5)

    @inlineCallbacks
    def test_failing_handler_is_logged_and_counted(self) -> None:
        alice, bob = yield self.two_nodes()

        def broken(packet: Packet, address: tuple[str, int]) -> None:
            raise RuntimeError("handler bug")

        bob.transport.register_handler(Command.EVENT, broken)
        yield alice.transport.send(bob.address, alice.packet(bob, command=Command.EVENT))
        yield self.flush_with_sentinel(alice, bob)
        self.assertEqual(bob.stats.dropped("handler_error"), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_send_over_frame_limit_fails_without_connecting(self) -> None:
        alice, bob = yield self.two_nodes({"max_frame": 1024})
        yield self.assertFailure(alice.transport.send(bob.address, alice.packet(bob, b"x" * 2000)), BadRequest)
        self.assertEqual(alice.transport.connections(), [])

    # -- connections and timers ----------------------------------------------------

    @inlineCallbacks
    def test_idle_connection_closed_after_timeout(self) -> None:
        alice, bob = yield self.two_nodes({"idle_timeout": 30.0}, {"idle_timeout": 30.0})
        yield self.deliver(alice, bob, alice.packet(bob))
        conn = alice.transport.connection_to(bob.address)
        closed = conn.when_closed()
        self.clock.advance(20)
        yield self.deliver(alice, bob, alice.packet(bob, b"keeps it alive"))
        self.clock.advance(20)  # 40s since connecting, 20s since the last packet
        self.assertFalse(closed.called)
        self.assertEqual(len(alice.transport.connections()), 1)
        self.clock.advance(10)
        yield closed
        self.assertEqual(alice.transport.connections(), [])
        # the next send simply connects again
        yield self.deliver(alice, bob, alice.packet(bob, b"back"))
        self.assertEqual(len(alice.transport.connections()), 1)

    @inlineCallbacks
    def test_connect_refused_fails_with_unavailable(self) -> None:
        alice, bob = yield self.two_nodes()
        address = bob.address
        yield bob.transport.stop()
        yield self.assertFailure(alice.transport.send(address, alice.packet(bob)), Unavailable)
        self.assertEqual(alice.transport.connections(), [])

    @inlineCallbacks
    def test_connections_list_is_json_safe(self) -> None:
        import json

        alice, bob = yield self.two_nodes()
        yield self.deliver(alice, bob, alice.packet(bob))
        (row,) = alice.transport.connections()
        self.assertEqual(json.loads(json.dumps(row)), row)
        self.assertEqual((row["host"], row["port"], row["state"]), ("127.0.0.1", bob.address[1], "open"))
        self.assertEqual(row["frames_out"], 1)

    @inlineCallbacks
    def test_stop_closes_everything_and_refuses_sends(self) -> None:
        alice, bob = yield self.two_nodes()
        yield self.deliver(alice, bob, alice.packet(bob))
        yield alice.transport.stop()
        self.assertEqual(alice.transport.connections(), [])
        self.assertEqual(alice.transport.listening_ports(), [])
        yield self.assertFailure(alice.transport.send(bob.address, alice.packet(bob)), Unavailable)

    def test_register_handler_validates(self) -> None:
        node = Node(self, "alice", 1, self.clock, self.keys)
        self.assertRaises(BadRequest, node.transport.register_handler, "Shutdown", lambda p, a: None)
        self.assertRaises(Conflict, node.transport.register_handler, Command.MESSAGE, lambda p, a: None)
        node.transport.unregister_handler(Command.MESSAGE)
        node.transport.register_handler("Message", lambda p, a: None)


class ConnectTimeoutTests(unittest.TestCase):
    """Connect timeouts run on the injected clock (a memory reactor never connects)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(START)
        self.keys = KeyBook()
        self.node = Node(self, "alice", 1, self.reactor, self.keys, reactor=self.reactor, connect_timeout=5.0)

    def test_connect_times_out(self) -> None:
        d = self.node.transport.send(("127.0.0.1", 9), self.node.packet("bob@x"))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(4.9)
        self.assertNoResult(d)
        self.reactor.advance(0.2)
        self.failureResultOf(d, Timeout)
        self.assertEqual(self.node.transport.connections(), [])

    def test_stop_abandons_pending_connects(self) -> None:
        d = self.node.transport.send(("127.0.0.1", 9), self.node.packet("bob@x"))
        self.successResultOf(self.node.transport.stop())
        self.failureResultOf(d, Unavailable)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
