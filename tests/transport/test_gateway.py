"""Tests for bitnode.transport.gateway: gateways with fake identity providers on real loopback TCP.

Timers (packet timeouts) run on an injected Clock; the sockets are real.  The
fake identity provider signs packets with test_support's Ed25519 keys and
keeps a KeyBook of the users it knows; a shared :class:`IdServer` plays the
identity server that ``fetch_identity(..., refresh=True)`` asks.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from automats import Registry
from bitnode.crypt import keys
from bitnode.errors import BadRequest, Conflict, Forbidden, NotFound, Timeout, Unavailable
from bitnode.transport.commands import Command
from bitnode.transport.framing import PREFIX
from bitnode.transport.gateway import Gateway, parse_tcp_contact
from bitnode.transport.introduction import IdentityKeyVerifier
from bitnode.transport.packet import Packet
from bitnode.transport.packet_out import PeerRefused
from bitnode.userid.identity import Identity, format_date
from tests.interface.support import wait_until
from tests.support import clock_at
from tests.transport.test_support import Ed25519Signer, KeyBook, seed

START = 1700000000.0
ID_HOST = "127.0.0.1:8084"


@functools.lru_cache(maxsize=None)
def rsa_key(n: int) -> keys.RsaPrivateKey:
    """A 2048-bit RSA key per test user (generated once per test run: keygen is slow)."""
    return keys.generate_rsa(2048)


class IdServer:
    """The identity server of the test network: global id -> published document."""

    def __init__(self) -> None:
        self.published: dict[str, Identity] = {}
        self.fetches = 0
        self.down = False

    def fetch(self, global_id: str) -> Deferred:
        self.fetches += 1
        if self.down:
            return fail(Unavailable("identity server is down"))
        document = self.published.get(global_id)
        if document is None:
            return fail(NotFound(f"identity {global_id} is not known to the server"))
        return succeed(document)


class FakeCache:
    """The part of IdentityCache the gateway uses (``put``), over the provider's documents."""

    def __init__(self, owner: FakeIdentities) -> None:
        self.owner = owner
        self.items: dict[str, Identity] = {}

    def put(self, document: Identity) -> bool:
        return self.owner.remember_identity(document)

    def __getitem__(self, global_id: str) -> Identity:
        return self.items[global_id]

    def __contains__(self, global_id: str) -> bool:
        return global_id in self.items

    def pop(self, global_id: str, default=None):
        return self.items.pop(global_id, default)


class FakeIdentities:
    """An identity provider with the interface of service_identity (see gateway.IdentityProvider)."""

    def __init__(self, name: str, n: int, server: IdServer, clock: Clock, publish: bool = True) -> None:
        self.server = server
        self.clock = clock
        self.rsa = rsa_key(n)
        self.signer = Ed25519Signer(seed(n))
        raw = self.signer._key.public_key().export_key(format="raw")
        self.identity: Identity | None = Identity(
            name=name, sources=(f"http://{ID_HOST}/{name}.xml",), contacts=(), revision=1,
            date=format_date(START), public_key=self.rsa.public_key().to_pem().decode("ascii"),
            signing_key=base64.b64encode(raw).decode("ascii"),
        ).sign(self.rsa)
        self.global_id = self.identity.global_id
        self.keybook = KeyBook()
        self.cache = FakeCache(self)
        self.remember_identity(self.identity)
        self.contact_updates: list[list[str]] = []
        if publish:
            server.published[self.global_id] = self.identity

    # -- the provider interface ----------------------------------------------

    def my_global_id(self) -> str | None:
        return self.identity.global_id if self.identity is not None else None

    def my_identity(self) -> Identity | None:
        return self.identity

    def packet_signer(self) -> Ed25519Signer:
        return self.signer

    def resolve_verifier(self, global_id: str):
        return self.keybook(global_id)

    def fetch_identity(self, idurl_or_global_id: str, refresh: bool = False, stranger: bool = False) -> Deferred:
        global_id = idurl_or_global_id
        if "://" in global_id:
            name = global_id.rsplit("/", 1)[1][: -len(".xml")]
            global_id = f"{name}@{ID_HOST.replace(':', '_')}"
        if not refresh and global_id in self.cache:
            return succeed(self.cache[global_id])
        d = self.server.fetch(global_id)
        d.addCallback(self._fetched)
        return d

    def _fetched(self, document: Identity) -> Identity:
        self.remember_identity(document)
        return self.cache[document.global_id]

    def update_contacts(self, contacts: list[str]) -> Deferred:
        self.contact_updates.append(list(contacts))
        self.identity = self.identity.updated(now=self.clock.seconds(), contacts=tuple(contacts)).sign(self.rsa)
        self.cache.items[self.global_id] = self.identity
        self.server.published[self.global_id] = self.identity
        return succeed(self.identity)

    def remember_identity(self, document: Identity) -> bool:
        current = self.cache.items.get(document.global_id)
        if current is not None:
            if current.rsa_public_key() != document.rsa_public_key():
                raise Forbidden(f"key of {document.global_id} does not match the pinned one")
            if document.revision <= current.revision:
                return False
        self.cache.items[document.global_id] = document
        self.keybook.verifiers[document.global_id] = IdentityKeyVerifier(document, "ed25519")
        return True

    def forget(self, global_id: str) -> None:
        self.cache.pop(global_id, None)
        self.keybook.verifiers.pop(global_id, None)


