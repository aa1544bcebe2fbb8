"""Peer-side attacks (issue 14, items 1, 2, 3, 7, 12) against running gateways on loopback TCP.

Each test reproduces a finding with a stranger (or a hostile peer) and
asserts two things: the limit holds (and is counted where an operator sees
it, ``stats_dict()`` = ``packets_stats``), and a legitimate peer still gets
through.  Timers run on a Clock; the sockets are real.  Attackers that need
their own source address connect from 127.0.0.5 (any 127/8 address works on
loopback), the legitimate peers from 127.0.0.1.
"""

from __future__ import annotations

import base64
from types import SimpleNamespace

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from automats import Registry
from bitnode.boundedjson import BadJson
from bitnode.storage import wire
from bitnode.transport.commands import Command
from bitnode.transport.framing import PREFIX
from bitnode.transport.gateway import Gateway, parse_tcp_contact
from bitnode.transport.limits import PeerLimits
from bitnode.transport.packet import Packet
from bitnode.userid.identity import Identity, format_date
from tests.interface.support import wait_until
from tests.support import clock_at
from tests.transport.test_gateway import ID_HOST, START, IdServer, Peer, rsa_key
from tests.transport.test_support import Ed25519Signer, seed

ATTACKER_IP = "127.0.0.5"
MiB = 1024 * 1024


def frame_of(packet: Packet) -> bytes:
    """The whole wire frame of ``packet``."""
    head = packet.encode_header()
    return PREFIX.pack(2 + len(head) + len(packet.payload), len(head)) + head + packet.payload


class Stranger:
    """A made-up user: a self-signed identity document (not published anywhere) and its packet key."""

    def __init__(self, name: str, n: int) -> None:
        rsa = rsa_key(0)  # one RSA key for every stranger: key generation is slow, and it changes nothing here
        self.signer = Ed25519Signer(seed(n))
        raw = self.signer._key.public_key().export_key(format="raw")
        self.identity = Identity(
            name=name, sources=(f"http://{ID_HOST}/{name}.xml",), contacts=(), revision=1, date=format_date(START),
            public_key=rsa.public_key().to_pem().decode("ascii"), signing_key=base64.b64encode(raw).decode("ascii"),
        ).sign(rsa)
        self.id = self.identity.global_id

    def packet(self, to: str, date: float, command: Command = Command.IDENTITY, payload: bytes | None = None) -> Packet:
        clock = Clock()
        clock.advance(date)
        if payload is None:
            payload = self.identity.to_xml()
        return Packet.create(clock, command, self.id, self.id, to, payload, self.signer)


class RawClient(Protocol):
    """A TCP client that writes whatever bytes a test gives it and keeps what comes back."""

    def __init__(self) -> None:
        self.received = b""
        self.ready: Deferred = Deferred()
        self.lost = False

    def connectionMade(self) -> None:
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.lost = True


class _RawFactory(ClientFactory):
    def __init__(self) -> None:
        self.client = RawClient()

    def buildProtocol(self, addr):
        return self.client

    def clientConnectionFailed(self, connector, reason) -> None:
        self.client.ready.errback(reason)


