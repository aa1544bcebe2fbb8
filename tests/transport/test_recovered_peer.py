"""A node recovered on a new machine (same master key, new packet key, new contacts) and its old peers.

Gateways with the fake identity providers of test_gateway on real loopback
TCP; timers on a Clock.  The recovered node starts with an empty identity
cache; its peers still hold its old identity document (old address, old
packet key).  Nobody calls fetch_identity by hand: the gateways find each
other again by themselves.
"""

from __future__ import annotations

import base64

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from bitnode.errors import Timeout, Unavailable
from bitnode.transport.commands import Command
from bitnode.transport.introduction import UNKNOWN_SENDER, asks_introduction, stranger_refusal
from bitnode.transport.packet import Packet
from tests.interface.support import wait_until
from tests.transport import test_gateway
from tests.transport.test_gateway import START, FakeIdentities, IdServer, Peer
from tests.transport.test_support import Ed25519Signer, seed


def recovered_identities(old: FakeIdentities, n: int, new_seed: int) -> FakeIdentities:
    """``old``'s user on a new machine: the same RSA key, a new packet key, a higher revision, an empty cache."""
    ids = FakeIdentities(old.identity.name, n, old.server, old.clock, publish=False)
    ids.signer = Ed25519Signer(seed(new_seed))
    raw = ids.signer._key.public_key().export_key(format="raw")
    ids.identity = old.identity.updated(now=START + 10, contacts=(),
                                        signing_key=base64.b64encode(raw).decode("ascii")).sign(ids.rsa)
    ids.cache.items.clear()
    ids.keybook.verifiers.clear()
    ids.remember_identity(ids.identity)
    return ids


def acker(peer: Peer):
    """A Message handler that keeps the packet and answers Ack."""

    def handle(packet, address):
        peer.received.append(packet)
        return peer.gateway.reply(packet, Command.ACK)

    return handle