class Peer:
    """A gateway with its provider, registry and an inbox for one command."""

    def __init__(self, case: unittest.TestCase, name: str, n: int, server: IdServer, clock: Clock,
                 ids: FakeIdentities | None = None, **kw) -> None:
        self.ids = ids or FakeIdentities(name, n, server, clock)
        self.id = self.ids.global_id
        self.registry = Registry()
        kw.setdefault("packet_timeout", 10.0)
        self.gateway = Gateway(clock, reactor, self.ids, self.registry, **kw)
        case.addCleanup(self.gateway.stop)
        self.received: list[Packet] = []
        self.waiters: list[Deferred] = []
        self.traffic: list[tuple[str, str]] = []
        self.gateway.add_listener(lambda peer, what: self.traffic.append((peer, what)))

    @inlineCallbacks
    def start(self):
        port = yield self.gateway.listen(0)
        yield self.ids.update_contacts([self.gateway.contact])
        return port

    def record(self, packet: Packet, address) -> None:
        """A handler that keeps the packet and wakes the test."""
        self.received.append(packet)
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(packet)

    def next_packet(self) -> Deferred:
        d: Deferred = Deferred()
        self.waiters.append(d)
        return d

    def mark(self, packet: Packet, address) -> None:
        """The sentinel handler (Correspondent packets)."""
        waiter = self.marks.pop(packet.payload, None)
        if waiter is not None:
            waiter.callback(packet)

    def expect_mark(self, payload: bytes) -> Deferred:
        if not hasattr(self, "marks"):
            self.marks: dict[bytes, Deferred] = {}
            self.gateway.router.add(Command.CORRESPONDENT, self.mark)
        d: Deferred = Deferred()
        self.marks[payload] = d
        return d


class PeerNetTestCase(unittest.TestCase):
    """Peers of one fake identity server, timers on a Clock at START (the base of gateway and relay tests)."""

    timeout = 30

    def setUp(self) -> None:
        self.clock = clock_at(START)
        self.server = IdServer()


