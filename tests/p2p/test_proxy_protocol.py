"""Tests for bitnode.p2p.proxy_protocol: the route/leave/probe requests and their answers.

Property tests (hypothesis): random and mutated payloads raise only BadRequest,
and what parses is a request the encoder could have made.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.p2p.proxy_protocol import (
    ACTIONS,
    PROXY_SERVICE,
    ProxyRequest,
    decode_answer,
    encode_answer,
    is_proxy_request,
    parse_proxy_request,
    proxy_request,
)
from bitnode.transport.commands import Command

PROPERTY = settings(max_examples=300, deadline=None)


class FakePacket:
    def __init__(self, payload: bytes, command: str = Command.REQUEST_SERVICE.value) -> None:
        self.payload = payload
        self.command = command


class ProxyProtocolTests(unittest.TestCase):
    def test_requests_round_trip(self):
        self.assertEqual(parse_proxy_request(proxy_request("route")), ProxyRequest("route"))
        self.assertEqual(parse_proxy_request(proxy_request("leave")), ProxyRequest("leave"))
        self.assertEqual(parse_proxy_request(proxy_request("probe", 7001)), ProxyRequest("probe", 7001))

    def test_a_probe_needs_a_port(self):
        self.assertRaises(BadRequest, proxy_request, "probe")
        bad = json.dumps({"version": 1, "service": PROXY_SERVICE, "action": "probe", "port": 70000}).encode()
        self.assertRaises(BadRequest, parse_proxy_request, bad)

    def test_a_suppliers_request_is_not_a_proxy_request(self):
        self.assertFalse(is_proxy_request(FakePacket(b'{"version":1,"needed_bytes":1000}')))
        self.assertFalse(is_proxy_request(FakePacket(proxy_request("route"), Command.MESSAGE.value)))
        self.assertTrue(is_proxy_request(FakePacket(proxy_request("route"))))

    def test_unknown_versions_and_actions_are_refused(self):
        for body in ({"version": 2, "service": PROXY_SERVICE, "action": "route"},
                     {"version": 1, "service": PROXY_SERVICE, "action": "relay-everything"},
                     {"version": 1, "service": "service_supplier", "action": "route"},
                     [1, 2, 3]):
            self.assertRaises(BadRequest, parse_proxy_request, json.dumps(body).encode())

    def test_answers_round_trip_and_garbage_is_refused(self):
        self.assertEqual(decode_answer(encode_answer({"accepted": True})), {"accepted": True})
        self.assertRaises(BadRequest, decode_answer, b"[1]")
        self.assertRaises(BadRequest, decode_answer, b"\xff\xfe")

    @PROPERTY
    @given(st.binary(max_size=2048))
    def test_random_payloads_raise_only_bad_request(self, payload):
        try:
            request = parse_proxy_request(payload)
        except BadRequest:
            return
        self.assertIn(request.action, ACTIONS)

    @PROPERTY
    @given(st.sampled_from([proxy_request("route"), proxy_request("leave"), proxy_request("probe", 443)]),
           st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=8))
    def test_mutated_requests_parse_to_a_valid_request_or_raise_bad_request(self, good, at, junk):
        at = min(at, len(good))
        mutated = good[:at] + junk + good[at + len(junk):]
        try:
            request = parse_proxy_request(mutated)
        except BadRequest:
            self.assertFalse(is_proxy_request(FakePacket(mutated)))
            return
        self.assertEqual(parse_proxy_request(proxy_request(request.action, request.port)), request)
        self.assertTrue(is_proxy_request(FakePacket(mutated)))

    @PROPERTY
    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=4), max_leaves=20))
    def test_any_json_answer_decodes_to_a_dict_or_raises_bad_request(self, value):
        try:
            answer = decode_answer(json.dumps(value).encode())
        except BadRequest:
            return
        self.assertIsInstance(answer, dict)