class RecoveredPeerTests(unittest.TestCase):
    timeout = 30
    # borrowed, not inherited: GatewayTests' own tests run in their module
    setUp, peers = test_gateway.GatewayTests.setUp, test_gateway.GatewayTests.peers

    @inlineCallbacks
    def recover(self, peer: Peer, n: int) -> Peer:
        """Stop ``peer`` and bring its user back on a new port with a new packet key; publish it."""
        yield peer.gateway.stop()
        again = Peer(self, peer.ids.identity.name, n, self.server, self.clock,
                     ids=recovered_identities(peer.ids, n, new_seed=40 + n))
        yield again.start()  # publishes the new contact as a higher revision
        again.gateway.router.add(Command.MESSAGE, acker(again))
        return again

    @inlineCallbacks
    def test_a_peer_reaches_a_recovered_node_at_its_new_address(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        old_contacts = alice.ids.cache[bob.id].contacts
        bob2 = yield self.recover(bob, 2)
        self.assertIsNone(bob2.ids.resolve_verifier(alice.id))  # the new machine never heard of alice
        ack = yield alice.gateway.request(Command.MESSAGE, bob.id, b"hello again")
        self.assertEqual(ack.command, "Ack")
        self.assertEqual([p.payload for p in bob2.received], [b"hello again"])
        # alice refreshed bob's identity (new contacts, new packet key); bob2 learned alice's from her
        self.assertNotEqual(alice.ids.cache[bob.id].contacts, old_contacts)
        self.assertEqual(alice.ids.cache[bob.id].revision, bob2.ids.identity.revision)
        self.assertIsNotNone(bob2.ids.resolve_verifier(alice.id))
        self.assertEqual(bob2.gateway.stats_dict()["dropped"]["unknown_sender"], 1)
        # and from now on it just works, both ways
        yield alice.gateway.request(Command.MESSAGE, bob.id, b"second")
        alice.gateway.router.add(Command.MESSAGE, acker(alice))
        ack = yield bob2.gateway.request(Command.MESSAGE, alice.id, b"hi alice")
        self.assertEqual(ack.command, "Ack")

    @inlineCallbacks
    def test_first_packet_from_an_unknown_peer_is_delivered_after_an_introduction(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        bob2 = yield self.recover(bob, 2)
        yield alice.ids.fetch_identity(bob.id, refresh=True)  # alice already has the new address
        fetches = self.server.fetches
        ack = yield alice.gateway.request(Command.MESSAGE, bob.id, b"first contact")
        self.assertEqual(ack.command, "Ack")
        self.assertEqual([p.payload for p in bob2.received], [b"first contact"])
        # bob2 checked alice's introduction against the identity server once
        self.assertEqual(self.server.fetches, fetches + 1)
        self.assertEqual(bob2.ids.cache[alice.id].fingerprint(), alice.ids.identity.fingerprint())

    @inlineCallbacks
    def test_a_recovered_node_reaches_a_peer_holding_its_old_packet_key(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        alice.gateway.router.add(Command.MESSAGE, acker(alice))
        bob2 = yield self.recover(bob, 2)
        old_revision = alice.ids.cache[bob.id].revision
        # bob2 finds alice through the identity server; alice's cached key for bob no longer verifies
        ack = yield bob2.gateway.request(Command.MESSAGE, alice.id, b"it is me, on a new machine")
        self.assertEqual(ack.command, "Ack")
        self.assertEqual([p.payload for p in alice.received], [b"it is me, on a new machine"])
        self.assertEqual(alice.gateway.stats_dict()["dropped"]["bad_signature"], 1)
        self.assertGreater(alice.ids.cache[bob.id].revision, old_revision)

    @inlineCallbacks
    def test_an_unpublished_stranger_is_told_but_gets_nothing_in(self) -> None:
        (bob,) = yield self.peers("bob")
        bob.gateway.router.add(Command.MESSAGE, acker(bob))
        mallory = Peer(self, "mallory", 6, IdServer(), self.clock)  # her identity server is not bob's
        yield mallory.start()
        mallory.ids.remember_identity(bob.ids.identity)
        d = mallory.gateway.request(Command.MESSAGE, bob.id, b"let me in", timeout=5.0)
        for _ in range(50):
            if bob.gateway.stats_dict()["dropped"].get("bad_introduction"):
                break
            yield self.sentinel_from(mallory, bob)
        self.assertEqual(bob.gateway.stats_dict()["dropped"]["unknown_sender"], 1)
        self.assertEqual(bob.gateway.stats_dict()["dropped"]["bad_introduction"], 1)
        self.clock.advance(5.0)
        yield self.assertFailure(d, Timeout)
        self.assertEqual(bob.received, [])
        self.assertFalse(bob.ids.resolve_verifier(mallory.id))

    def sentinel_from(self, sender: Peer, receiver: Peer):
        """Let the reactor turn (the stranger's packets cannot carry a sentinel through)."""
        return deferLater(reactor, 0.01, lambda: None)

    @inlineCallbacks
    def test_a_packet_sent_without_waiting_is_lost_but_the_next_one_gets_through(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        bob2 = yield self.recover(bob, 2)
        yield alice.ids.fetch_identity(bob.id, refresh=True)
        yield alice.gateway.request(Command.MESSAGE, bob.id, b"lost", wait_response=False)
        # the refusal comes back, alice introduces herself
        yield wait_until(lambda: bob2.ids.resolve_verifier(alice.id) is not None, "alice's introduction")
        ack = yield alice.gateway.request(Command.MESSAGE, bob.id, b"next")
        self.assertEqual(ack.command, "Ack")
        self.assertEqual([p.payload for p in bob2.received], [b"next"])

    @inlineCallbacks
    def test_after_a_timeout_a_peer_that_moved_is_looked_up_again(self) -> None:
        alice, bob = yield self.peers("alice", "bob")
        yield alice.gateway.ping(bob.id)  # alice now has an open connection to the old node, which stays up
        bob2 = Peer(self, "bob", 2, self.server, self.clock, ids=recovered_identities(bob.ids, 2, new_seed=42))
        yield bob2.start()
        bob2.gateway.router.add(Command.MESSAGE, acker(bob2))
        # the old node does not answer Messages: the packet times out on the old route
        d = alice.gateway.request(Command.MESSAGE, bob.id, b"anyone?", timeout=5.0)
        self.clock.advance(5.0)
        yield self.assertFailure(d, Timeout)
        self.assertEqual(alice.ids.cache[bob.id].revision, bob2.ids.identity.revision)
        ack = yield alice.gateway.request(Command.MESSAGE, bob.id, b"there you are")
        self.assertEqual(ack.command, "Ack")
        self.assertEqual([p.payload for p in bob2.received], [b"there you are"])
        # at most one lookup per interval: another timeout right away does not ask the server again
        fetches = self.server.fetches
        yield bob2.gateway.stop()
        d = alice.gateway.request(Command.CORRESPONDENT, bob.id, b"x", timeout=5.0)
        self.clock.advance(5.0)
        yield self.assertFailure(d, Timeout, Unavailable)
        self.assertLessEqual(self.server.fetches, fetches + 1)

    def test_the_refusal_names_the_refused_packet(self) -> None:
        alice_ids = FakeIdentities("alice", 1, IdServer(), self.clock)

        def fail(payload: bytes) -> Packet:
            return Packet.create(self.clock, Command.FAIL, alice_ids.global_id, alice_ids.global_id,
                                 alice_ids.global_id, payload, alice_ids.signer)

        self.assertEqual(asks_introduction(fail(stranger_refusal("abc123"))), "abc123")
        self.assertIsNone(asks_introduction(fail(UNKNOWN_SENDER.encode("utf-8"))))
        self.assertIsNone(asks_introduction(fail(b"no")))
