"""Tests for bitnode.crypt.fastsign (Ed25519)."""

from __future__ import annotations

import pickle

from twisted.trial import unittest

from bitnode.crypt import fastsign, keys
from bitnode.crypt.keys import InvalidKey
from tests.crypt.support import flip

# RFC 8032, section 7.1, TEST 2: secret key, public key, message, signature.
RFC_SECRET = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
RFC_PUBLIC = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
RFC_MESSAGE = bytes.fromhex("72")
RFC_SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


class FastSignTests(unittest.TestCase):
    def setUp(self) -> None:
        # Ed25519 generation is cheap: fresh keys per test.
        self.priv = fastsign.generate_ed25519()
        self.other = fastsign.generate_ed25519()

    def test_sign_and_verify(self) -> None:
        sig = fastsign.sign(self.priv, b"packet")
        self.assertEqual(len(sig), 64)
        self.assertTrue(fastsign.verify(self.priv.public_key(), b"packet", sig))

    def test_signatures_are_deterministic(self) -> None:
        self.assertEqual(fastsign.sign(self.priv, b"p"), fastsign.sign(self.priv, b"p"))

    def test_rfc8032_vector(self) -> None:
        from Crypto.Signature import eddsa

        priv = fastsign.Ed25519PrivateKey(eddsa.import_private_key(RFC_SECRET))
        self.assertEqual(fastsign.public_to_raw(priv), RFC_PUBLIC)
        self.assertEqual(fastsign.sign(priv, RFC_MESSAGE), RFC_SIGNATURE)
        pub = fastsign.public_from_raw(RFC_PUBLIC)
        self.assertTrue(fastsign.verify(pub, RFC_MESSAGE, RFC_SIGNATURE))

    def test_tampered_data_or_signature_fails(self) -> None:
        pub = self.priv.public_key()
        sig = fastsign.sign(self.priv, b"packet")
        self.assertFalse(fastsign.verify(pub, b"packeT", sig))
        for index in (0, 31, 32, 63):
            self.assertFalse(fastsign.verify(pub, b"packet", flip(sig, index)))

    def test_wrong_key_fails(self) -> None:
        sig = fastsign.sign(self.priv, b"packet")
        self.assertFalse(fastsign.verify(self.other.public_key(), b"packet", sig))

    def test_malformed_signature_returns_false(self) -> None:
        pub = self.priv.public_key()
        for bad in (b"", b"\x00" * 63, b"\x00" * 65, b"\xff" * 64, "x" * 64, None):
            self.assertFalse(fastsign.verify(pub, b"packet", bad))
        self.assertFalse(fastsign.verify("not a key", b"packet", b"\x00" * 64))

    def test_raw_public_key_round_trip(self) -> None:
        raw = fastsign.public_to_raw(self.priv.public_key())
        self.assertEqual(len(raw), 32)
        self.assertEqual(raw, fastsign.public_to_raw(self.priv))
        self.assertEqual(fastsign.public_from_raw(raw), self.priv.public_key())

    def test_bad_raw_public_keys_are_rejected(self) -> None:
        for bad in (b"", b"\x01" * 31, b"\x01" * 33, b"\xff" * 32, "a" * 32, None):
            self.assertRaises(InvalidKey, fastsign.public_from_raw, bad)

    def test_private_pem_round_trip(self) -> None:
        pem = fastsign.private_to_pem(self.priv)
        self.assertTrue(pem.startswith(b"-----BEGIN PRIVATE KEY-----"))
        again = fastsign.private_from_pem(pem)
        self.assertEqual(again, self.priv)
        self.assertEqual(fastsign.private_from_pem(pem.decode("ascii")), self.priv)

    def test_bad_private_pem_is_rejected(self) -> None:
        rsa_pem = keys.generate_rsa(2048).to_pem()
        for bad in (b"", b"junk", b"\xff\xfe", rsa_pem, b"-----BEGIN PRIVATE KEY-----\nAA\n", None):
            self.assertRaises(InvalidKey, fastsign.private_from_pem, bad)

    def test_repr_hides_the_seed(self) -> None:
        seed_hex = self.priv.raw.seed.hex()
        self.assertNotIn(seed_hex, repr(self.priv))
        self.assertNotIn(seed_hex, str(self.priv))
        self.assertRaises(TypeError, pickle.dumps, self.priv)

    def test_keys_are_immutable(self) -> None:
        self.assertRaises(AttributeError, setattr, self.priv, "_key", None)
        self.assertRaises(AttributeError, setattr, self.priv.public_key(), "_raw", b"")

    def test_public_keys_hash_and_compare_by_value(self) -> None:
        raw = fastsign.public_to_raw(self.priv)
        self.assertEqual(len({fastsign.public_from_raw(raw), self.priv.public_key()}), 1)
        self.assertNotEqual(self.priv.public_key(), self.other.public_key())