class AttackTestCase(unittest.TestCase):
    timeout = 60  # real sockets: generous for a loaded machine; the waits are for conditions

    def setUp(self) -> None:
        self.clock = clock_at(START)
        self.server = IdServer()

    @inlineCallbacks
    def peers(self, *names: str, limits: PeerLimits | None = None, **kw):
        peers = [Peer(self, name, i + 1, self.server, self.clock, limits=limits or PeerLimits(), **kw)
                 for i, name in enumerate(names)]
        for peer in peers:
            yield peer.start()
        for peer in peers:
            for other in peers:
                peer.ids.remember_identity(other.ids.identity)
        return peers

    @inlineCallbacks
    def raw(self, peer: Peer, source: str = ATTACKER_IP):
        """A raw connection to ``peer`` from ``source``."""
        host, port = parse_tcp_contact(peer.gateway.contact)
        factory = _RawFactory()
        connector = reactor.connectTCP(host, port, factory, bindAddress=(source, 0))
        self.addCleanup(connector.disconnect)
        client = yield factory.client.ready
        return client

    @inlineCallbacks
    def delivered(self, sender: Peer, receiver: Peer, payload: bytes = b"still here"):
        """A legitimate packet from ``sender`` reaches ``receiver``'s handler (the test fails otherwise)."""
        if receiver.gateway.router.handler_for(SimpleNamespace(command=Command.MESSAGE.value, payload=b"")) is None:
            receiver.gateway.router.add(Command.MESSAGE, receiver.record)
        arrived = receiver.next_packet()
        yield sender.gateway.request(Command.MESSAGE, receiver.id, payload, wait_response=False)
        packet = yield arrived
        self.assertEqual(packet.payload, payload)

    def dropped(self, peer: Peer, reason: str) -> int:
        return peer.gateway.stats_dict()["dropped"].get(reason, 0)

    def limits(self, peer: Peer) -> dict:
        return peer.gateway.stats_dict()["limits"]


class ReplayPoisoningTests(AttackTestCase):
    """14.1: strangers' introductions filled the shared replay cache and pushed its floor to now + 900 s."""

    @inlineCallbacks
    def test_strangers_dating_introductions_ahead_never_block_a_known_peer(self) -> None:
        limits = PeerLimits(replay_entries=50, introduction_entries=20, introductions_per_minute=0,
                            pending_introductions=1000)
        alice, bob = yield self.peers("alice", "bob", limits=limits)
        attacker = yield self.raw(bob)
        now = self.clock.seconds()
        strangers = [Stranger(f"mallory{i}", 100 + i) for i in range(120)]
        stream = b"".join(frame_of(s.packet(bob.id, now + 899)) for s in strangers[:60])
        stream += b"".join(frame_of(s.packet(bob.id, now + 59)) for s in strangers[60:])
        attacker.transport.write(stream)
        yield wait_until(lambda: self.dropped(bob, "too_new") == 60 and self.server.fetches >= 20,
                         "the flood to be read")
        replay = self.limits(bob)["replay"]
        self.assertEqual(self.dropped(bob, "too_new"), 60)
        # the strangers went to their own small cache; the confirmed peers' one holds none of them
        self.assertLessEqual(self.limits(bob)["introductions"]["replay"]["entries"], 20)
        self.assertEqual(replay["entries"], 0)
        yield self.delivered(alice, bob)
        self.assertGreaterEqual(self.limits(bob)["replay"]["shortest_window_seconds"], 30)

    @inlineCallbacks
    def test_introductions_dated_ahead_cost_no_rate_limit_token(self) -> None:
        alice, bob = yield self.peers("alice", "bob", limits=PeerLimits(introductions_per_minute=5))
        attacker = yield self.raw(bob)
        now = self.clock.seconds()
        attacker.transport.write(b"".join(frame_of(Stranger(f"m{i}", 600 + i).packet(bob.id, now + 899))
                                          for i in range(20)))
        attacker.transport.write(frame_of(Stranger("late", 650).packet(bob.id, now)))
        yield wait_until(lambda: self.server.fetches == 1, "the one introduction dated now to be checked")
        self.assertEqual((self.dropped(bob, "too_new"), self.dropped(bob, "rate_limited")), (20, 0))
        yield self.delivered(alice, bob)

    @inlineCallbacks
    def test_a_known_peer_flooding_fills_only_its_own_share(self) -> None:
        limits = PeerLimits(replay_entries=100, replay_entries_per_peer=20)
        alice, bob, carol = yield self.peers("alice", "bob", "carol", limits=limits)
        bob.gateway.router.add(Command.MESSAGE, bob.record)
        for i in range(40):
            alice.gateway.request(Command.MESSAGE, bob.id, b"flood %d" % i, wait_response=False)
        yield wait_until(lambda: len(bob.received) + self.dropped(bob, "replay_full") >= 40, "the flood")
        self.assertEqual(len(bob.received), 20)
        self.assertEqual(self.dropped(bob, "replay_full"), 20)
        yield self.delivered(carol, bob)


