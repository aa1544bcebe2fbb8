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

    def test_version_1_header_packs_to_vector(self):
        header = bf.BlockHeader("v1", 7, 2, 3, 5, 5, 7, hashlib.sha256(PAYLOAD).digest(), format_version=1)
        self.assertEqual(bf.pack_header(header) + PAYLOAD, VECTOR)

    def test_unpack_vector(self):
        header, payload = bf.unpack(VECTOR)
        self.assertEqual(payload, PAYLOAD)
        self.assertEqual(
            header,
            bf.BlockHeader("v1", 7, 2, 3, 5, 5, 7, hashlib.sha256(PAYLOAD).digest(), format_version=1),
        )
        self.assertEqual(bf.header_size("v1", 1), len(VECTOR) - len(PAYLOAD))


V2_VECTOR = bytes.fromhex(
    "424e424b"  # magic "BNBK"
    "02"  # format version 2
    "00010203040506"  # payload
    "7631"  # version id "v1"
    "0000000000000007"  # segment index 7
    "0002"  # block index 2
    "0003"
    "0005"  # k=3, n=5
    "0000000000000005"  # segment plaintext length 5
    "0000000000000007"  # payload length 7
    + hashlib.sha256(b"BNBK\x02" + PAYLOAD).hexdigest()  # sha256(magic, version, payload)
    + "02"  # version id length
)


class Version2Tests(unittest.TestCase):
    """pack() without a nonce writes version 2: the description after the payload, one hash pass for both."""

    def test_pack_produces_v2_vector(self):
        self.assertEqual(bf.pack("v1", 7, 2, 3, 5, 5, PAYLOAD), V2_VECTOR)

    def test_pack_hashed_gives_the_whole_block_hash(self):
        block, digest = bf.pack_hashed("v1", 7, 2, 3, 5, 5, memoryview(PAYLOAD))
        self.assertEqual(block, V2_VECTOR)
        self.assertIsInstance(block, bytes)
        self.assertEqual(digest, hashlib.sha256(V2_VECTOR).hexdigest())

    def test_unpack_v2_vector(self):
        header, payload = bf.unpack(V2_VECTOR)
        self.assertEqual(payload, PAYLOAD)
        self.assertIsInstance(payload, bytes)
        self.assertEqual(
            header,
            bf.BlockHeader("v1", 7, 2, 3, 5, 5, 7, hashlib.sha256(b"BNBK\x02" + PAYLOAD).digest(), format_version=2),
        )
        self.assertEqual(bf.header_size("v1", 2), len(V2_VECTOR) - len(PAYLOAD))

    def test_both_versions_describe_the_same_block(self):
        h1, p1 = bf.unpack(VECTOR)
        h2, p2 = bf.unpack(V2_VECTOR)
        self.assertEqual(p1, p2)
        self.assertEqual(h1.format_version, 1)
        fields = ("version_id", "segment_index", "block_index", "k", "n", "segment_length", "payload_length")
        self.assertEqual([getattr(h1, f) for f in fields], [getattr(h2, f) for f in fields])

    def test_corrupt_v2_payload_or_hash_is_block_corrupt(self):
        for offset in (0 + 5, 11, len(V2_VECTOR) - 2):  # payload start, payload end, inside the hash
            data = bytearray(V2_VECTOR)
            data[offset] ^= 0x01
            self.assertRaises(bf.BlockCorrupt, bf.unpack, bytes(data))

    def test_v2_strict_parsing(self):
        for bad in (V2_VECTOR[:-1], V2_VECTOR + b"\x00", b"BNBK\x02" + V2_VECTOR[5 + 7 :], V2_VECTOR[:5] + b"\x00" + V2_VECTOR[5:]):
            err = self.assertRaises(bf.BlockFormatError, bf.unpack, bad)
            self.assertNotIsInstance(err, bf.BlockCorrupt)
        data = bytearray(V2_VECTOR)
        data[-1] = 200  # version id length beyond the block
        self.assertRaises(bf.BlockFormatError, bf.unpack, bytes(data))
        data = bytearray(V2_VECTOR)
        data[-54] = 5  # low byte of the block index: 5 with n=5
        err = self.assertRaises(bf.BlockFormatError, bf.unpack, bytes(data))
        self.assertNotIsInstance(err, bf.BlockCorrupt)

    def test_trusted_v2_returns_a_view_and_skips_the_hash(self):
        data = bytearray(V2_VECTOR)
        data[5] ^= 0x01
        header, payload = bf.unpack(bytes(data), trusted=True)
        self.assertIsInstance(payload, memoryview)
        self.assertEqual(bytes(payload), bytes([1]) + PAYLOAD[1:])
        self.assertEqual(header.block_index, 2)

    def test_real_sized_block_round_trips(self):
        payload = bytes(range(256)) * 5  # 1280 bytes: a segment of 3824 bytes (+16 tag) with k=3
        block, digest = bf.pack_hashed("ver-1", 3, 4, 3, 5, 3824, payload)
        self.assertEqual(digest, hashlib.sha256(block).hexdigest())
        header, got = bf.unpack(block)
        self.assertEqual((got, header.segment_index, header.block_index), (payload, 3, 4))


