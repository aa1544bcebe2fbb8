"""Tests for bitnode.dht.messages: encoding, strict parsing, size limits."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.dht import messages
from bitnode.dht.ids import Contact, id_to_hex
from bitnode.dht.messages import Message, Sender
from tests.dht.strategies import PROPERTY, json_values, mutated_bytes, mutated_json, valid_messages

SENDER = Sender(node_id=123, user="http://id/alice.xml", layers=(0, 2))


def wire(**patch: object) -> bytes:
    obj = {"v": 1, "t": "PING", "rid": "00112233445566aa", "layer": 0,
           "from": {"id": id_to_hex(1), "user": "", "layers": [0]}, "body": {}}
    obj.update(patch)
    return json.dumps(obj).encode()


class RoundTripTests(unittest.TestCase):
    def assert_round_trip(self, kind: str, body: dict) -> Message:
        msg = Message(kind=kind, request_id="0123456789abcdef", sender=SENDER, layer=2, body=body)
        back = messages.decode(messages.encode(msg))
        self.assertEqual(back, msg)
        return back

    def test_every_message_type_round_trips(self) -> None:
        self.assert_round_trip(messages.PING, {})
        self.assert_round_trip(messages.PONG, {})
        self.assert_round_trip(messages.FIND_NODE, {"target": 2**255 + 7})
        self.assert_round_trip(messages.NODES, {"contacts": (Contact(5, "127.0.0.1", 9, "u", (0, 2)),)})
        self.assert_round_trip(messages.FIND_VALUE, {"key": "nickname:alice"})
        self.assert_round_trip(messages.VALUE, {"record": {"a": 1}})
        self.assert_round_trip(messages.STORE, {"record": {"a": 1}})
        self.assert_round_trip(messages.STORED, {"ok": False, "code": "conflict", "reason": "taken"})

    def test_request_ids_come_from_the_injected_rng(self) -> None:
        import random

        self.assertEqual(messages.new_request_id(random.Random(9)), messages.new_request_id(random.Random(9)))
        self.assertEqual(len(messages.new_request_id(random.Random(9))), 16)

    def test_fixed_vector_stays_readable(self) -> None:
        data = (b'{"v":1,"t":"FIND_NODE","rid":"00000000000000ff","layer":0,'
                b'"from":{"id":"' + b"0" * 63 + b'1","user":"","layers":[0]},"body":{"target":"' + b"f" * 64 + b'"}}')
        msg = messages.decode(data)
        self.assertEqual((msg.kind, msg.sender.node_id, msg.body["target"]), ("FIND_NODE", 1, 2**256 - 1))


class RejectTests(unittest.TestCase):
    def assert_rejected(self, data: bytes, exc: type = messages.MalformedMessage) -> None:
        self.assertRaises(exc, messages.decode, data)

    def test_garbage_is_rejected(self) -> None:
        for data in (b"", b"\xff\xfe", b"not json", b"[]", b"{}", b"null", b'{"v":1}', b"NaN"):
            self.assert_rejected(data)

    def test_oversize_datagram_is_rejected(self) -> None:
        self.assert_rejected(b" " * (messages.MAX_DATAGRAM + 1), messages.OversizeMessage)

    def test_wrong_version_is_rejected(self) -> None:
        self.assertIsNotNone(messages.decode(wire()))
        for v in (2, 0, "1", True, None):
            self.assert_rejected(wire(v=v))

    def test_bad_fields_are_rejected(self) -> None:
        for patch in ({"t": "HELLO"}, {"rid": "xyz"}, {"rid": "0" * 17}, {"layer": -1}, {"layer": "0"},
                      {"from": {"id": "1"}}, {"from": "me"}, {"body": []},
                      {"t": "FIND_NODE", "body": {"target": "1"}},
                      {"t": "NODES", "body": {"contacts": [{"id": "x"}]}},
                      {"t": "NODES", "body": {"contacts": "all"}},
                      {"t": "FIND_VALUE", "body": {"key": ""}},
                      {"t": "STORE", "body": {"record": "r"}},
                      {"t": "STORED", "body": {"ok": "yes"}}):
            self.assert_rejected(wire(**patch))

    def test_a_type_that_is_not_a_string_is_rejected(self) -> None:
        for kind in (["PING"], {"PING": 1}, 5, None):  # a list once raised TypeError (unhashable)
            self.assert_rejected(wire(t=kind))

    def test_json_constants_are_rejected(self) -> None:
        self.assert_rejected(wire(layer=0).replace(b'"layer": 0', b'"layer": NaN'))

    def test_encode_refuses_oversize(self) -> None:
        msg = Message(messages.STORE, "0123456789abcdef", SENDER, body={"record": {"x": "y" * 9000}})
        self.assertRaises(messages.OversizeMessage, messages.encode, msg)

    def test_encode_fitting_trims_nodes_replies(self) -> None:
        contacts = tuple(Contact(i, "fe80:0000:0000:0000:0000:0000:0000:0001", 1, "u" * 200) for i in range(64))
        msg = Message(messages.NODES, "0123456789abcdef", SENDER, body={"contacts": contacts})
        data = messages.encode_fitting(msg)
        self.assertLessEqual(len(data), messages.MAX_DATAGRAM)
        back = messages.decode(data).body["contacts"]
        self.assertTrue(0 < len(back) < 64)
        self.assertEqual(back, contacts[: len(back)])


class ParserPropertyTests(unittest.TestCase):
    """decode() of random and mutated datagrams raises nothing but MalformedMessage; valid ones round-trip."""

    def decode_or_refuse(self, data: bytes) -> Message | None:
        try:
            return messages.decode(data)
        except messages.MalformedMessage:
            return None

    @PROPERTY
    @given(st.binary(max_size=messages.MAX_DATAGRAM + 64))
    def test_random_bytes(self, data: bytes) -> None:
        self.decode_or_refuse(data)

    @PROPERTY
    @given(json_values)
    def test_random_json(self, value: object) -> None:
        self.decode_or_refuse(json.dumps(value).encode())

    @PROPERTY
    @given(valid_messages(), st.integers(0, 2000))
    def test_valid_messages_round_trip_with_padding(self, msg: Message, pad: int) -> None:
        try:
            data = messages.encode(msg, pad_to=pad)
        except messages.OversizeMessage:
            return
        self.assertGreaterEqual(len(data), min(pad, messages.MAX_DATAGRAM - 9))
        self.assertEqual(messages.decode(data), msg)

    @PROPERTY
    @given(valid_messages())
    def test_encoding_is_the_plain_json_of_the_whole_message(self, msg: Message) -> None:
        # encode() writes NODES contacts and the optional fields itself: the bytes must stay json.dumps's.
        if msg.kind == messages.NODES:
            body = {"contacts": [c.to_dict() for c in msg.body["contacts"]]}
        else:
            body = messages._encode_body(msg.kind, msg.body)
        wire = {"v": 1, "t": msg.kind, "rid": msg.request_id, "layer": msg.layer,
                "from": {"id": f"{msg.sender.node_id:064x}", "user": msg.sender.user,
                         "layers": list(msg.sender.layers)},
                "body": body}
        if msg.token:
            wire["tok"] = msg.token
        if msg.truncated:
            wire["trunc"] = True
        plain = json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            self.assertEqual(messages.encode(msg), plain)
        except messages.OversizeMessage:
            self.assertGreater(len(plain), messages.MAX_DATAGRAM)

    @PROPERTY
    @given(st.data())
    def test_mutated_datagrams(self, data: st.DataObject) -> None:
        msg = data.draw(valid_messages())
        try:
            wire_bytes = messages.encode(msg, pad_to=data.draw(st.sampled_from([0, 600])))
        except messages.OversizeMessage:
            return
        self.decode_or_refuse(data.draw(mutated_bytes(wire_bytes)))
        self.decode_or_refuse(json.dumps(data.draw(mutated_json(json.loads(wire_bytes)))).encode())

    @PROPERTY
    @given(st.data())
    def test_encode_fitting_never_exceeds_its_limit(self, data: st.DataObject) -> None:
        msg = data.draw(valid_messages())
        limit = data.draw(st.integers(100, messages.MAX_DATAGRAM))
        try:
            out = messages.encode_fitting(msg, limit)
        except messages.OversizeMessage:
            return
        self.assertLessEqual(len(out), limit)
        self.assertEqual(messages.decode(out).kind, msg.kind)