class StrangerFetchTests(AttackTestCase):
    """14.2: each stranger's Identity packet made the node fetch a URL the stranger chose."""

    @inlineCallbacks
    def test_introductions_from_one_ip_cost_at_most_the_rate_limit_in_fetches(self) -> None:
        alice, bob = yield self.peers("alice", "bob", limits=PeerLimits(introductions_per_minute=5))
        attacker = yield self.raw(bob)
        fetches = self.server.fetches
        now = self.clock.seconds()
        attacker.transport.write(b"".join(frame_of(Stranger(f"m{i}", 200 + i).packet(bob.id, now))
                                          for i in range(30)))
        yield wait_until(lambda: self.dropped(bob, "rate_limited") == 25, "25 introductions refused")
        yield wait_until(lambda: self.server.fetches - fetches == 5, "5 fetches")
        self.assertEqual(self.limits(bob)["introductions"]["rate_limited"], 25)
        self.clock.advance(60)  # a minute later the IP may introduce 5 more
        attacker.transport.write(b"".join(frame_of(Stranger(f"n{i}", 300 + i).packet(bob.id, now + 60))
                                          for i in range(10)))
        yield wait_until(lambda: self.dropped(bob, "rate_limited") == 30, "5 more refused")
        self.assertEqual(self.server.fetches - fetches, 10)
        yield self.delivered(alice, bob)

    @inlineCallbacks
    def test_introductions_being_confirmed_at_once_are_capped(self) -> None:
        alice, bob = yield self.peers("alice", "bob", limits=PeerLimits(pending_introductions=3))
        hanging: list[Deferred] = []

        def hang(global_id: str) -> Deferred:  # an identity server that never answers
            self.server.fetches += 1
            d: Deferred = Deferred()
            hanging.append(d)
            return d

        self.server.fetch = hang
        attacker = yield self.raw(bob)
        now = self.clock.seconds()
        attacker.transport.write(b"".join(frame_of(Stranger(f"m{i}", 400 + i).packet(bob.id, now))
                                          for i in range(12)))
        yield wait_until(lambda: self.dropped(bob, "introductions_busy") == 9, "9 introductions dropped")
        self.assertEqual(len(hanging), 3)
        self.assertEqual(self.limits(bob)["introductions"]["confirming"], 3)
        yield self.delivered(alice, bob)
        for d in hanging:
            d.errback(Exception("server gone"))
        self.flushLoggedErrors()
        self.assertEqual(self.limits(bob)["introductions"]["confirming"], 0)


