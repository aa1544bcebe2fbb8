"""Tests for bitnode.storage.segment_crypto."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.storage import segment_crypto as sc

KEY = bytes(range(32))


class VectorTests(unittest.TestCase):
    """Fixed vectors: changing the nonce or AAD layout breaks old data, so it must break these."""

    def test_format_1_nonce_vector(self):
        self.assertEqual(sc.segment_nonce("v1", 7).hex(), "71842b880000000000000007")

    def test_aad_vector(self):
        expected = b"bitnode-seg-v1" + b"\x00\x02v1" + (7).to_bytes(8, "big") + (5).to_bytes(8, "big")
        self.assertEqual(sc.segment_aad("v1", 7, 5), expected)

    def test_format_1_ciphertext_vector_still_decrypts(self):
        blob = bytes.fromhex("a949bf7c7f3b0349c9d91f9408109ee24e17c678f4")
        self.assertEqual(sc.encrypt_segment_v1(KEY, "v1", 7, b"hello"), blob)
        self.assertEqual(sc.decrypt_segment(KEY, "v1", 7, 5, blob), b"hello")

    def test_format_2_vector(self):
        nonce, blob = sc.encrypt_segment(KEY, "v1", 7, b"hello")
        self.assertEqual(nonce.hex(), "213719980c63e29fccdbe64a")
        self.assertEqual(blob.hex(), "37582c12ac858761391e293e089f5a460722ffc03e")
        self.assertEqual(sc.decrypt_segment(KEY, "v1", 7, 5, blob, nonce), b"hello")


class RoundTripTests(unittest.TestCase):
    def test_round_trip_various_lengths(self):
        for length in (0, 1, 15, 16, 17, 4096):
            plain = bytes(i % 251 for i in range(length))
            nonce, enc = sc.encrypt_segment(KEY, "ver-1", 3, plain)
            self.assertEqual(len(enc), length + sc.TAG_SIZE)
            self.assertEqual(sc.decrypt_segment(KEY, "ver-1", 3, length, enc, nonce), plain)

    def test_same_plaintext_at_the_same_place_encrypts_the_same(self):
        a = sc.encrypt_segment(KEY, "ver-1", 3, b"same")
        self.assertEqual(a, sc.encrypt_segment(KEY, "ver-1", 3, b"same"))
        self.assertNotEqual(a, sc.encrypt_segment(KEY, "ver-1", 4, b"same"))

    def test_changed_plaintext_of_the_same_size_never_reuses_the_nonce(self):
        # A file that changed between an interrupted upload and its resume, same size and mtime:
        # the segment is encrypted again under the same key, version and index.
        first, _ = sc.encrypt_segment(KEY, "ver-1", 3, b"original bytes!")
        second, _ = sc.encrypt_segment(KEY, "ver-1", 3, b"changed  bytes!")
        self.assertNotEqual(first, second)
        nonces = {sc.encrypt_segment(KEY, "ver-1", 0, i.to_bytes(4, "big"))[0] for i in range(2000)}
        self.assertEqual(len(nonces), 2000)

    def test_the_nonce_depends_on_the_key(self):
        self.assertNotEqual(sc.synthetic_nonce(KEY, "v", 0, b"x"), sc.synthetic_nonce(bytes(32), "v", 0, b"x"))

    def test_format_1_nonces_unique_across_indexes(self):
        nonces = {sc.segment_nonce("ver-1", i) for i in range(1000)}
        self.assertEqual(len(nonces), 1000)

    def test_new_version_key_uses_injected_randomness(self):
        self.assertEqual(sc.new_version_key(lambda n: b"\x01" * n), b"\x01" * 32)
        self.assertRaises(BadRequest, sc.new_version_key, lambda n: b"\x01")


class TamperTests(unittest.TestCase):
    def setUp(self):
        self.nonce, self.enc = sc.encrypt_segment(KEY, "ver-1", 3, b"payload bytes")

    def test_wrong_nonce_is_rejected(self):
        self.assertEqual(sc.decrypt_segment(KEY, "ver-1", 3, 13, self.enc, self.nonce), b"payload bytes")
        other = bytes(12)
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 3, 13, self.enc, other)
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 3, 13, self.enc)
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 3, 13, self.enc, b"short")

    def test_segment_swapped_to_other_index_is_rejected(self):
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 4, 13, self.enc, self.nonce)

    def test_segment_moved_to_other_version_is_rejected(self):
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-2", 3, 13, self.enc, self.nonce)

    def test_wrong_length_is_rejected(self):
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 3, 12, self.enc, self.nonce)

    def test_flipped_bit_is_rejected(self):
        bad = bytearray(self.enc)
        bad[0] ^= 1
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 3, 13, bytes(bad), self.nonce)

    def test_wrong_key_is_rejected(self):
        other = bytes(32)
        err = self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, other, "ver-1", 3, 13, self.enc, self.nonce)
        self.assertIn("failed authentication", str(err))

    def test_truncated_tag_is_rejected(self):
        self.assertRaises(sc.SegmentIntegrityError, sc.decrypt_segment, KEY, "ver-1", 3, 13, self.enc[:-1], self.nonce)


class ValidationTests(unittest.TestCase):
    def test_bad_key_length(self):
        self.assertRaises(BadRequest, sc.encrypt_segment, b"short", "v", 0, b"")

    def test_bad_version_ids(self):
        for bad in ("", "../x", "a/b", ".hidden", "x" * 129, "sp ace", 5):
            self.assertRaises(BadRequest, sc.validate_version_id, bad)

    def test_bad_index(self):
        self.assertRaises(BadRequest, sc.segment_nonce, "v", -1)
        self.assertRaises(BadRequest, sc.segment_nonce, "v", 2**64)