NONCE = bytes(range(100, 112))
V3_VECTOR = bytes.fromhex(
    "424e424b"  # magic "BNBK"
    "03"  # format version 3
    "00010203040506"  # payload
    "7631"  # version id "v1"
    "0000000000000007"  # segment index 7
    "0002"  # block index 2
    "0003"
    "0005"  # k=3, n=5
    "0000000000000005"  # segment plaintext length 5
    "0000000000000007"  # payload length 7
    + hashlib.sha256(b"BNBK\x03" + PAYLOAD).hexdigest()  # sha256(magic, version, payload)
    + "6465666768696a6b6c6d6e6f"  # the segment's nonce (12 bytes)
    + "02"  # version id length
)


class Version3Tests(unittest.TestCase):
    """pack() with the segment's nonce writes version 3: version 2's layout plus the nonce before the last byte."""

    def test_pack_produces_v3_vector(self):
        self.assertEqual(bf.pack("v1", 7, 2, 3, 5, 5, PAYLOAD, nonce=NONCE), V3_VECTOR)
        block, digest = bf.pack_hashed("v1", 7, 2, 3, 5, 5, memoryview(PAYLOAD), NONCE)
        self.assertEqual((block, digest), (V3_VECTOR, hashlib.sha256(V3_VECTOR).hexdigest()))

    def test_unpack_v3_vector(self):
        header, payload = bf.unpack(V3_VECTOR)
        self.assertEqual(payload, PAYLOAD)
        self.assertEqual(header, bf.BlockHeader("v1", 7, 2, 3, 5, 5, 7, hashlib.sha256(b"BNBK\x03" + PAYLOAD).digest(),
                                                format_version=3, nonce=NONCE))
        self.assertEqual(bf.header_size("v1"), len(V3_VECTOR) - len(PAYLOAD))
        self.assertEqual(bf.unpack(V2_VECTOR)[0].nonce, b"")

    def test_v3_strict_parsing(self):
        self.assertRaises(bf.BlockFormatError, bf.pack, "v1", 7, 2, 3, 5, 5, PAYLOAD, nonce=b"short")
        for bad in (V3_VECTOR[:-1], V3_VECTOR + b"\x00", V3_VECTOR[:4] + b"\x02" + V3_VECTOR[5:]):
            self.assertRaises(bf.BlockFormatError, bf.unpack, bad)
        data = bytearray(V3_VECTOR)
        data[-2] ^= 1  # the nonce is covered by the whole-block hash the catalog keeps, not the payload hash
        self.assertEqual(bf.unpack(bytes(data))[0].nonce[-1], NONCE[-1] ^ 1)
        self.assertNotEqual(hashlib.sha256(bytes(data)).hexdigest(), hashlib.sha256(V3_VECTOR).hexdigest())


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
        err = self.assertRaises(bf.BlockFormatError, bf.unpack, self._mutate(4, 9))
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


class PackV1Tests(unittest.TestCase):
    def test_pack_v1_produces_the_version_1_vector(self):
        self.assertEqual(bf.pack_v1("v1", 7, 2, 3, 5, 5, memoryview(PAYLOAD)), VECTOR)

    def test_pack_v1_checks_the_header(self):
        self.assertRaises(bf.BlockFormatError, bf.pack_v1, "v1", 0, 0, 3, 5, 5, b"123456")


class SuffixTests(unittest.TestCase):
    """pack_with_suffix: the block and what follows it in one buffer, both hashes from one pass."""

    def test_block_then_suffix_with_both_digests(self):
        suffix = b"V1/0/3\x00\x06\x02"
        packed, block_sha256, whole_sha256 = bf.pack_with_suffix("v1", 7, 2, 3, 5, 5, memoryview(PAYLOAD), NONCE,
                                                                 suffix)
        self.assertEqual(packed, V3_VECTOR + suffix)
        self.assertEqual(block_sha256, hashlib.sha256(V3_VECTOR).hexdigest())
        self.assertEqual(whole_sha256, hashlib.sha256(V3_VECTOR + suffix).digest())

    def test_no_suffix_is_pack_hashed(self):
        packed, block_sha256, whole_sha256 = bf.pack_with_suffix("v1", 7, 2, 3, 5, 5, PAYLOAD)
        self.assertEqual((packed, block_sha256), bf.pack_hashed("v1", 7, 2, 3, 5, 5, PAYLOAD))
        self.assertEqual((packed, whole_sha256), (V2_VECTOR, hashlib.sha256(V2_VECTOR).digest()))
