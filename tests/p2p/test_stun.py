"""Tests for bitnode.p2p.stun (RFC 5389 Binding), its service and network_stun."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.app import api_server
from bitnode.errors import BadRequest, Timeout
from bitnode.p2p import stun
from bitnode.p2p.stun_service import StunServerService
from tests.interface.support import start_node

# RFC 5769 section 2.2: a sample IPv4 Binding response (with SOFTWARE, MESSAGE-INTEGRITY, FINGERPRINT).
RFC5769_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def write(self, data: bytes, addr: tuple) -> None:
        self.sent.append((data, addr))


class CodecTests(unittest.TestCase):
    def test_rfc5769_response_vector(self) -> None:
        kind, tid, body = stun.parse_header(RFC5769_RESPONSE)
        self.assertEqual((kind, tid.hex()), (stun.BINDING_SUCCESS, "b7e7a701bc34d686fa87dfae"))
        self.assertEqual(stun.parse_mapped_address(stun.parse_attributes(body)), ("192.0.2.1", 32853))

    def test_our_response_round_trips(self) -> None:
        request, tid = stun.binding_request(b"\x01" * 12)
        self.assertEqual(len(request), 20)
        kind, _tid, body = stun.parse_header(stun.binding_response(tid, "127.0.0.1", 40000))
        attributes = stun.parse_attributes(body)
        self.assertEqual(stun.parse_mapped_address(attributes), ("127.0.0.1", 40000))
        self.assertEqual(stun.parse_mapped_address({1: attributes[stun.ATTR_MAPPED_ADDRESS]}), ("127.0.0.1", 40000))

    def test_malformed_messages_are_refused(self) -> None:
        good, _ = stun.binding_request()
        for bad in (b"", good[:19], good + b"\x00", good[:4] + b"\x00\x00\x00\x00" + good[8:],
                    b"\xc0" + good[1:], good[:2] + b"\x00\x04" + good[4:] + b"\x00\x20\x00\x08",
                    b"\x00" * 600):
            self.assertRaises(BadRequest, lambda b=bad: stun.parse_attributes(stun.parse_header(b)[2]))
        self.assertRaises(BadRequest, stun.parse_mapped_address, {})
        self.assertRaises(BadRequest, stun.binding_request, b"short")


class ServerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.server = stun.StunServer()
        self.server.transport = RecordingTransport()

    def test_answers_requests_with_the_source_address(self) -> None:
        request, tid = stun.binding_request()
        self.server.datagramReceived(request, ("127.0.0.5", 5555))
        (data, addr), = self.server.transport.sent
        self.assertEqual(addr, ("127.0.0.5", 5555))
        kind, got_tid, body = stun.parse_header(data)
        self.assertEqual((kind, got_tid), (stun.BINDING_SUCCESS, tid))
        self.assertEqual(stun.parse_mapped_address(stun.parse_attributes(body)), ("127.0.0.5", 5555))

    def test_garbage_and_responses_are_ignored(self) -> None:
        for junk in (b"hello", RFC5769_RESPONSE, b"\x00\x01\x00\x00" + b"\x00" * 16):
            self.server.datagramReceived(junk, ("127.0.0.1", 1))
        self.assertEqual(self.server.transport.sent, [])
        self.assertEqual(self.server.counters["ignored"], 3)


class ClientTests(unittest.TestCase):
    def test_retries_then_times_out(self) -> None:
        clock = Clock()
        client = stun.StunClient(clock)
        client.transport = RecordingTransport()
        d = client.query(("127.0.0.1", 3478), timeout=1.0, retries=2)
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertNoResult(d)
        clock.advance(1.0)
        self.failureResultOf(d, Timeout)
        self.assertEqual(len(client.transport.sent), 3)

    def test_answer_matches_its_request_only(self) -> None:
        clock = Clock()
        client = stun.StunClient(clock)
        client.transport = RecordingTransport()
        d = client.query(("127.0.0.1", 3478))
        request, _ = client.transport.sent[0]
        _kind, tid, _body = stun.parse_header(request)
        client.datagramReceived(stun.binding_response(b"\x09" * 12, "1.2.3.4", 1), ("127.0.0.1", 3478))
        client.datagramReceived(b"junk", ("127.0.0.1", 3478))
        self.assertNoResult(d)
        client.datagramReceived(stun.binding_response(tid, "127.0.0.1", 4242), ("127.0.0.1", 3478))
        self.assertEqual(self.successResultOf(d), ("127.0.0.1", 4242))
        self.assertEqual(client.counters["ignored"], 2)
        self.assertEqual(clock.getDelayedCalls(), [])


class NetworkStunTests(unittest.TestCase):
    timeout = 30

    @inlineCallbacks
    def test_network_stun_through_the_api_on_loopback(self):
        server = yield start_node(self, service_classes=[StunServerService],
                                  overrides={"services/ip-port-responder/enabled": True,
                                             "services/ip-port-responder/udp-port": 0})
        port = server.service_driver.get("service_ip_port_responder").port
        client = yield start_node(self, service_classes=[],
                                  overrides={"services/stun-client/servers": [f"127.0.0.1:{port}"]})
        answer = yield api_server(client).dispatcher.execute_by_name("network_stun", {})
        self.assertEqual(answer.code, 200, answer.envelope)
        (result,) = answer.envelope["result"]
        self.assertEqual((result["ip"], result["port"]), ("127.0.0.1", result["local_port"]))
        self.assertEqual(server.service_driver.info("service_ip_port_responder")["status"]["answered"], 1)

    @inlineCallbacks
    def test_network_stun_errors(self):
        node = yield start_node(self, service_classes=[])
        answer = yield api_server(node).dispatcher.execute_by_name("network_stun", {})
        self.assertEqual(answer.code, 503)
        self.assertIn("services/stun-client/servers", answer.envelope["errors"][0])
        silent = reactor.listenUDP(0, stun.StunClient(reactor), interface="127.0.0.1")  # never answers
        self.addCleanup(silent.stopListening)
        node.settings.set("services/stun-client/servers", [f"127.0.0.1:{silent.getHost().port}"])
        busy = reactor.listenUDP(0, stun.StunClient(reactor), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        answer = yield api_server(node).dispatcher.execute_by_name("network_stun", {"udp_port": busy.getHost().port})
        self.assertEqual(answer.code, 409)
        answer = yield api_server(node).dispatcher.execute_by_name("network_stun", {"udp_port": 70000})
        self.assertEqual(answer.code, 400)
