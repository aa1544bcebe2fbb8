"""Property tests (hypothesis) for the STUN codec: what a UDP stranger sends is refused or answered, never fatal.

Random and mutated datagrams make the parsers raise only their own error
(BadRequest), the server answers only well-formed Binding requests, and the
client takes only the answer to a request it made.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.p2p import stun

TID = b"\x07" * 12
REQUEST, _ = stun.binding_request(TID)
RESPONSE = stun.binding_response(TID, "198.51.100.7", 40001)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def write(self, data: bytes, addr: tuple) -> None:
        self.sent.append((data, addr))


def mutated(original: bytes):
    """``original`` with a few bytes changed, cut short or grown."""
    flips = st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4)
    return st.tuples(flips, st.integers(0, len(original) + 8), st.binary(max_size=8)).map(
        lambda args: _mutate(original, *args))


def _mutate(original: bytes, flips, cut: int, tail: bytes) -> bytes:
    data = bytearray(original)
    for where, value in flips:
        data[where % len(data)] = value
    return bytes(data[:cut]) + tail


def parse_all(data: bytes):
    """Header, attributes and address of ``data``; None when refused with BadRequest."""
    try:
        kind, tid, body = stun.parse_header(data)
        return kind, tid, stun.parse_mapped_address(stun.parse_attributes(body))
    except BadRequest:
        return None


class StunPropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=700) | mutated(RESPONSE) | mutated(REQUEST))
    def test_random_and_mutated_datagrams_raise_only_bad_request(self, data: bytes) -> None:
        parse_all(data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=700) | mutated(REQUEST))
    def test_the_server_answers_only_binding_requests(self, data: bytes) -> None:
        server = stun.StunServer()
        server.transport = Recorder()
        server.datagramReceived(data, ("127.0.0.1", 5000))
        if server.transport.sent:
            kind, tid, body = stun.parse_header(data)
            self.assertEqual(kind, stun.BINDING_REQUEST)
            ((answer, addr),) = server.transport.sent
            self.assertEqual(addr, ("127.0.0.1", 5000))
            self.assertEqual(parse_all(answer), (stun.BINDING_SUCCESS, tid, ("127.0.0.1", 5000)))
        else:
            self.assertEqual(server.counters["ignored"], 1)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=700) | mutated(RESPONSE))
    def test_the_client_takes_only_the_answer_to_its_request(self, data: bytes) -> None:
        clock = Clock()
        client = stun.StunClient(clock)
        client.transport = Recorder()
        d = client.query(("127.0.0.1", 3478), timeout=1.0, retries=0)
        ((request, _addr),) = client.transport.sent
        tid = request[8:20]
        # the datagram as if it answered this request: its transaction id replaced by ours
        forged = data[:8] + tid + data[20:] if len(data) >= 20 else data
        client.datagramReceived(forged, ("127.0.0.1", 3478))
        parsed = parse_all(forged)
        if parsed is not None and parsed[0] == stun.BINDING_SUCCESS and parsed[1] == tid:
            self.assertEqual(self.successResultOf(d), parsed[2])
        else:
            self.assertEqual(client.counters["ignored"], 1)
            clock.advance(1.0)
            self.failureResultOf(d)
        self.assertEqual(client._waiting, {})
