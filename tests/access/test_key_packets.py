"""Key and AuditKey payloads, the share policy and the audit proofs, without a network."""

from __future__ import annotations

import json

from twisted.trial import unittest

from bitnode.access import key_packets as kx
from bitnode.crypt import keys
from bitnode.crypt.keys import DecryptionError
from bitnode.errors import BadRequest, Forbidden, NotFound

ALICE, BOB, CAROL = "alice@id.net", "bob@id.net", "carol@id.net"
KEY_A = keys.generate_rsa(2048)
KEY_B = keys.generate_rsa(2048)
KEY_C = keys.generate_rsa(2048)


def offer_of(key_id, key, private, label="a label"):
    material = key if private else key.public_key()
    return kx.KeyOffer(key_id, label, private, key.fingerprint(), material.to_pem())


class SealedKeyTests(unittest.TestCase):
    def test_public_and_private_keys_round_trip(self):
        for private in (False, True):
            offer = offer_of("share$" + ALICE, KEY_C, private)
            sealed = kx.seal_key(KEY_B.public_key(), ALICE, BOB, offer)
            self.assertNotIn(b"share$", sealed)  # the key id travels encrypted
            opened = kx.open_key(KEY_B, sealed, ALICE, BOB)
            self.assertEqual(opened, offer)

    def test_tampered_payload_is_rejected(self):
        sealed = bytearray(kx.seal_key(KEY_B.public_key(), ALICE, BOB, offer_of("s$" + ALICE, KEY_C, True)))
        for position in (1, 10, len(sealed) // 2, len(sealed) - 1):
            tampered = bytearray(sealed)
            tampered[position] ^= 0x01
            self.assertRaises(BadRequest, kx.open_key, KEY_B, bytes(tampered), ALICE, BOB)
        self.assertRaises(DecryptionError, kx.open_key, KEY_B, bytes(sealed[:100]), ALICE, BOB)

    def test_only_the_recipient_can_open_it_and_only_from_the_sender(self):
        sealed = kx.seal_key(KEY_B.public_key(), ALICE, BOB, offer_of("s$" + ALICE, KEY_C, False))
        self.assertRaises(DecryptionError, kx.open_key, KEY_A, sealed, ALICE, BOB)  # not bob's key
        self.assertRaises(DecryptionError, kx.open_key, KEY_B, sealed, CAROL, BOB)  # replayed by carol
        self.assertRaises(DecryptionError, kx.open_key, KEY_B, sealed, ALICE, CAROL)  # meant for someone else

    def test_a_key_that_does_not_match_its_fingerprint_is_refused(self):
        lying = kx.KeyOffer("s$" + ALICE, "", False, KEY_A.fingerprint(), KEY_C.public_key().to_pem())
        sealed = kx.seal_key(KEY_B.public_key(), ALICE, BOB, lying)
        err = self.assertRaises(BadRequest, kx.open_key, KEY_B, sealed, ALICE, BOB)
        self.assertIn("fingerprint", str(err))

    def test_share_policy(self):
        self.assertEqual(str(kx.check_share_policy("s$" + ALICE, ALICE, True)), "s$" + ALICE)
        kx.check_share_policy("master$" + ALICE, ALICE, False)
        kx.check_share_policy("master$" + CAROL, ALICE, False)  # verified against carol's identity on arrival
        self.assertRaises(Forbidden, kx.check_share_policy, "master$" + ALICE, ALICE, True)
        # a key of a third party passes here: the reshare policy and the receiver's rules decide
        self.assertEqual(str(kx.check_share_policy("s$" + CAROL, ALICE, True)), "s$" + CAROL)
        self.assertRaises(Forbidden, kx.check_share_policy, "master$" + CAROL, ALICE, True)
        self.assertRaises(BadRequest, kx.check_share_policy, "no-dollar", ALICE, False)

    def test_timeout_must_be_sane(self):
        self.assertEqual(kx.check_timeout(10), 10.0)
        for bad in (0, -1, 3601, True, "5"):
            self.assertRaises(BadRequest, kx.check_timeout, bad)


class AuditProofTests(unittest.TestCase):
    key_id = "s$" + ALICE

    def ask(self, mode, public=None):
        request = kx.make_audit_request((public or KEY_C.public_key()), ALICE, BOB, self.key_id, mode)
        return kx.decode_audit_request(kx.encode_audit_request(request))

    def test_private_audit_passes_with_the_private_key(self):
        request = self.ask("private")
        self.assertTrue(kx.asker_knows_key(KEY_C.public_key(), request, ALICE, BOB))
        proof = kx.answer_audit(request, KEY_C.public_key(), KEY_C, ALICE, BOB)
        answer = kx.encode_audit_answer(request, proof)
        self.assertEqual(kx.check_audit_answer(request, KEY_C.public_key(), answer, ALICE, BOB), "")

    def test_private_audit_fails_with_another_key(self):
        request = self.ask("private")
        proof = kx.answer_audit(request, KEY_A.public_key(), KEY_A, ALICE, BOB)
        answer = kx.encode_audit_answer(request, proof)
        self.assertEqual(kx.check_audit_answer(request, KEY_C.public_key(), answer, ALICE, BOB),
                         "the proof does not verify")

    def test_public_audit_passes_with_the_public_key_only(self):
        request = self.ask("public")
        answer = kx.encode_audit_answer(request, kx.answer_audit(request, KEY_C.public_key(), None, ALICE, BOB))
        self.assertEqual(kx.check_audit_answer(request, KEY_C.public_key(), answer, ALICE, BOB), "")
        wrong = kx.encode_audit_answer(request, kx.answer_audit(request, KEY_A.public_key(), None, ALICE, BOB))
        self.assertEqual(kx.check_audit_answer(request, KEY_C.public_key(), wrong, ALICE, BOB),
                         "the proof does not verify")
        # the public fingerprint alone is not enough to answer
        fake = kx.encode_audit_answer(request, bytes.fromhex(KEY_C.fingerprint()))
        self.assertTrue(kx.check_audit_answer(request, KEY_C.public_key(), fake, ALICE, BOB))

    def test_an_answer_is_good_for_one_audit_only(self):
        request = self.ask("private")
        answer = kx.encode_audit_answer(request, kx.answer_audit(request, KEY_C.public_key(), KEY_C, ALICE, BOB))
        other = self.ask("private")  # a new challenge
        self.assertTrue(kx.check_audit_answer(other, KEY_C.public_key(), answer, ALICE, BOB))
        # the same answer relayed to carol, who audits bob, does not pass either
        self.assertTrue(kx.check_audit_answer(request, KEY_C.public_key(), answer, CAROL, BOB))
        as_public = kx.AuditRequest(request.key_id, "public", request.challenge, request.asker_proof)
        self.assertEqual(kx.check_audit_answer(as_public, KEY_C.public_key(), answer, ALICE, BOB),
                         "the answer is about another audit")

    def test_private_answer_needs_the_private_key(self):
        request = self.ask("private")
        self.assertRaises(NotFound, kx.answer_audit, request, KEY_C.public_key(), None, ALICE, BOB)

    def test_an_asker_with_another_key_is_recognised(self):
        request = self.ask("public", public=KEY_A.public_key())
        self.assertFalse(kx.asker_knows_key(KEY_C.public_key(), request, ALICE, BOB))

    def test_malformed_requests_and_answers(self):
        good = json.loads(kx.encode_audit_request(self.ask("public")))
        for change in ({"version": 2}, {"mode": "secret"}, {"challenge": "!!"}, {"challenge": "AAAA"},
                       {"asker_proof": "zz"}, {"key_id": "nope"}):
            payload = json.dumps(dict(good, **change)).encode()
            self.assertRaises(BadRequest, kx.decode_audit_request, payload)
        self.assertRaises(BadRequest, kx.decode_audit_request, b"[1]")
        self.assertRaises(BadRequest, kx.decode_audit_request, b"x" * (kx.MAX_AUDIT_PAYLOAD + 1))
        request = self.ask("public")
        for payload in (b"", b"{}", b'{"proof": 5}', b"\xff"):
            self.assertTrue(kx.check_audit_answer(request, KEY_C.public_key(), payload, ALICE, BOB))
