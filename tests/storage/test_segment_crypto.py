"""Tests for bitnode.storage.segment_crypto."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.storage import segment_crypto as sc

KEY = bytes(range(32))


class VectorTests(unittest.TestCase):
    """Fixed vectors: changing the nonce or AAD layout breaks old data, so it must break these."""

    def test_nonce_vector(self):
        self.assertEqual(sc.segment_nonce("v1", 7).hex(), "71842b880000000000000007")

    def test_aad_vector(self):
        expected = b"bitnode-seg-v1" + b"\x00\x02v1" + (7).to_bytes(8, "big") + (5).to_bytes(8, "big")
        self.assertEqual(sc.segment_aad("v1", 7, 5), expected)

    def test_ciphertext_vector(self):
        self.assertEqual(
            sc.encrypt_segment(KEY, "v1", 7, b"hello").hex(), "a949bf7c7f3b0349c9d91f9408109ee24e17c678f4"
        )

    def test_vector_decrypts(self):
        blob = bytes.fromhex("a949bf7c7f3b0349c9d91f9408109ee24e17c678f4")
        self.assertEqual(sc.decrypt_segment(KEY, "v1", 7, 5, blob), b"hello")


class RoundTripTests(unittest.TestCase):
    def test_round_trip_various_lengths(self):
        for length in (0, 1, 15, 16, 17, 4096):
            plain = bytes(i % 251 for i in range(length))
            enc = sc.encrypt_segment(KEY, "ver-1", 3, plain)
            self.assertEqual(len(enc), length + sc.TAG_SIZE)
            self.assertEqual(sc.decrypt_segment(KEY, "ver-1", 3, length, enc), plain)

    def test_encryption_is_deterministic_per_version_and_index(self):
        a = sc.encrypt_segment(KEY, "ver-1", 3, b"same")
        self.assertEqual(a, sc.encrypt_segment(KEY, "ver-1", 3, b"same"))
        self.assertNotEqual(a, sc.encrypt_segment(KEY, "ver-1", 4, b"same"))

    def test_nonces_unique_across_indexes(self):
        nonces = {sc.segment_nonce("ver-1", i) for i in range(1000)}
        self.assertEqual(len(nonces), 1000)

    def test_new_version_key_uses_injected_randomness(self):
        self.assertEqual(sc.new_version_key(lambda n: b"\x01" * n), b"\x01" * 32)
        self.assertRaises(BadRequest, sc.new_version_key, lambda n: b"\x01")


class TamperTests(unittest.TestCase):
    def setUp(self):
        self.enc = sc.encrypt_segment(KEY, "ver-1", 3, b"payload bytes")

    def test_segment_swapped_to_other_index_is_rejected(self):
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 4, 13, self.enc)

    def test_segment_moved_to_other_version_is_rejected(self):
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-2", 3, 13, self.enc)

    def test_wrong_length_is_rejected(self):
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 3, 12, self.enc)

    def test_flipped_bit_is_rejected(self):
        bad = bytearray(self.enc)
        bad[0] ^= 1
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 3, 13, bytes(bad))

    def test_wrong_key_is_rejected(self):
        other = bytes(32)
        err = self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, other, "ver-1", 3, 13, self.enc)
        self.assertIn("failed authentication", str(err))

    def test_truncated_tag_is_rejected(self):
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 3, 13, self.enc[:-1])


class ValidationTests(unittest.TestCase):
    def test_bad_key_length(self):
        self.assertRaises(BadRequest, sc.encrypt_segment, b"short", "v", 0, b"")

    def test_bad_version_ids(self):
        for bad in ("", "../x", "a/b", ".hidden", "x" * 129, "sp ace", 5):
            self.assertRaises(BadRequest, sc.validate_version_id, bad)

    def test_bad_index(self):
        self.assertRaises(BadRequest, sc.segment_nonce, "v", -1)
        self.assertRaises(BadRequest, sc.segment_nonce, "v", 2**64)
