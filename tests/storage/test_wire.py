"""Tests for bitnode.storage.wire: storage command payloads."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.storage import wire
from bitnode.transport.packet import DIGEST_HOLD


class WireTests(unittest.TestCase):
    def test_data_round_trip_keeps_raw_bytes(self) -> None:
        block = bytes(range(256)) * 4
        payload = wire.encode_data("V1/0/3", block)
        self.assertEqual(len(payload), 3 + len("V1/0/3") + len(block))
        self.assertEqual(wire.decode_data(payload), ("V1/0/3", block))
        self.assertEqual(wire.decode_data(wire.encode_data("p", b"")), ("p", b""))

    def test_malformed_data_is_refused(self) -> None:
        good = wire.encode_data("V1/0/3", b"x")
        for bad in (b"", b"\x01", b"\x02" + good[1:], b"\x01\x00\x00", b"\x01\x00\x10abc", b"\x01\x00\x02\xff\xfe"):
            self.assertRaises(BadRequest, wire.decode_data, bad)
        self.assertRaises(BadRequest, wire.encode_data, "", b"x")
        self.assertRaises(BadRequest, wire.encode_data, "x" * 600, b"x")

    def test_files_round_trip_and_validation(self) -> None:
        blocks = {"V1/0/0": (10, "ab" * 32), "V1/0/1": (0, "cd" * 32)}
        self.assertEqual(wire.decode_files(wire.encode_files(blocks)), blocks)
        for bad in (b"[]", b"nope", b'{"version": 2, "blocks": {}}', b'{"version": 1, "blocks": {"a": [1]}}',
                    b'{"version": 1, "blocks": {"a": ["1", "x"]}}'):
            self.assertRaises(BadRequest, wire.decode_files, bad)

    def test_paths_and_json(self) -> None:
        self.assertEqual(wire.decode_path(wire.encode_path("V1/")), "V1/")
        self.assertRaises(BadRequest, wire.decode_path, b"\xff")
        self.assertRaises(BadRequest, wire.decode_path, b"a" * 600)
        self.assertEqual(wire.decode_json(wire.encode_json({"a": 1})), {"a": 1})
        self.assertRaises(BadRequest, wire.decode_json, b"1")


#: A stored-format block (the wire reads only its magic) at "V1/0/3" in a layout-2 Data payload.
LAYOUT2_BLOCK = bytes.fromhex("424e424b03" "0001020304")  # "BNBK", format 3, then the rest of the block
LAYOUT2_VECTOR = bytes.fromhex(
    "424e424b030001020304"  # the block, first
    "56312f302f33"  # path "V1/0/3"
    "0006"  # path length 6
    "02"  # layout 2
)
#: Layout 1 (still read): any block, here "abc".
LAYOUT1_VECTOR = bytes.fromhex("01" "0006" "56312f302f33" "616263")


class DataLayoutTests(unittest.TestCase):
    """Layout 2 puts a stored-format block first; layout 1 (any other block) is written and read as before."""

    def test_the_longest_trailer_fits_the_streamed_hash_hold(self) -> None:
        self.assertLessEqual(wire.MAX_DATA_TRAILER, DIGEST_HOLD)
        self.assertEqual(len(wire.data_trailer("é" * (wire.MAX_PATH_LENGTH // 2))), wire.MAX_DATA_TRAILER)

    def test_layout_2_vector(self) -> None:
        self.assertEqual(wire.encode_data("V1/0/3", LAYOUT2_BLOCK), LAYOUT2_VECTOR)
        self.assertEqual(wire.decode_data(LAYOUT2_VECTOR), ("V1/0/3", LAYOUT2_BLOCK))
        self.assertEqual(wire.data_trailer("V1/0/3"), LAYOUT2_VECTOR[len(LAYOUT2_BLOCK):])

    def test_layout_1_vector_is_still_read_and_written(self) -> None:
        self.assertEqual(wire.decode_data(LAYOUT1_VECTOR), ("V1/0/3", b"abc"))
        self.assertEqual(wire.encode_data("V1/0/3", b"abc"), LAYOUT1_VECTOR)
        # a layout-1 block may even begin with the magic: its first byte says layout 1
        self.assertEqual(wire.decode_data(b"\x01\x00\x01pBNBK"), ("p", b"BNBK"))

    def test_layout_2_block_is_a_view_without_copy(self) -> None:
        path, block = wire.decode_data(LAYOUT2_VECTOR, copy=False)
        self.assertEqual((path, bytes(block)), ("V1/0/3", LAYOUT2_BLOCK))
        self.assertIs(block.obj, LAYOUT2_VECTOR)

    def test_mutated_layout_2_payloads_are_refused(self) -> None:
        for bad in (
            LAYOUT2_VECTOR[:-1] + b"\x03",  # unknown layout
            LAYOUT2_VECTOR[:-3] + b"\x00\x00\x02",  # empty path
            LAYOUT2_VECTOR[:-3] + b"\x02\x01\x02",  # path longer than the limit
            LAYOUT2_VECTOR[:-3] + b"\x00\x0d\x02",  # path runs into the magic
            b"BNBK\x00\x01\x02",  # a path but no block
            b"BNBK\xff\x00\x01\x02",  # a path that is not UTF-8
            b"BNB",  # too short to be anything
            b"BNBK",
        ):
            self.assertRaises(BadRequest, wire.decode_data, bad)

    def test_data_payload_holds_the_block_and_its_hash(self) -> None:
        trailer = wire.data_trailer("V1/0/3")
        built = LAYOUT2_BLOCK + trailer
        sealed = wire.DataPayload("V1/0/3", built, len(LAYOUT2_BLOCK), hashlib.sha256(built).digest())
        self.assertEqual(bytes(sealed.block), LAYOUT2_BLOCK)
        self.assertEqual(wire.decode_data(sealed.payload), ("V1/0/3", LAYOUT2_BLOCK))

    def test_the_block_hash_comes_from_the_streamed_prefix_hash(self) -> None:
        payload = wire.encode_data("V1/0/3", LAYOUT2_BLOCK * 50)
        asked = []

        def prefix_sha256(length: int) -> str:
            asked.append(length)
            return hashlib.sha256(payload[:length]).hexdigest()

        self.assertEqual(wire.streamed_block_sha256(payload, prefix_sha256), hashlib.sha256(LAYOUT2_BLOCK * 50).hexdigest())
        self.assertEqual(asked, [len(LAYOUT2_BLOCK) * 50])
        # layout 1 (the block is not at the start) or no streamed state: the caller hashes the block itself
        self.assertIsNone(wire.streamed_block_sha256(LAYOUT1_VECTOR, prefix_sha256))
        self.assertIsNone(wire.streamed_block_sha256(payload, None))
        self.assertRaises(BadRequest, wire.streamed_block_sha256, b"BNBK\x00\x09\x02", prefix_sha256)


class DataParserPropertyTests(unittest.TestCase):
    """Bytes from a peer: the Data parser raises nothing but BadRequest, and what it returns is in the payload."""

    def check(self, payload: bytes) -> None:
        def prefix_sha256(length: int) -> str:
            return hashlib.sha256(payload[:length]).hexdigest()

        try:
            path, block = wire.decode_data(payload, copy=False)
        except BadRequest:
            self.assertRaises(BadRequest, wire.streamed_block_sha256, payload, prefix_sha256)
            return
        self.assertIsInstance(path, str)
        self.assertTrue(0 < len(path.encode("utf-8")) <= wire.MAX_PATH_LENGTH)
        self.assertIs(block.obj, payload)
        self.assertIn(wire.streamed_block_sha256(payload, prefix_sha256), (None, hashlib.sha256(block).hexdigest()))
        self.assertEqual(wire.decode_data(payload), (path, bytes(block)))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=700))
    def test_random_payloads(self, payload: bytes) -> None:
        self.check(payload)
        self.check(b"BNBK" + payload)
        self.check(b"\x01" + payload)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from([LAYOUT1_VECTOR, LAYOUT2_VECTOR]), st.integers(min_value=0, max_value=200),
           st.integers(min_value=0, max_value=255), st.integers(min_value=0, max_value=30))
    def test_mutated_payloads(self, good: bytes, position: int, value: int, cut: int) -> None:
        mutated = bytearray(good)
        mutated[position % len(mutated)] = value
        self.check(bytes(mutated))
        self.check(bytes(mutated)[: max(0, len(mutated) - cut)])

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=300), st.text(min_size=1, max_size=40))
    def test_layout_2_round_trip(self, rest: bytes, path: str) -> None:
        block = b"BNBK" + rest
        payload = wire.encode_data(path, block)
        self.assertEqual(wire.decode_data(payload), (path, block))
        self.assertEqual(payload[: len(block)], block)


class NoCopyTests(unittest.TestCase):
    def test_data_without_a_copy_is_a_view_of_the_payload(self) -> None:
        payload = wire.encode_data("V1/0/3", b"raw block")
        path, block = wire.decode_data(payload, copy=False)
        self.assertEqual((path, bytes(block)), ("V1/0/3", b"raw block"))
        self.assertIsInstance(block, memoryview)
        self.assertIs(block.obj, payload)


class HostileJsonTests(unittest.TestCase):
    def test_deeply_nested_json_is_refused_cleanly(self) -> None:
        for depth in (200, 5_000, 200_000):
            for payload in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
                self.assertRaises(BadRequest, wire.decode_json, payload)
                self.assertRaises(BadRequest, wire.decode_files, payload)

    def test_nesting_inside_an_object_is_refused_too(self) -> None:
        payload = b'{"version": 1, "blocks": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
        self.assertRaises(BadRequest, wire.decode_files, payload)


class ListingPageTests(unittest.TestCase):
    def test_list_requests_round_trip(self) -> None:
        self.assertEqual(wire.encode_list_request("V1/"), b"V1/")  # the first page: the old payload
        self.assertEqual(wire.decode_list_request(b"V1/"), ("V1/", ""))
        self.assertEqual(wire.decode_list_request(wire.encode_list_request("", "V1/9/0")), ("", "V1/9/0"))
        for bad in (b"\xff", b"a" * 1100, b"a" * 600 + b"\n", b"\n" + b"a" * 600):
            self.assertRaises(BadRequest, wire.decode_list_request, bad)

    def test_a_files_page_names_where_the_next_begins(self) -> None:
        blocks = {"V1/0/0": (10, "ab" * 32)}
        self.assertEqual(wire.decode_files_page(wire.encode_files(blocks)), (blocks, ""))
        self.assertEqual(wire.decode_files_page(wire.encode_files(blocks, "V1/0/0")), (blocks, "V1/0/0"))
        self.assertRaises(BadRequest, wire.decode_files_page, b'{"version": 1, "blocks": {}, "next": 5}')

    def test_a_full_page_of_long_paths_fits_the_json_limit(self) -> None:
        # The longest paths a customer writes: a share-tagged version id and big indexes.
        version = "share_" + "0" * 32 + ".F20261207T173447308-22cd4f1d"
        blocks = {f"{version}/{10**12 + i}/255": (4 * 1024 * 1024, "ab" * 32) for i in range(wire.LIST_PAGE)}
        payload = wire.encode_files(blocks, next_after=max(blocks))
        self.assertLess(len(payload), wire.MAX_JSON_PAYLOAD)
        self.assertEqual(len(wire.decode_files(payload)), wire.LIST_PAGE)


class ListingParserPropertyTests(unittest.TestCase):
    """Bytes from a peer: the listing parsers raise nothing but BadRequest."""

    def refused_or_typed(self, decode, payload: bytes, *types: type) -> None:
        """``decode(payload)`` refuses the bytes with BadRequest, or answers values of ``types``."""
        try:
            values = decode(payload)
        except BadRequest:
            return
        self.assertEqual(len(values), len(types))
        for value, kind in zip(values, types, strict=True):
            self.assertIsInstance(value, kind)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=1200))
    def test_random_list_requests(self, payload: bytes) -> None:
        self.refused_or_typed(wire.decode_list_request, payload, str, str)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=300),
                     st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                                  lambda inner: st.lists(inner, max_size=4)
                                  | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                                  max_leaves=20).map(lambda value: json.dumps(
                                      {"version": 1, "blocks": value, "next": value}).encode())))
    def test_random_files_pages(self, payload: bytes) -> None:
        self.refused_or_typed(wire.decode_files_page, payload, dict, str)
