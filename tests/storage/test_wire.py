"""Tests for bitnode.storage.wire: storage command payloads."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.storage import wire


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

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=1200))
    def test_random_list_requests(self, payload: bytes) -> None:
        try:
            prefix, after = wire.decode_list_request(payload)
        except BadRequest:
            return
        self.assertIsInstance(prefix, str)
        self.assertIsInstance(after, str)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=300),
                     st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                                  lambda inner: st.lists(inner, max_size=4)
                                  | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                                  max_leaves=20).map(lambda value: json.dumps(
                                      {"version": 1, "blocks": value, "next": value}).encode())))
    def test_random_files_pages(self, payload: bytes) -> None:
        try:
            blocks, after = wire.decode_files_page(payload)
        except BadRequest:
            return
        self.assertIsInstance(blocks, dict)
        self.assertIsInstance(after, str)
