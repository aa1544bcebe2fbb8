"""Tests for bitnode.transport.introduction: reading, checking and confirming identity packets.

The whole handshake over real TCP (a stranger's Identity packet reaching a
gateway) is tested in test_gateway; these tests take each piece alone.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial import unittest

from bitnode.crypt import keys
from bitnode.errors import BadRequest, Forbidden, NotFound, Unavailable
from bitnode.transport.commands import Command
from bitnode.transport.introduction import (
    IdentityKeyVerifier,
    IntroductionRefused,
    carried_identity,
    confirm_introduction,
    introduced_identity,
)
from bitnode.transport.packet import Packet
from tests.support import clock_at
from tests.transport.test_gateway import START, FakeIdentities, IdServer


class RsaSigner:
    """Signs packets with an identity's RSA key."""

    algorithm = "rsa-pss-sha256"

    def __init__(self, key: keys.RsaPrivateKey) -> None:
        self.key = key

    def sign(self, data: bytes) -> bytes:
        return keys.sign(self.key, data)


class IntroductionTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = clock_at(START)
        self.server = IdServer()
        self.alice = FakeIdentities("alice", 1, self.server, self.clock)
        self.mallory = FakeIdentities("mallory", 2, self.server, self.clock)

    def packet(self, who: FakeIdentities, payload: bytes, command: Command = Command.IDENTITY,
               creator: FakeIdentities | None = None) -> Packet:
        """A packet signed by ``who`` (claiming to come from ``creator``, by default ``who``)."""
        creator_id = (creator or who).global_id
        return Packet.create(self.clock, command, creator_id, creator_id, "bob@127.0.0.1_8084", payload,
                             who.signer)


class CarriedIdentityTests(IntroductionTestCase):
    def test_own_signed_document_is_read(self) -> None:
        document = carried_identity(self.packet(self.alice, self.alice.identity.to_xml()))
        self.assertEqual(document, self.alice.identity)

    def test_malformed_document_is_bad_request_with_the_reason(self) -> None:
        err = self.assertRaises(BadRequest, carried_identity, self.packet(self.alice, b"<identity>oops"))
        self.assertIn("bad identity document", str(err))

    def test_someone_elses_document_is_refused(self) -> None:
        packet = self.packet(self.mallory, self.alice.identity.to_xml())
        err = self.assertRaises(BadRequest, carried_identity, packet)
        self.assertEqual(str(err), "the identity document is not yours or not signed")

    def test_document_altered_after_signing_is_refused(self) -> None:
        altered = self.alice.identity.to_xml().replace(b"<revision>1</revision>", b"<revision>9</revision>")
        self.assertNotEqual(altered, self.alice.identity.to_xml())
        self.assertRaises(BadRequest, carried_identity, self.packet(self.alice, altered))


class IntroducedIdentityTests(IntroductionTestCase):
    def test_identity_packet_with_a_valid_document_introduces(self) -> None:
        self.assertEqual(introduced_identity(self.packet(self.alice, self.alice.identity.to_xml())),
                         self.alice.identity)

    def test_other_commands_never_introduce(self) -> None:
        packet = self.packet(self.alice, self.alice.identity.to_xml(), command=Command.DATA)
        self.assertIsNone(introduced_identity(packet))

    def test_invalid_documents_do_not_introduce(self) -> None:
        self.assertIsNone(introduced_identity(self.packet(self.alice, b"not xml")))
        self.assertIsNone(introduced_identity(self.packet(self.mallory, self.alice.identity.to_xml())))


class ConfirmIntroductionTests(IntroductionTestCase):
    def fetch_from(self, answer: Deferred):
        calls = []

        def fetch(idurl: str, refresh: bool = False, stranger: bool = False) -> Deferred:
            calls.append((idurl, refresh, stranger))
            return answer

        return fetch, calls

    def test_published_key_confirms(self) -> None:
        fetch, calls = self.fetch_from(succeed(self.alice.identity))
        d = Deferred.fromCoroutine(confirm_introduction(fetch, self.alice.identity))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(calls, [(self.alice.identity.idurl, True, True)])  # asked for a stranger

    def test_another_published_key_is_refused(self) -> None:
        fetch, _ = self.fetch_from(succeed(self.mallory.identity))
        d = Deferred.fromCoroutine(confirm_introduction(fetch, self.alice.identity))
        failure = self.failureResultOf(d, IntroductionRefused)
        self.assertIsInstance(failure.value, Forbidden)
        self.assertIn(self.alice.global_id, str(failure.value))

    def test_errors_of_the_identity_server_pass_through(self) -> None:
        for error in (Unavailable("identity server is down"), NotFound("no such user")):
            fetch, _ = self.fetch_from(fail(error))
            d = Deferred.fromCoroutine(confirm_introduction(fetch, self.alice.identity))
            self.assertIs(self.failureResultOf(d, type(error)).value, error)


class IdentityKeyVerifierTests(IntroductionTestCase):
    def test_ed25519_packets_verify_with_the_documents_signing_key(self) -> None:
        packet = self.packet(self.alice, b"hello")
        data = packet.signed_data()
        self.assertTrue(IdentityKeyVerifier(self.alice.identity, "ed25519").verify(data, packet.signature))
        self.assertFalse(IdentityKeyVerifier(self.mallory.identity, "ed25519").verify(data, packet.signature))

    def test_rsa_packets_verify_with_the_documents_rsa_key(self) -> None:
        packet = Packet.create(self.clock, Command.IDENTITY, self.alice.global_id, self.alice.global_id,
                               "bob@127.0.0.1_8084", b"hi", RsaSigner(self.alice.rsa))
        data = packet.signed_data()
        self.assertTrue(IdentityKeyVerifier(self.alice.identity, "rsa-pss-sha256").verify(data, packet.signature))
        self.assertFalse(IdentityKeyVerifier(self.mallory.identity, "rsa-pss-sha256").verify(data, packet.signature))

    def test_unknown_algorithm_never_verifies(self) -> None:
        packet = self.packet(self.alice, b"hello")
        verifier = IdentityKeyVerifier(self.alice.identity, "hmac-md5")
        self.assertFalse(verifier.verify(packet.signed_data(), packet.signature))
