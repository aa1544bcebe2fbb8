"""Tests for bitnode.crypt.keys."""

from __future__ import annotations

import hashlib
import pickle

from Crypto.PublicKey import RSA
from Crypto.Util.number import getPrime, inverse

from bitnode.crypt import fastsign, keys
from bitnode.crypt.keys import DecryptionError, InvalidKey
from bitnode.errors import BadRequest
from tests.crypt.support import KeysTestBase, flip


class GenerateTests(KeysTestBase):
    def test_generated_key_has_requested_size(self) -> None:
        self.assertEqual(self.priv.size_bits, 2048)
        self.assertEqual(self.priv.public_key().size_bits, 2048)
        self.assertEqual(self.priv.raw.e, 65537)

    def test_default_size_is_3072(self) -> None:
        self.assertEqual(keys.DEFAULT_RSA_BITS, 3072)

    def test_bad_sizes_are_rejected(self) -> None:
        for bits in (512, 1000, 1025, 9216, "2048", True, None):
            self.assertRaises(BadRequest, keys.check_key_size, bits)
            self.assertRaises(BadRequest, keys.generate_rsa, bits)

    def test_min_bits_can_be_raised(self) -> None:
        self.assertRaises(BadRequest, keys.check_key_size, 1024, min_bits=2048)
        self.assertEqual(keys.check_key_size(2048, min_bits=2048), 2048)


class PemTests(KeysTestBase):
    def test_private_pem_round_trip(self) -> None:
        pem = keys.private_to_pem(self.priv)
        self.assertTrue(pem.startswith(b"-----BEGIN PRIVATE KEY-----"))
        again = keys.private_from_pem(pem)
        self.assertEqual(again, self.priv)
        self.assertEqual(again.public_key(), self.priv.public_key())

    def test_private_pem_accepts_text_and_pkcs1(self) -> None:
        self.assertEqual(keys.private_from_pem(self.priv.to_pem().decode("ascii")), self.priv)
        pkcs1 = self.priv.raw.export_key(format="PEM", pkcs=1)
        self.assertEqual(keys.private_from_pem(pkcs1), self.priv)

    def test_public_pem_round_trip(self) -> None:
        pem = keys.public_to_pem(self.priv)
        self.assertTrue(pem.startswith(b"-----BEGIN PUBLIC KEY-----"))
        self.assertEqual(keys.public_from_pem(pem), self.priv.public_key())
        self.assertEqual(keys.public_from_pem(pem.decode("ascii")), self.priv.public_key())

    def test_public_der_round_trip(self) -> None:
        der = self.priv.public_key().to_der()
        self.assertEqual(keys.public_from_der(der), self.priv.public_key())

    def test_private_parser_refuses_public_key(self) -> None:
        self.assertRaises(InvalidKey, keys.private_from_pem, keys.public_to_pem(self.priv))

    def test_public_parser_refuses_private_key(self) -> None:
        self.assertRaises(InvalidKey, keys.public_from_pem, self.priv.to_pem())

    def test_garbage_is_rejected(self) -> None:
        for junk in (b"", b"hello", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                     b"\xff\xfe\x00", "\u00e9t\u00e9", 12, None):
            self.assertRaises(InvalidKey, keys.public_from_pem, junk)
            self.assertRaises(InvalidKey, keys.private_from_pem, junk)

    def test_der_is_not_accepted_as_pem(self) -> None:
        self.assertRaises(InvalidKey, keys.public_from_pem, self.priv.public_key().to_der())

    def test_huge_input_is_rejected(self) -> None:
        self.assertRaises(InvalidKey, keys.public_from_pem, b"-----BEGIN " + b"A" * (keys.MAX_PEM_BYTES + 1))

    def test_too_small_key_is_rejected(self) -> None:
        p, q = getPrime(256), getPrime(256)
        small = RSA.construct((p * q, 65537, inverse(65537, (p - 1) * (q - 1))))
        self.assertRaises(InvalidKey, keys.private_from_pem, small.export_key())
        self.assertRaises(InvalidKey, keys.public_from_pem, small.public_key().export_key())

    def test_1024_bit_keys_are_refused_when_made_imported_or_received(self) -> None:
        self.assertRaises(BadRequest, keys.generate_rsa, 1024)
        self.assertRaises(BadRequest, keys.check_key_size, 1024)
        old = RSA.generate(1024)
        for parse, data in ((keys.private_from_pem, old.export_key()),
                            (keys.public_from_pem, old.public_key().export_key()),
                            (keys.public_from_der, old.public_key().export_key(format="DER"))):
            err = self.assertRaises(InvalidKey, parse, data)
            self.assertIn("1024", str(err))

    def test_parse_error_does_not_quote_the_key(self) -> None:
        pem = self.priv.to_pem()
        broken = pem[:60] + b"!!" + pem[62:]
        err = self.assertRaises(InvalidKey, keys.private_from_pem, broken)
        self.assertNotIn(pem[30:60].decode("ascii"), str(err))
        self.assertIsNone(err.__cause__)
        self.assertTrue(err.__suppress_context__)

    def test_repr_never_shows_private_numbers(self) -> None:
        text = repr(self.priv) + str(self.priv) + repr(self.priv.public_key())
        for secret in (self.priv.raw.d, self.priv.raw.p, self.priv.raw.q):
            self.assertNotIn(str(secret), text)
        self.assertIn("2048", text)

    def test_keys_are_immutable_and_private_keys_unpicklable(self) -> None:
        self.assertRaises(AttributeError, setattr, self.priv, "_key", None)
        self.assertRaises(AttributeError, setattr, self.priv.public_key(), "_key", None)
        self.assertRaises(TypeError, pickle.dumps, self.priv)

    def test_equal_keys_hash_alike_and_no_two_kinds_of_key_are_equal(self) -> None:
        ed = fastsign.generate_ed25519()
        for key in (self.priv, self.priv.public_key(), ed, ed.public_key()):
            twin = type(key)(key.raw)
            self.assertEqual((twin, hash(twin)), (key, hash(key)))
        kinds = [self.priv, self.priv.public_key(), ed, ed.public_key(), self.other, self.other.public_key()]
        for i, one in enumerate(kinds):
            for other in kinds[i + 1:]:
                self.assertNotEqual(one, other)
        self.assertEqual(len(set(kinds + [self.priv, ed.public_key()])), len(kinds))

    def test_public_key_wrapper_strips_private_part(self) -> None:
        self.assertFalse(keys.RsaPublicKey(self.priv.raw).raw.has_private())

    def test_private_wrapper_requires_private_key(self) -> None:
        self.assertRaises(InvalidKey, keys.RsaPrivateKey, self.priv.raw.public_key())


