"""Tests for bitnode.boundedjson, and the peer-side parsers that use it: hostile JSON is a clean refusal."""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode import boundedjson
from bitnode.access import group_protocol, key_packets
from bitnode.boundedjson import BadJson
from bitnode.errors import BadRequest
from bitnode.storage import share_scope
from bitnode.userid.id_client import _server_message

DEEP_LIST = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
JUST_TOO_DEEP = b"[" * 33 + b"]" * 33

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


class LoadsTests(unittest.TestCase):
    def test_ordinary_documents_parse(self) -> None:
        self.assertEqual(boundedjson.loads(b'{"a": [1, {"b": "[[[["}]}'), {"a": [1, {"b": "[[[["}]})
        self.assertEqual(boundedjson.loads("[]"), [])
        self.assertEqual(boundedjson.loads(memoryview(b"[" * 32 + b"]" * 32)), json.loads("[" * 32 + "]" * 32))

    def test_many_brackets_side_by_side_are_not_depth(self) -> None:
        wide = json.dumps({"blocks": {f"V1/{n}": [n, "ab"] for n in range(5000)}}).encode()
        self.assertEqual(len(boundedjson.loads(wide)["blocks"]), 5000)

    def test_deep_nesting_is_a_bad_request_not_a_recursion_error(self) -> None:
        for data in (DEEP_LIST, DEEP_OBJECT, JUST_TOO_DEEP):
            err = self.assertRaises(BadJson, boundedjson.loads, data)
            self.assertIsInstance(err, BadRequest)
            self.assertIsInstance(err, ValueError)
            self.assertIn("nested", str(err))

    def test_other_bad_input_says_what_was_wrong(self) -> None:
        self.assertIn("not UTF-8", str(self.assertRaises(BadJson, boundedjson.loads, b"\xff", "thing")))
        self.assertIn("not JSON", str(self.assertRaises(BadJson, boundedjson.loads, b"{", "thing")))
        self.assertIn("over 3 bytes", str(self.assertRaises(BadJson, boundedjson.loads, b"[1,2]", max_bytes=3)))

    def test_depth_counts_levels_iteratively(self) -> None:
        self.assertEqual(boundedjson.depth(1), 0)
        self.assertEqual(boundedjson.depth([1, {"a": [2]}]), 3)
        value: list = []
        for _ in range(50_000):
            value = [value]
        self.assertEqual(boundedjson.depth(value, stop_after=10), 11)

    @settings(max_examples=200, deadline=None)
    @given(json_values)
    def test_any_shallow_value_round_trips(self, value) -> None:
        data = json.dumps(value).encode()
        if boundedjson.depth(value) <= boundedjson.MAX_DEPTH:
            self.assertEqual(boundedjson.loads(data), json.loads(data))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300) | st.text(alphabet="[]{}\":,0123456789 ae\\", max_size=300).map(str.encode))
    def test_random_bytes_never_raise_anything_but_bad_json(self, data: bytes) -> None:
        try:
            boundedjson.loads(data)
        except BadJson:
            pass


class PeerParsersTests(unittest.TestCase):
    """Every parser of a peer's JSON refuses hostile nesting with its own error, never a crash."""

    def test_key_packet_json(self) -> None:
        self.assertRaises(BadRequest, key_packets.json_object, DEEP_OBJECT, "key packet")

    def test_group_frame_header(self) -> None:
        payload = group_protocol.MAGIC + struct.pack(">I", len(JUST_TOO_DEEP)) + JUST_TOO_DEEP
        self.assertRaises(group_protocol.FrameError, group_protocol.decode_frame, payload)

    def test_share_readers_list(self) -> None:
        self.assertRaises(BadRequest, share_scope.decode_readers, b"[" * 5000 + b"]" * 5000, "alice@id", "share_x")

    def test_identity_server_error_envelope(self) -> None:
        self.assertEqual(_server_message(DEEP_LIST), "")
