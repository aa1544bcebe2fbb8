"""Tests for bitnode.storage.blockformat: fixed vectors and strict parsing."""

from __future__ import annotations

import hashlib

from twisted.trial import unittest

from bitnode.storage import blockformat as bf

PAYLOAD = bytes(range(7))  # segment of 5 bytes -> 21 encrypted -> 7-byte blocks with k=3
VECTOR = bytes.fromhex(
    "424e424b"  # magic "BNBK"
    "01"  # format version 1
    "02"
    "7631"  # version id "v1"
    "0000000000000007"  # segment index 7
    "0002"  # block index 2
    "0003"
    "0005"  # k=3, n=5
    "0000000000000005"  # segment plaintext length 5
    "0000000000000007"  # payload length 7
    "57355ac3303c148f11aef7cb179456b9232cde33a818dfda2c2fcb9325749a6b"  # sha256(payload)
    "00010203040506"  # payload
)


class VectorTests(unittest.TestCase):
    def test_payload_hash_in_vector_is_sha256(self):
        self.assertEqual(hashlib.sha256(PAYLOAD).hexdigest(), VECTOR[-39:-7].hex())

    def test_pack_produces_vector(self):
        self.assertEqual(bf.pack("v1", 7, 2, 3, 5, 5, PAYLOAD), VECTOR)

    def test_unpack_vector(self):
        header, payload = bf.unpack(VECTOR)
        self.assertEqual(payload, PAYLOAD)
        self.assertEqual(
            header,
            bf.BlockHeader("v1", 7, 2, 3, 5, 5, 7, hashlib.sha256(PAYLOAD).digest(), format_version=1),
        )
        self.assertEqual(bf.header_size("v1"), len(VECTOR) - len(PAYLOAD))


class StrictParsingTests(unittest.TestCase):
    def _mutate(self, offset: int, value: int) -> bytes:
        data = bytearray(VECTOR)
        data[offset] = value
        return bytes(data)

    def test_corrupt_payload_is_block_corrupt(self):
        self.assertRaises(bf.BlockCorrupt, bf.unpack, VECTOR[:-1] + b"\xff")

    def test_corrupt_hash_is_block_corrupt(self):
        self.assertRaises(bf.BlockCorrupt, bf.unpack, self._mutate(len(VECTOR) - 8, 0))

    def test_bad_magic(self):
        self.assertRaises(bf.BlockFormatError, bf.unpack, b"XXXX" + VECTOR[4:])

    def test_unknown_version(self):
        err = self.assertRaises(bf.BlockFormatError, bf.unpack, self._mutate(4, 2))
        self.assertNotIsInstance(err, bf.BlockCorrupt)

    def test_truncated_and_trailing(self):
        for bad in (b"", VECTOR[:10], VECTOR[:-1], VECTOR + b"\x00"):
            self.assertRaises(bf.BlockFormatError, bf.unpack, bad)

    def test_block_index_out_of_range(self):
        self.assertRaises(bf.BlockFormatError, bf.unpack, self._mutate(17, 5))

    def test_k_greater_than_n(self):
        self.assertRaises(bf.BlockFormatError, bf.unpack, self._mutate(19, 6))

    def test_bad_version_id(self):
        self.assertRaises(bf.BlockFormatError, bf.unpack, self._mutate(6, ord("/")))

    def test_payload_length_must_fit_segment(self):
        self.assertRaises(bf.BlockFormatError, bf.pack, "v1", 0, 0, 3, 5, 5, b"123456")

    def test_pack_rejects_bad_header(self):
        self.assertRaises(bf.BlockFormatError, bf.pack, "../x", 0, 0, 1, 1, 0, b"\x00" * 16)


class TrustedUnpackTests(unittest.TestCase):
    """unpack(trusted=True): the caller matched the whole block already (the downloader, against the catalog)."""

    def test_trusted_returns_a_view_of_the_same_payload(self):
        header, payload = bf.unpack(VECTOR, trusted=True)
        self.assertIsInstance(payload, memoryview)
        self.assertEqual(bytes(payload), PAYLOAD)
        self.assertEqual(header, bf.unpack(VECTOR)[0])

    def test_trusted_skips_only_the_payload_hash(self):
        altered = VECTOR[:-1] + b"\xff"
        self.assertRaises(bf.BlockCorrupt, bf.unpack, altered)
        self.assertEqual(bytes(bf.unpack(altered, trusted=True)[1])[-1], 0xFF)
        self.assertRaises(bf.BlockFormatError, bf.unpack, VECTOR[:-1], trusted=True)  # lengths still checked