class BufferingTests(AttackTestCase):
    """14.3: 16 MiB were buffered per connection before anything was checked, and connections were unlimited."""

    @inlineCallbacks
    def test_a_strangers_big_payload_is_read_past_never_kept(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        attacker = yield self.raw(bob)
        stranger = Stranger("mallory", 500)
        big = stranger.packet(bob.id, self.clock.seconds(), Command.DATA, b"x" * (4 * MiB))
        attacker.transport.write(frame_of(big))
        yield wait_until(lambda: self.dropped(bob, "unknown_sender") == 1, "the stranger's packet dropped")
        self.assertEqual(self.limits(bob)["buffer"]["peak_bytes_buffered"], 0)
        # it was answered (on its own connection) so a real recovered peer can introduce itself
        yield wait_until(lambda: b"introduce yourself" in attacker.received, "the stranger told to introduce itself")
        yield self.delivered(alice, bob)

    @inlineCallbacks
    def test_a_strangers_oversized_identity_packet_is_refused_from_its_header(self) -> None:
        alice, bob = yield self.peers("alice", "bob", limits=PeerLimits(max_stranger_body=8 * 1024))
        attacker = yield self.raw(bob)
        stranger = Stranger("mallory", 501)
        padded = stranger.packet(bob.id, self.clock.seconds(), payload=stranger.identity.to_xml() + b" " * MiB)
        attacker.transport.write(frame_of(padded))
        yield wait_until(lambda: self.dropped(bob, "stranger_oversize") == 1, "the oversized introduction dropped")
        self.assertEqual(self.limits(bob)["buffer"]["peak_bytes_buffered"], 0)
        self.assertEqual(self.server.fetches, 0)
        yield self.delivered(alice, bob)

    @inlineCallbacks
    def test_connections_from_one_ip_are_limited_and_other_ips_still_get_in(self) -> None:
        alice, bob = yield self.peers("alice", "bob", limits=PeerLimits(connections_per_ip=4, connections=100))
        clients = []
        for _ in range(10):
            clients.append((yield self.raw(bob)))
        yield wait_until(lambda: sum(c.lost for c in clients) == 6, "6 connections refused")
        self.assertEqual(self.limits(bob)["connections"]["refused_per_ip"], 6)
        self.assertEqual(self.limits(bob)["connections"]["incoming"], 4)
        yield self.delivered(alice, bob)
        for client in clients:
            client.transport.loseConnection()
        yield wait_until(lambda: self.limits(bob)["connections"]["incoming"] == 1, "the attacker's connections gone")

    @inlineCallbacks
    def test_connections_in_all_are_limited(self) -> None:
        alice, bob = yield self.peers("alice", "bob", limits=PeerLimits(connections_per_ip=0, connections=3))
        clients = []
        for n in range(6):
            clients.append((yield self.raw(bob, source=f"127.0.0.{10 + n}")))
        yield wait_until(lambda: sum(c.lost for c in clients) == 3, "3 connections refused")
        self.assertEqual(self.limits(bob)["connections"]["refused_total"], 3)
        clients[0].transport.loseConnection()
        yield wait_until(lambda: self.limits(bob)["connections"]["incoming"] == 2, "room for one more")
        yield self.delivered(alice, bob)

    @inlineCallbacks
    def test_bytes_buffered_over_all_connections_are_bounded(self) -> None:
        limits = PeerLimits(max_buffered=2 * MiB)
        alice, bob, mallory = yield self.peers("alice", "bob", "mallory", limits=limits)
        bob.gateway.router.add(Command.DATA, bob.record)
        # a known (but hostile) peer starts six 1 MiB packets on six connections and never finishes them
        trickles = []
        for _ in range(6):
            client = yield self.raw(bob)
            packet = mallory.gateway.build(Command.DATA, bob.id, b"m" * MiB)
            client.transport.write(frame_of(packet)[:-1000])
            trickles.append(client)
        yield wait_until(lambda: self.limits(bob)["buffer"]["waiting"] == 5, "five connections waiting")
        self.assertEqual(self.limits(bob)["buffer"]["bytes_buffered"], MiB)  # one IP holds half the budget at most
        # alice (another IP) still gets her block through while the attacker holds its share
        arrived = bob.next_packet()
        yield alice.gateway.request(Command.DATA, bob.id, b"a" * (MiB // 2), wait_response=False)
        packet = yield arrived
        self.assertEqual(packet.creator_id, alice.id)
        self.assertLessEqual(self.limits(bob)["buffer"]["peak_bytes_buffered"], 2 * MiB)


class RestartReplayTests(AttackTestCase):
    """14.7: the replay window lived in memory, so a captured packet could be played again after a restart."""

    @inlineCallbacks
    def test_a_packet_captured_before_a_restart_is_refused_after_it(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        bob.gateway.router.add(Command.MESSAGE, bob.record)
        captured = alice.gateway.build(Command.MESSAGE, bob.id, b"cancel everything")
        arrived = bob.next_packet()
        yield alice.gateway.send(captured, wait_response=False)
        yield arrived
        yield bob.gateway.stop()
        yield wait_until(lambda: not alice.gateway.connections(), "alice to see bob's connection gone")
        self.clock.advance(5)
        bob.gateway = Gateway(self.clock, reactor, bob.ids, Registry(), packet_timeout=10.0)
        self.addCleanup(bob.gateway.stop)
        yield bob.start()
        bob.gateway.router.add(Command.MESSAGE, bob.record)
        attacker = yield self.raw(bob)
        attacker.transport.write(frame_of(captured))
        yield wait_until(lambda: self.dropped(bob, "before_start") == 1, "the replay refused")
        self.assertEqual(len(bob.received), 1)
        yield self.delivered(alice, bob)


class NestedJsonTests(AttackTestCase):
    """14.12 (peer side): a deeply nested JSON payload made a handler raise RecursionError."""

    @inlineCallbacks
    def test_a_deeply_nested_storage_payload_is_refused_cleanly(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        answers = []

        def serve(packet: Packet, address) -> Deferred:
            try:
                wire.decode_json(packet.payload)
            except Exception as err:  # noqa: BLE001 - the test wants to see exactly what is raised
                answers.append(err)
                return bob.gateway.reply(packet, Command.FAIL, str(err).encode())
            return bob.gateway.reply(packet, Command.ACK)

        bob.gateway.router.add(Command.REQUEST_SERVICE, serve)
        deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
        err = yield self.assertFailure(alice.gateway.request(Command.REQUEST_SERVICE, bob.id, deep), Exception)
        self.assertIn("nested", str(err))
        self.assertEqual([type(a) for a in answers if isinstance(a, BadJson)], [type(answers[0])])
        yield self.delivered(alice, bob)


class RealIdentityServiceTests(AttackTestCase):
    """14.2 end to end: strangers' introductions reach a gateway whose identity provider is the real service_identity."""

    @inlineCallbacks
    def bob_with_service(self, **settings):
        from tests.userid.fakes import FakeNode, FakeServers, make_service

        self.servers = FakeServers()
        node = FakeNode(self.mktemp(), clock=self.clock,
                        overrides=dict({"personal/identity-servers": [ID_HOST]}, **settings))
        service = make_service(node, self.servers)
        yield service.start()
        self.addCleanup(service.stop)
        yield service.create_identity("bob")
        gateway = Gateway(self.clock, reactor, service, Registry(), packet_timeout=10.0)
        self.addCleanup(gateway.stop)
        yield gateway.listen(0)
        return service, gateway

    @inlineCallbacks
    def flood(self, gateway: Gateway, strangers: list) -> None:
        host, port = parse_tcp_contact(f"tcp://127.0.0.1:{gateway.port}")
        factory = _RawFactory()
        connector = reactor.connectTCP(host, port, factory, bindAddress=(ATTACKER_IP, 0))
        self.addCleanup(connector.disconnect)
        client = yield factory.client.ready
        now = self.clock.seconds()
        client.transport.write(b"".join(frame_of(s.packet(gateway.my_id, now)) for s in strangers))

    @inlineCallbacks
    def test_strangers_naming_one_missing_idurl_cost_one_request(self) -> None:
        service, gateway = yield self.bob_with_service()
        gets = len(self.servers.gets)
        strangers = [Stranger("mallory", 700 + i) for i in range(20)]  # one name, twenty keys
        yield self.flood(gateway, strangers)
        yield wait_until(lambda: gateway.stats_dict()["limits"]["introductions"]["unconfirmed"] == 20,
                         "the twenty introductions checked")
        self.assertEqual(len(self.servers.gets) - gets, 1)
        self.assertEqual(service.status()["fetches"]["negative_cached"], 19)
        self.assertEqual(len(service.cache), 0)

    @inlineCallbacks
    def test_strangers_naming_another_identity_server_cost_no_request(self) -> None:
        service, gateway = yield self.bob_with_service(**{"services/identity/allowed-servers": ["id.example.net"]})
        gets = len(self.servers.gets)
        yield self.flood(gateway, [Stranger(f"m{i}", 800 + i) for i in range(5)])
        yield wait_until(lambda: gateway.stats_dict()["limits"]["introductions"]["unconfirmed"] == 5,
                         "the five introductions refused")
        self.assertEqual(len(self.servers.gets), gets)
        self.assertEqual(service.status()["fetches"]["refused_host"], 5)