class GatewayTests(PeerNetTestCase):

    @inlineCallbacks
    def peers(self, *names: str, know_each_other: bool = True, **kw):
        peers = [Peer(self, name, i + 1, self.server, self.clock, **kw) for i, name in enumerate(names)]
        for peer in peers:
            yield peer.start()
        if know_each_other:
            for peer in peers:
                for other in peers:
                    peer.ids.remember_identity(other.ids.identity)
        return peers

    @inlineCallbacks
    def sentinel(self, sender: Peer, receiver: Peer):
        """Deliver a marker after earlier traffic on the same connection: all of it is processed then."""
        self.marks = getattr(self, "marks", 0) + 1
        payload = b"sentinel-%d" % self.marks
        arrived = receiver.expect_mark(payload)
        yield sender.gateway.request(Command.CORRESPONDENT, receiver.id, payload, wait_response=False)
        yield arrived

    # -- request / response ----------------------------------------------------

    @inlineCallbacks
    def test_request_gets_the_reply_with_the_same_packet_id(self) -> None:
        alice, bob = yield self.peers("alice", "bob")

        def serve(packet: Packet, address) -> Deferred:
            return bob.gateway.reply(packet, Command.DATA, b"block for " + packet.payload)

        bob.gateway.router.add(Command.RETRIEVE, serve)
        request = alice.gateway.build(Command.RETRIEVE, bob.id, b"b-7")
        response = yield alice.gateway.send(request)
        self.assertEqual((response.command, response.payload), ("Data", b"block for b-7"))
        self.assertEqual((response.creator_id, response.packet_id), (bob.id, request.packet_id))
        # every packet_out machine is gone once finished, and the history keeps them
        self.assertEqual(len(alice.registry), 0)
        rows = alice.gateway.packets()
        self.assertEqual([(r["command"], r["state"], r.get("response")) for r in rows], [("Retrieve", "DONE", "Data")])
        self.assertEqual(alice.gateway.stats_dict()["gateway"]["finished"]["DONE"], 1)
        self.assertEqual(len(alice.gateway.connections()), 1)
        self.assertEqual(alice.gateway.connections()[0]["peers"], [bob.id])
        self.assertIn((bob.id, "received"), alice.traffic)

    @inlineCallbacks
    def test_a_known_payload_digest_is_signed_unless_a_challenge_rewrites_the_payload(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        block = b"BNBK" + b"z" * 1000
        known = alice.gateway.build(Command.DATA, bob.id, block, payload_sha256=hashlib.sha256(block).digest())
        self.assertEqual(known.payload_sha256, hashlib.sha256(block).digest())
        alice.gateway._peer(bob.id).challenge = b"n" * 16
        wrapped = alice.gateway.build(Command.DELETE_FILE, bob.id, b"V/0/0", payload_sha256=b"\x00" * 32)
        self.assertNotEqual(wrapped.payload, b"V/0/0")
        self.assertEqual(wrapped.payload_sha256, hashlib.sha256(wrapped.payload).digest())

    @inlineCallbacks
    def test_ack_and_fail_replies(self) -> None:
        alice, bob = yield self.peers("alice", "bob")

        def serve(packet: Packet, address) -> Deferred:
            if packet.payload == b"ok":
                return bob.gateway.reply(packet, Command.ACK)
            return bob.gateway.reply(packet, Command.FAIL, b"quota exceeded")

        bob.gateway.router.add(Command.DATA, serve)
        ack = yield alice.gateway.request(Command.DATA, bob.id, b"ok")
        self.assertEqual(ack.command, "Ack")
        err = yield self.assertFailure(alice.gateway.request(Command.DATA, bob.id, b"big"), PeerRefused)
        self.assertEqual(err.reason, "quota exceeded")
        self.assertEqual(len(alice.gateway.connections()), 1)  # one connection, reused

    @inlineCallbacks
    def test_packets_to_one_peer_keep_their_order_and_share_a_connection(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        bob.gateway.router.add(Command.MESSAGE, bob.record)
        sends = [alice.gateway.request(Command.MESSAGE, bob.id, b"%d" % i, wait_response=False) for i in range(20)]
        for d in sends:
            yield d
        while len(bob.received) < 20:
            yield bob.next_packet()
        self.assertEqual([p.payload for p in bob.received], [b"%d" % i for i in range(20)])
        self.assertEqual(len(alice.gateway.connections()), 1)
        self.assertEqual(len(bob.gateway.connections()), 1)

    @inlineCallbacks
    def test_answer_travels_back_on_the_incoming_connection(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        bob.gateway.router.add(Command.LIST_FILES, lambda p, a: bob.gateway.reply(p, Command.FILES, b"[]"))
        yield alice.gateway.request(Command.LIST_FILES, bob.id)
        self.assertEqual([c["direction"] for c in bob.gateway.connections()], ["in"])

    # -- dispatch and drops ------------------------------------------------------

    @inlineCallbacks
    def test_handlers_get_their_commands_and_the_rest_is_counted(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        messages, events = [], []
        bob.gateway.router.add(Command.MESSAGE, lambda p, a: messages.append(p.payload))
        bob.gateway.router.add(Command.EVENT, lambda p, a: events.append(p.payload))
        yield alice.gateway.request(Command.MESSAGE, bob.id, b"hello", wait_response=False)
        yield alice.gateway.request(Command.EVENT, bob.id, b"evt", wait_response=False)
        yield alice.gateway.request(Command.KEY, bob.id, b"no handler", wait_response=False)
        yield alice.gateway.request(Command.ACK, bob.id, b"answers nothing", wait_response=False)
        yield self.sentinel(alice, bob)
        self.assertEqual(messages, [b"hello"])
        self.assertEqual(events, [b"evt"])
        dropped = bob.gateway.stats_dict()["dropped"]
        self.assertEqual((dropped["no_handler"], dropped["unmatched_response"]), (1, 1))

    @inlineCallbacks
    def test_forged_replayed_and_misaddressed_packets_are_dropped_and_counted(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        bob.gateway.router.add(Command.MESSAGE, bob.record)
        address = parse_tcp_contact(bob.gateway.contact)
        raw_send = alice.gateway.transport.send
        mallory = Ed25519Signer(seed(66))
        forged = Packet.create(self.clock, Command.MESSAGE, alice.id, alice.id, bob.id, b"forged", mallory)
        yield raw_send(address, forged)
        once = alice.gateway.build(Command.MESSAGE, bob.id, b"once")
        yield raw_send(address, once)
        yield raw_send(address, once)
        yield raw_send(address, alice.gateway.build(Command.MESSAGE, "carol@127.0.0.1_8084", b"not for bob"))
        unknown = dataclasses.replace(alice.gateway.build(Command.MESSAGE, bob.id), command="Shutdown")
        unknown = dataclasses.replace(unknown, signature=alice.ids.signer.sign(unknown.signed_data()))
        yield raw_send(address, unknown)
        yield self.sentinel(alice, bob)
        self.assertEqual([p.payload for p in bob.received], [b"once"])
        dropped = bob.gateway.stats_dict()["dropped"]
        self.assertEqual({k: v for k, v in dropped.items() if v},
                         {"bad_signature": 1, "replay": 1, "wrong_recipient": 1, "unknown_command": 1})
        self.assertEqual(bob.gateway.stats_dict()["dropped_total"], 4)

    @inlineCallbacks
    def test_oversize_frame_is_dropped_and_counted(self) -> None:
        alice, = yield self.peers("alice")
        bob = Peer(self, "bob", 2, self.server, self.clock, max_frame=4096)
        yield bob.start()
        alice.ids.remember_identity(bob.ids.identity)
        bob.ids.remember_identity(alice.ids.identity)
        conn_closed = Deferred()
        d = alice.gateway.request(Command.DATA, bob.id, b"x" * 8192, wait_response=False)
        yield d
        conn = alice.gateway.transport.connection_to(parse_tcp_contact(bob.gateway.contact))
        if conn is not None:
            conn.when_closed().chainDeferred(conn_closed)
        else:
            conn_closed.callback(None)
        yield conn_closed
        self.assertEqual(bob.gateway.stats_dict()["dropped"]["oversize"], 1)

    def test_router_rules(self) -> None:
        server = IdServer()
        peer = Peer(self, "alice", 1, server, self.clock)
        route = peer.gateway.router.add(Command.MESSAGE, peer.record)
        self.assertRaises(Conflict, peer.gateway.router.add, Command.MESSAGE, peer.record)
        self.assertRaises(Conflict, peer.gateway.router.add, Command.IDENTITY, peer.record)
        self.assertRaises(BadRequest, peer.gateway.router.add, "Shutdown", peer.record)
        route.remove()
        peer.gateway.router.add(Command.MESSAGE, peer.record)

    def test_no_identity_is_a_clear_error(self) -> None:
        ids = FakeIdentities("alice", 1, IdServer(), self.clock)
        ids.identity = None
        err = self.assertRaises(Conflict, Gateway, self.clock, reactor, ids)
        self.assertIn("identity_create", str(err))

    # -- addressing ---------------------------------------------------------------

    @inlineCallbacks
    def test_unknown_peer_is_a_clear_not_found(self) -> None:
        alice, = yield self.peers("alice")
        err = yield self.assertFailure(alice.gateway.request(Command.MESSAGE, "zed@127.0.0.1_8084"), NotFound)
        self.assertIn("unknown user zed@127.0.0.1_8084", str(err))
        self.assertEqual(alice.gateway.packets()[-1]["state"], "FAILED")

    @inlineCallbacks
    def test_peer_without_tcp_contact_is_unavailable(self) -> None:
        alice, = yield self.peers("alice")
        ghost = FakeIdentities("ghost", 3, self.server, self.clock)
        ghost.update_contacts(["udp://127.0.0.1:9"])
        err = yield self.assertFailure(alice.gateway.request(Command.MESSAGE, ghost.global_id), Unavailable)
        self.assertIn("no tcp or proxy contact", str(err))

    @inlineCallbacks
    def test_moved_peer_is_found_again_through_its_identity(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        yield bob.gateway.stop()
        # bob comes back on another port with the same identity and publishes the new contact
        bob2 = Peer(self, "bob", 2, self.server, self.clock, ids=bob.ids)
        yield bob2.start()
        bob2.ids.remember_identity(alice.ids.identity)
        bob2.gateway.router.add(Command.MESSAGE, lambda p, a: bob2.gateway.reply(p, Command.ACK))
        self.assertNotEqual(alice.ids.cache[bob.id].contacts, bob2.ids.identity.contacts)
        ack = yield alice.gateway.request(Command.MESSAGE, bob.id, b"are you there")
        self.assertEqual(ack.command, "Ack")
        self.assertEqual(alice.ids.cache[bob.id].contacts, bob2.ids.identity.contacts)

    @inlineCallbacks
    def test_unreachable_peer_fails_and_listeners_hear_it(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        yield bob.gateway.stop()
        yield self.assertFailure(alice.gateway.request(Command.MESSAGE, bob.id), Unavailable)
        self.assertIn((bob.id, "unreachable"), alice.traffic)

    # -- timeouts and stop ---------------------------------------------------------

    @inlineCallbacks
    def test_silent_peer_times_out(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        bob.gateway.router.add(Command.MESSAGE, bob.record)  # never answers
        arrived = bob.next_packet()
        d = alice.gateway.request(Command.MESSAGE, bob.id, b"anyone?", timeout=5.0)
        yield arrived
        self.assertEqual([r["state"] for r in alice.gateway.packets()], ["WAITING"])
        self.assertEqual([m["state"] for m in alice.registry.list()], ["WAITING"])
        self.clock.advance(5.0)
        yield self.assertFailure(d, Timeout)
        self.assertIn((bob.id, "timeout"), alice.traffic)
        self.assertEqual(alice.gateway.stats_dict()["gateway"]["finished"]["TIMEOUT"], 1)

    @inlineCallbacks
    def test_late_answer_is_counted_as_unmatched(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        held: list[Packet] = []
        bob.gateway.router.add(Command.MESSAGE, lambda p, a: held.append(p))
        arrived = Deferred()
        bob.gateway.router.add(Command.EVENT, lambda p, a: arrived.callback(p))
        d = alice.gateway.request(Command.MESSAGE, bob.id, b"slow", timeout=5.0)
        yield alice.gateway.request(Command.EVENT, bob.id, wait_response=False)
        yield arrived
        self.clock.advance(5.0)
        yield self.assertFailure(d, Timeout)
        yield bob.gateway.reply(held[0], Command.ACK)
        alice.gateway.router.add(Command.MESSAGE, alice.record)
        arrived = alice.next_packet()
        yield bob.gateway.request(Command.MESSAGE, alice.id, b"sentinel", wait_response=False)
        yield arrived
        self.assertEqual(alice.gateway.stats_dict()["dropped"]["unmatched_response"], 1)

    @inlineCallbacks
    def test_stop_fails_packets_in_flight(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        bob.gateway.router.add(Command.MESSAGE, bob.record)
        arrived = bob.next_packet()
        d = alice.gateway.request(Command.MESSAGE, bob.id, b"pending")
        yield arrived
        yield alice.gateway.stop()
        err = yield self.assertFailure(d, Unavailable)
        self.assertIn("stopped", str(err))
        self.assertEqual(len(alice.registry), 0)
        yield self.assertFailure(alice.gateway.request(Command.MESSAGE, bob.id), Unavailable)

    # -- the Identity command --------------------------------------------------------

    @inlineCallbacks
    def test_ping_of_a_known_peer_is_acked(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        ack = yield alice.gateway.ping(bob.id)
        self.assertEqual(ack.command, "Ack")

    @inlineCallbacks
    def test_stranger_introduces_itself_with_an_identity_packet(self) -> None:
        alice, bob = yield self.peers("alice", "bob", know_each_other=False)
        alice.ids.remember_identity(bob.ids.identity)  # alice knows bob, bob never heard of alice
        self.assertIsNone(bob.ids.resolve_verifier(alice.id))
        fetches = self.server.fetches
        ack = yield alice.gateway.ping(bob.id)
        self.assertEqual(ack.command, "Ack")
        # bob checked the document against the identity server, then cached it
        self.assertEqual(self.server.fetches, fetches + 1)
        self.assertEqual(bob.ids.cache[alice.id].contacts, (alice.gateway.contact,))
        self.assertIsNotNone(bob.ids.resolve_verifier(alice.id))
        # from now on bob accepts alice's ordinary packets
        yield self.sentinel(alice, bob)

    @inlineCallbacks
    def test_identity_packet_updates_the_cache_with_a_newer_revision(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        old = bob.ids.cache[alice.id].revision
        yield alice.ids.update_contacts([alice.gateway.contact, "tcp://127.0.0.1:9999"])
        yield alice.gateway.ping(bob.id)
        self.assertEqual(bob.ids.cache[alice.id].revision, old + 1)
        self.assertIn("tcp://127.0.0.1:9999", bob.ids.cache[alice.id].contacts)

    @inlineCallbacks
    def test_made_up_identity_is_not_cached(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        # mallory signs a document for "carol" (whose real one the server has) with her own keys
        carol = FakeIdentities("carol", 3, self.server, self.clock)
        mallory = FakeIdentities("carol", 4, IdServer(), self.clock, publish=False)
        self.assertNotEqual(carol.identity.fingerprint(), mallory.identity.fingerprint())
        impostor = Gateway(self.clock, reactor, mallory, Registry(), packet_timeout=5.0)
        self.addCleanup(impostor.stop)
        mallory.remember_identity(bob.ids.identity)
        d = impostor.ping(bob.id)
        for _ in range(50):
            if bob.gateway.stats_dict()["dropped"].get("bad_introduction"):
                break
            yield self.sentinel(alice, bob)
        self.assertEqual(bob.gateway.stats_dict()["dropped"]["bad_introduction"], 1)
        # bob only knows carol as the identity server publishes her, and never answered the impostor
        self.assertEqual(bob.ids.cache[carol.global_id].fingerprint(), carol.identity.fingerprint())
        self.assertEqual(bob.gateway.stats_dict()["out"]["by_command"].get("Ack", 0), 0)
        self.clock.advance(5.0)
        yield self.assertFailure(d, Timeout)

    @inlineCallbacks
    def test_identity_document_of_someone_else_is_refused(self) -> None:
        alice, bob, carol = yield self.peers("alice", "bob", "carol")
        packet = alice.gateway.build(Command.IDENTITY, bob.id, carol.ids.identity.to_xml())
        err = yield self.assertFailure(alice.gateway.send(packet), PeerRefused)
        self.assertIn("not yours", err.reason)
        self.assertEqual(bob.gateway.stats_dict()["dropped"]["bad_identity"], 1)

    @inlineCallbacks
    def test_identity_with_another_key_than_the_pinned_one_is_refused(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        # alice's name, alice's packet key (so the packet verifies), but a new RSA key
        other = rsa_key(5)
        swapped = dataclasses.replace(alice.ids.identity.updated(now=START + 1),
                                      public_key=other.public_key().to_pem().decode("ascii")).sign(other)
        packet = alice.gateway.build(Command.IDENTITY, bob.id, swapped.to_xml())
        err = yield self.assertFailure(alice.gateway.send(packet), PeerRefused)
        self.assertIn("pinned", err.reason)
        self.assertEqual(bob.ids.cache[alice.id].fingerprint(), alice.ids.identity.fingerprint())

    # -- reporting -----------------------------------------------------------------

    @inlineCallbacks
    def test_streams_are_empty_when_nothing_is_in_flight(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        self.assertEqual(alice.gateway.streams(), [])
        yield alice.gateway.ping(bob.id)
        self.assertEqual(alice.gateway.streams(), [])
        self.assertEqual(bob.gateway.streams(), [])

    @inlineCallbacks
    def test_a_frame_being_received_shows_in_streams(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        yield alice.gateway.ping(bob.id)
        packet = alice.gateway.build(Command.DATA, bob.id, b"z" * 100_000)
        head = packet.encode_header()
        conn = alice.gateway.transport.connection_to(parse_tcp_contact(bob.gateway.contact))
        # the prefix and head, then only 40 000 of the 100 000 payload bytes
        conn.transport.write(PREFIX.pack(2 + len(head) + 100_000, len(head)) + head + packet.payload[:40_000])
        def partly_received():
            rows = bob.gateway.streams()
            return rows if rows and rows[0]["bytes_done"] == 40_000 else None

        (row,) = yield wait_until(partly_received, "40 000 bytes received")
        self.assertEqual((row["direction"], row["bytes_done"], row["bytes_total"], row["progress"]),
                         ("in", 40_000, 100_000, 40.0))
        self.assertEqual(row["peers"], [alice.id])
