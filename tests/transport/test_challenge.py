"""Tests for bitnode.transport.challenge: destructive commands need a nonce from this very process (14.7)."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from automats import Registry
from bitnode.customer.remote_store import error_from_fail
from bitnode.errors import Forbidden
from bitnode.transport import challenge
from bitnode.transport.challenge import DESTRUCTIVE, Challenges
from bitnode.transport.commands import Command
from bitnode.transport.gateway import Gateway, parse_tcp_contact
from bitnode.transport.packet import Packet
from bitnode.transport.packet_out import PeerRefused
from tests.interface.support import wait_until
from tests.transport.test_attacks import AttackTestCase, frame_of


class PayloadTests(unittest.TestCase):
    def test_wrap_and_unwrap(self) -> None:
        nonce = bytes(range(16))
        self.assertEqual(challenge.unwrap(challenge.wrap(nonce, b"V1/0/3")), (nonce, b"V1/0/3"))
        self.assertEqual(challenge.unwrap(b"V1/0/3"), (None, b"V1/0/3"))
        self.assertEqual(challenge.unwrap(b""), (None, b""))
        self.assertEqual(challenge.unwrap(challenge.MAGIC + b"short"), (None, challenge.MAGIC + b"short"))

    def test_the_refusal_carries_the_nonce_and_reads_as_forbidden_to_an_old_peer(self) -> None:
        nonce = b"\xab" * 16
        refusal = challenge.challenge_refusal(nonce)
        self.assertEqual(challenge.asks_challenge(refusal), nonce)
        self.assertIsNone(challenge.asks_challenge(b"forbidden: something else"))
        self.assertIsNone(challenge.asks_challenge(challenge.REFUSAL.encode() + b"\nzz"))
        self.assertIsInstance(error_from_fail(refusal.decode()), Forbidden)

    def test_the_destructive_commands(self) -> None:
        self.assertEqual(DESTRUCTIVE, {"CancelService", "DeleteBackup", "DeleteFile"})


class ChallengesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        counter = iter(range(1000))
        self.book = Challenges(self.clock, ttl=60, max_peers=3, random_bytes=lambda n: bytes([next(counter)]) * n)

    def test_a_nonce_is_accepted_only_from_its_peer_and_only_while_fresh(self) -> None:
        nonce = self.book.issue("alice")
        self.assertEqual(self.book.issue("alice"), nonce)  # the same one while it is valid
        self.assertTrue(self.book.accept("alice", nonce))
        self.assertTrue(self.book.accept("alice", nonce))
        self.assertFalse(self.book.accept("bob", nonce))
        self.assertFalse(self.book.accept("alice", None))
        self.clock.advance(60)
        self.assertFalse(self.book.accept("alice", nonce))
        self.assertNotEqual(self.book.issue("alice"), nonce)
        self.assertEqual(self.book.stats()["issued"], 2)
        self.assertEqual((self.book.stats()["accepted"], self.book.stats()["refused"]), (2, 3))

    def test_a_new_book_knows_no_nonce(self) -> None:
        nonce = self.book.issue("alice")
        self.assertFalse(Challenges(self.clock).accept("alice", nonce))

    def test_memory_is_bounded(self) -> None:
        first = self.book.issue("p0")
        for n in range(1, 10):
            self.book.issue(f"p{n}")
        self.assertEqual(self.book.stats()["peers"], 3)
        self.assertFalse(self.book.accept("p0", first))


class GatewayChallengeTests(AttackTestCase):
    @inlineCallbacks
    def setUpPeers(self):
        self.alice, self.bob = yield self.peers("alice", "bob")
        self.deleted: list[bytes] = []

        def delete(packet: Packet, address):
            self.deleted.append(packet.payload)
            return self.bob.gateway.reply(packet, Command.ACK, b'{"deleted": 1}')

        self.bob.gateway.router.add(DESTRUCTIVE, delete)

    @inlineCallbacks
    def test_a_destructive_command_gets_through_after_one_challenge(self) -> None:
        yield self.setUpPeers()
        ack = yield self.alice.gateway.request(Command.DELETE_FILE, self.bob.id, b"V1/0/3")
        self.assertEqual(ack.command, "Ack")
        self.assertEqual(self.deleted, [b"V1/0/3"])  # the handler sees the plain payload
        ack = yield self.alice.gateway.request(Command.CANCEL_SERVICE, self.bob.id, b"")
        self.assertEqual(self.deleted, [b"V1/0/3", b""])
        stats = self.bob.gateway.stats_dict()["limits"]["challenges"]
        # one refusal for the first packet only: alice kept the nonce for the next one
        self.assertEqual((stats["issued"], stats["refused"], stats["accepted"]), (1, 1, 2))
        self.assertEqual(self.alice.gateway.stats_dict()["limits"]["challenges"]["answered"], 1)
        self.assertEqual(self.alice.gateway.packets()[-1]["state"], "DONE")

    @inlineCallbacks
    def test_ordinary_commands_need_no_challenge(self) -> None:
        yield self.setUpPeers()
        yield self.delivered(self.alice, self.bob)
        self.assertEqual(self.bob.gateway.stats_dict()["limits"]["challenges"]["issued"], 0)

    @inlineCallbacks
    def test_a_sender_that_does_not_answer_challenges_fails_safe(self) -> None:
        yield self.setUpPeers()
        packet = self.alice.gateway.build(Command.DELETE_FILE, self.bob.id, b"V1/0/3")
        machine_refusal = self.alice.gateway.send(packet)
        # an old peer knows nothing of challenges: as if it had answered one already
        self.alice.gateway._waiting[(self.bob.id, packet.packet_id)].challenged = True
        err = yield self.assertFailure(machine_refusal, PeerRefused)
        self.assertTrue(err.reason.startswith("forbidden: a fresh challenge is required"))
        self.assertEqual(self.deleted, [])

    @inlineCallbacks
    def test_after_the_receiver_restarts_the_old_nonce_is_void_and_a_new_one_is_fetched(self) -> None:
        yield self.setUpPeers()
        yield self.alice.gateway.request(Command.DELETE_FILE, self.bob.id, b"one")
        yield self.restart_bob()
        yield self.alice.gateway.request(Command.DELETE_FILE, self.bob.id, b"two")
        self.assertEqual(self.deleted, [b"one", b"two"])
        stats = self.bob.gateway.stats_dict()["limits"]["challenges"]
        self.assertEqual((stats["refused"], stats["accepted"]), (1, 1))

    @inlineCallbacks
    def test_a_captured_destructive_packet_dated_ahead_is_refused_after_a_restart(self) -> None:
        yield self.setUpPeers()
        yield self.alice.gateway.request(Command.DELETE_FILE, self.bob.id, b"first")
        # alice's clock runs 50 s ahead: her packet is dated after bob's next start
        ahead = Clock()
        ahead.advance(self.clock.seconds() + 50)
        nonce = self.alice.gateway._peers[self.bob.id].challenge
        captured = Packet.create(ahead, Command.DELETE_BACKUP, self.alice.id, self.alice.id, self.bob.id,
                                 challenge.wrap(nonce, b"V1"), self.alice.ids.signer)
        yield self.restart_bob()
        attacker = yield self.raw(self.bob)
        attacker.transport.write(frame_of(captured))
        yield wait_until(lambda: self.bob.gateway.stats_dict()["limits"]["challenges"]["refused"] == 1,
                         "the replay refused")
        self.assertEqual(self.deleted, [b"first"])
        yield self.delivered(self.alice, self.bob)

    @inlineCallbacks
    def test_a_destructive_packet_replayed_in_the_same_process_is_a_replay(self) -> None:
        yield self.setUpPeers()
        yield self.alice.gateway.request(Command.DELETE_FILE, self.bob.id, b"first")
        sent = [row for row in self.alice.gateway.packets() if row["command"] == "DeleteFile"]
        self.assertEqual(len(sent), 1)
        nonce = self.alice.gateway._peers[self.bob.id].challenge
        packet = self.alice.gateway.build(Command.DELETE_FILE, self.bob.id, b"again")
        self.assertEqual(challenge.unwrap(packet.payload), (nonce, b"again"))
        address = parse_tcp_contact(self.bob.gateway.contact)
        yield self.alice.gateway.transport.send(address, packet)
        yield self.alice.gateway.transport.send(address, packet)
        yield wait_until(lambda: self.bob.gateway.stats_dict()["dropped"]["replay"] == 1, "the replay dropped")
        self.assertEqual(self.deleted, [b"first", b"again"])

    @inlineCallbacks
    def restart_bob(self):
        bob = self.bob
        yield bob.gateway.stop()
        yield wait_until(lambda: not self.alice.gateway.connections(), "alice to see bob's connection gone")
        self.clock.advance(5)
        routes = [row["command"] for row in bob.gateway.router.table() if row.get("owner") == "" and "refusal" not in row]
        handlers = {command: bob.gateway.router.handler_for(_packet_of(command)) for command in routes}
        bob.gateway = Gateway(self.clock, reactor, bob.ids, Registry(), packet_timeout=10.0)
        self.addCleanup(bob.gateway.stop)
        yield bob.start()
        for command, handler in handlers.items():
            bob.gateway.router.add(command, handler)


def _packet_of(command: str):
    """A stand-in packet of ``command`` for asking the router which handler takes it."""
    return SimpleNamespace(command=command, payload=b"")
