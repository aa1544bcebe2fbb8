"""Tests for bitnode.crypt.aes."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.crypt import aes
from bitnode.crypt.aes import DecryptionError
from bitnode.errors import BadRequest
from tests.crypt.support import KeysTestBase, flip

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


class SymmetricTests(unittest.TestCase):
    def test_round_trip(self) -> None:
        for plaintext in (b"", b"x", b"hello world" * 1000):
            blob = aes.encrypt(KEY, plaintext)
            self.assertEqual(len(blob), len(plaintext) + aes.OVERHEAD)
            self.assertEqual(aes.decrypt(KEY, blob), plaintext)

    def test_format_is_version_nonce_tag_ciphertext(self) -> None:
        blob = aes.encrypt(KEY, b"abc")
        self.assertEqual(blob[0], 1)
        self.assertEqual(aes.OVERHEAD, 1 + 12 + 16)
        self.assertNotIn(b"abc", blob)

    def test_round_trip_with_aad(self) -> None:
        blob = aes.encrypt(KEY, b"secret", aad=b"block-7")
        self.assertEqual(aes.decrypt(KEY, blob, aad=b"block-7"), b"secret")

    def test_wrong_aad_fails(self) -> None:
        blob = aes.encrypt(KEY, b"secret", aad=b"block-7")
        self.assertRaises(DecryptionError, aes.decrypt, KEY, blob, aad=b"block-8")
        self.assertRaises(DecryptionError, aes.decrypt, KEY, blob)

    def test_nonces_are_fresh(self) -> None:
        self.assertNotEqual(aes.encrypt(KEY, b"same"), aes.encrypt(KEY, b"same"))

    def test_wrong_key_fails(self) -> None:
        blob = aes.encrypt(KEY, b"secret")
        self.assertRaises(DecryptionError, aes.decrypt, OTHER_KEY, blob)

    def test_any_flipped_bit_fails(self) -> None:
        blob = aes.encrypt(KEY, b"some plaintext")
        # nonce, tag, ciphertext (first and last byte)
        for index in (1, 12, 13, 20, 28, 29, len(blob) - 1):
            err = self.assertRaises(DecryptionError, aes.decrypt, KEY, flip(blob, index, 0x80))
            self.assertIn("tampered", str(err))

    def test_unknown_version_is_reported(self) -> None:
        blob = bytes([2]) + aes.encrypt(KEY, b"x")[1:]
        err = self.assertRaises(DecryptionError, aes.decrypt, KEY, blob)
        self.assertIn("version 2", str(err))

    def test_short_blob_is_reported(self) -> None:
        blob = aes.encrypt(KEY, b"")
        for short in (b"", blob[:1], blob[:-1]):
            err = self.assertRaises(DecryptionError, aes.decrypt, KEY, short)
            self.assertIn("truncated", str(err))

    def test_truncated_ciphertext_fails(self) -> None:
        blob = aes.encrypt(KEY, b"0123456789")
        self.assertRaises(DecryptionError, aes.decrypt, KEY, blob[:-3])
        self.assertRaises(DecryptionError, aes.decrypt, KEY, blob + b"\x00")

    def test_non_bytes_blob_fails(self) -> None:
        self.assertRaises(DecryptionError, aes.decrypt, KEY, "text")

    def test_bad_key_size_is_rejected(self) -> None:
        for key in (b"", b"k" * 16, b"k" * 33, "k" * 32):
            self.assertRaises(BadRequest, aes.encrypt, key, b"x")
            self.assertRaises(BadRequest, aes.decrypt, key, aes.encrypt(KEY, b"x"))

    def test_generate_key(self) -> None:
        one, two = aes.generate_key(), aes.generate_key()
        self.assertEqual(len(one), 32)
        self.assertNotEqual(one, two)

    def test_decrypt_accepts_memoryview(self) -> None:
        blob = aes.encrypt(KEY, b"payload")
        self.assertEqual(aes.decrypt(KEY, memoryview(blob)), b"payload")


class HybridTests(KeysTestBase):
    def test_round_trip(self) -> None:
        for plaintext in (b"", b"hi", b"long message " * 5000):
            blob = aes.hybrid_encrypt(self.priv.public_key(), plaintext)
            self.assertEqual(aes.hybrid_decrypt(self.priv, blob), plaintext)

    def test_layout(self) -> None:
        blob = aes.hybrid_encrypt(self.priv.public_key(), b"hi")
        self.assertEqual(blob[0], 1)
        self.assertEqual(int.from_bytes(blob[1:3], "big"), 256)
        self.assertEqual(len(blob), 3 + 256 + aes.OVERHEAD + 2)

    def test_aad_round_trip_and_mismatch(self) -> None:
        blob = aes.hybrid_encrypt(self.priv.public_key(), b"hi", aad=b"to:bob")
        self.assertEqual(aes.hybrid_decrypt(self.priv, blob, aad=b"to:bob"), b"hi")
        self.assertRaises(DecryptionError, aes.hybrid_decrypt, self.priv, blob, aad=b"to:eve")

    def test_wrong_private_key_fails(self) -> None:
        blob = aes.hybrid_encrypt(self.priv.public_key(), b"hi")
        self.assertRaises(DecryptionError, aes.hybrid_decrypt, self.other, blob)

    def test_tampering_fails(self) -> None:
        blob = aes.hybrid_encrypt(self.priv.public_key(), b"hello there")
        for index in (3, 70, 3 + 128, 3 + 128 + 20, len(blob) - 1):
            self.assertRaises(DecryptionError, aes.hybrid_decrypt, self.priv, flip(blob, index, 0x80))

    def test_swapped_wrapped_key_fails(self) -> None:
        one = aes.hybrid_encrypt(self.priv.public_key(), b"first")
        two = aes.hybrid_encrypt(self.priv.public_key(), b"second")
        mixed = one[: 3 + 128] + two[3 + 128 :]
        self.assertRaises(DecryptionError, aes.hybrid_decrypt, self.priv, mixed)

    def test_truncated_and_bad_version(self) -> None:
        blob = aes.hybrid_encrypt(self.priv.public_key(), b"hi")
        for short in (b"", blob[:2], blob[:100], blob[: 3 + 128 + 10]):
            self.assertRaises(DecryptionError, aes.hybrid_decrypt, self.priv, short)
        err = self.assertRaises(DecryptionError, aes.hybrid_decrypt, self.priv, b"\x09" + blob[1:])
        self.assertIn("version 9", str(err))
        wrong_len = blob[:1] + (127).to_bytes(2, "big") + blob[3:]
        self.assertRaises(DecryptionError, aes.hybrid_decrypt, self.priv, wrong_len)