class FingerprintTests(KeysTestBase):
    def test_fingerprint_is_sha256_of_der(self) -> None:
        der = self.priv.public_key().to_der()
        self.assertEqual(keys.key_fingerprint(self.priv.public_key()), hashlib.sha256(der).hexdigest())

    def test_fingerprint_is_same_for_private_and_public_half(self) -> None:
        fp = keys.key_fingerprint(self.priv)
        self.assertEqual(fp, keys.key_fingerprint(self.priv.public_key()))
        self.assertEqual(len(fp), 64)
        self.assertEqual(fp, fp.lower())

    def test_fingerprint_survives_pem_round_trip(self) -> None:
        again = keys.public_from_pem(keys.public_to_pem(self.priv))
        self.assertEqual(keys.key_fingerprint(again), keys.key_fingerprint(self.priv))

    def test_different_keys_have_different_fingerprints(self) -> None:
        self.assertNotEqual(keys.key_fingerprint(self.priv), keys.key_fingerprint(self.other))


class SignatureTests(KeysTestBase):
    def test_sign_and_verify(self) -> None:
        sig = keys.sign(self.priv, b"message")
        self.assertEqual(len(sig), 256)
        self.assertTrue(keys.verify(self.priv.public_key(), b"message", sig))
        self.assertTrue(keys.verify(self.priv, b"message", sig))

    def test_pss_signatures_are_randomized(self) -> None:
        one, two = keys.sign(self.priv, b"m"), keys.sign(self.priv, b"m")
        self.assertNotEqual(one, two)
        self.assertTrue(keys.verify(self.priv, b"m", one))
        self.assertTrue(keys.verify(self.priv, b"m", two))

    def test_modified_data_fails(self) -> None:
        sig = keys.sign(self.priv, b"message")
        self.assertFalse(keys.verify(self.priv, b"messagE", sig))

    def test_flipped_signature_bits_fail(self) -> None:
        sig = keys.sign(self.priv, b"message")
        for index in (0, 17, len(sig) - 1):
            self.assertFalse(keys.verify(self.priv, b"message", flip(sig, index)))

    def test_wrong_key_fails(self) -> None:
        sig = keys.sign(self.priv, b"message")
        self.assertFalse(keys.verify(self.other.public_key(), b"message", sig))

    def test_malformed_signatures_return_false(self) -> None:
        sig = keys.sign(self.priv, b"message")
        for bad in (b"", sig[:-1], sig + b"\x00", b"\x00" * 128, b"\xff" * 128, "text", None, 5):
            self.assertFalse(keys.verify(self.priv, b"message", bad))

    def test_verify_with_a_non_key_returns_false(self) -> None:
        self.assertFalse(keys.verify("not a key", b"m", b"\x00" * 128))

    def test_sign_requires_private_key(self) -> None:
        self.assertRaises(TypeError, keys.sign, self.priv.public_key(), b"m")

    def test_verify_der_agrees_with_verify_and_never_raises(self) -> None:
        der = self.priv.public_key().to_der()
        sig = keys.sign(self.priv, b"message")
        self.assertTrue(keys.verify_der(der, b"message", sig))
        self.assertFalse(keys.verify_der(der, b"messagE", sig))
        self.assertFalse(keys.verify_der(der, b"message", flip(sig, 3)))
        self.assertFalse(keys.verify_der(self.other.public_key().to_der(), b"message", sig))
        for bad_der in (b"", b"\x30\x00", der[:-1], "text", None):
            self.assertFalse(keys.verify_der(bad_der, b"message", sig))
        for bad_sig in (b"", sig[:-1], None, 5):
            self.assertFalse(keys.verify_der(der, b"message", bad_sig))

    def test_verify_der_refuses_keys_an_import_refuses(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        small = rsa.RSAPublicNumbers(65537, (1 << 511) | 0x3F).public_key()  # a 512-bit modulus
        ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key()
        for public in (small, ecdsa):
            der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            self.assertFalse(keys.verify_der(der, b"m", b"\x00" * 64))


class WrapTests(KeysTestBase):
    def test_wrap_round_trip(self) -> None:
        secret = bytes(range(32))
        blob = keys.wrap_key(self.priv.public_key(), secret)
        self.assertEqual(len(blob), 256)
        self.assertEqual(keys.unwrap_key(self.priv, blob), secret)

    def test_wrap_is_randomized(self) -> None:
        pub = self.priv.public_key()
        self.assertNotEqual(keys.wrap_key(pub, b"k" * 32), keys.wrap_key(pub, b"k" * 32))

    def test_wrong_key_cannot_unwrap(self) -> None:
        blob = keys.wrap_key(self.priv, b"k" * 32)
        self.assertRaises(DecryptionError, keys.unwrap_key, self.other, blob)

    def test_tampered_blob_cannot_unwrap(self) -> None:
        blob = keys.wrap_key(self.priv, b"k" * 32)
        self.assertRaises(DecryptionError, keys.unwrap_key, self.priv, flip(blob, 5))
        self.assertRaises(DecryptionError, keys.unwrap_key, self.priv, blob[:-1])
        self.assertRaises(DecryptionError, keys.unwrap_key, self.priv, b"")

    def test_secret_too_long_is_rejected(self) -> None:
        limit = keys.max_wrap_size(self.priv)
        self.assertEqual(limit, 256 - 66)
        keys.wrap_key(self.priv, b"x" * limit)
        self.assertRaises(BadRequest, keys.wrap_key, self.priv, b"x" * (limit + 1))

    def test_decryption_error_is_a_bad_request(self) -> None:
        self.assertTrue(issubclass(DecryptionError, BadRequest))
