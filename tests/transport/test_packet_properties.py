"""Property tests (hypothesis) for packet headers: whatever bytes arrive, only the parser's own error comes out.

And a signed packet cannot be changed anywhere without the change being
caught: any mutation of an encoded packet either fails to decode or fails
to verify (or, when it happens to leave every signed byte as it was, is the
same packet).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.transport.commands import Command
from bitnode.transport.packet import BadPacket, Packet, PacketHead
from tests.support import clock_at
from tests.transport.test_support import Ed25519Signer, KeyBook, seed

ALICE = "alice@127.0.0.1_8084"
BOB = "bob@127.0.0.1_8084"
SIGNER = Ed25519Signer(seed(7))
KEYS = KeyBook()
KEYS.add(ALICE, SIGNER)

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789@._-$", min_size=1, max_size=40)
commands = st.sampled_from([c.value for c in Command]) | st.text(min_size=1, max_size=20)


@st.composite
def packets(draw) -> Packet:
    clock = Clock()
    clock.advance(draw(st.floats(min_value=0, max_value=4e9, allow_nan=False)))
    return Packet.create(clock, draw(commands), draw(ids), ALICE, draw(ids), draw(st.binary(max_size=200)), SIGNER,
                         key_id=draw(st.just("") | ids), packet_id=draw(ids))


class HeaderPropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_random_bytes_raise_only_bad_packet(self, data: bytes) -> None:
        for parse in (lambda: PacketHead.decode(data), lambda: Packet.decode(data)):
            try:
                parse()
            except BadPacket:
                pass

    @settings(max_examples=200, deadline=None)
    @given(packets())
    def test_a_packet_round_trips_through_its_header(self, packet: Packet) -> None:
        head = PacketHead.decode(packet.encode_header())
        head.verify(KEYS)
        self.assertEqual(head.packet(packet.payload), packet)
        self.assertEqual(Packet.decode(packet.encode()), packet)

    @settings(max_examples=400, deadline=None)
    @given(packets(), st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
           st.booleans(), st.binary(max_size=8))
    def test_a_mutated_packet_never_passes_as_another(self, packet: Packet, flips, truncate: bool,
                                                      extra: bytes) -> None:
        data = bytearray(packet.encode())
        for where, value in flips:
            data[where % len(data)] = value
        if truncate:
            data = data[: len(data) // 2]
        data += extra
        try:
            decoded = Packet.decode(bytes(data))
            decoded.verify(KEYS)
        except BadPacket:
            return
        # it decoded and verified: then every signed byte and the payload are the original ones
        self.assertEqual(decoded.signed_data(), packet.signed_data())
        self.assertEqual(decoded.payload, packet.payload)

    @settings(max_examples=300, deadline=None)
    @given(packets(), st.integers(min_value=0), st.integers(0, 255))
    def test_a_mutated_header_is_refused_before_its_payload(self, packet: Packet, where: int, value: int) -> None:
        header = bytearray(packet.encode_header())
        before = header[where % len(header)]
        header[where % len(header)] = value
        try:
            head = PacketHead.decode(bytes(header))
            head.verify(KEYS)
        except BadPacket:
            return
        self.assertEqual(before, value)  # only an unchanged byte lets the header through


class PipelinePropertyTests(unittest.TestCase):
    """The whole receive pipeline (framing, header first, strangers, replay) fed random and mutated streams."""

    def setUp(self) -> None:
        self.fresh_transport()

    def fresh_transport(self) -> None:
        """A new receiving side: hypothesis runs many examples in one test, and none may see another's state."""
        from twisted.internet.testing import MemoryReactorClock

        from bitnode.transport.introduction import IntroducingTransport, introduced_identity
        from bitnode.transport.replay import ReplayCache
        from bitnode.transport.stats import PacketStats

        self.clock = clock_at(1_700_000_000)
        self.stats = PacketStats()
        self.transport = IntroducingTransport(
            self.clock, MemoryReactorClock(), BOB, KEYS, self.stats,
            ReplayCache(self.clock, window_seconds=900, max_entries=1000), 1 << 20, 0,
            introduce=introduced_identity, max_buffered=1 << 16)
        self.delivered: list[Packet] = []
        for command in Command:
            self.transport.register_handler(command, lambda packet, address: self.delivered.append(packet))

    def connect(self):
        from twisted.internet.testing import StringTransport

        from bitnode.transport.tcp import PacketConnection

        conn = PacketConnection(self.transport, "in", ("10.0.0.1", 4000))
        conn.makeConnection(StringTransport())
        return conn

    @settings(max_examples=200, deadline=None)
    @given(st.lists(packets(), min_size=1, max_size=4),
           st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=6),
           st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8))
    def test_mutated_streams_never_raise_and_only_authentic_packets_are_delivered(self, sent, flips, cuts) -> None:
        from bitnode.transport.framing import encode_frame

        self.fresh_transport()
        addressed = [Packet.create(self.clock, Command.MESSAGE, p.owner_id, ALICE, BOB, p.payload, SIGNER,
                                   packet_id=p.packet_id) for p in sent]
        stream = bytearray(b"".join(encode_frame(p.encode_header(), p.payload) for p in addressed))
        for where, value in flips:
            stream[where % len(stream)] = value
        conn = self.connect()
        pos, i = 0, 0
        while pos < len(stream) and not conn.closing:
            step = cuts[i % len(cuts)]
            conn.dataReceived(bytes(stream[pos:pos + step]))
            pos, i = pos + step, i + 1
        for packet in self.delivered:
            # (two authentic packets may share a packet id: each delivered one must be one of those sent, whole)
            self.assertIn(packet, addressed)
        self.assertLessEqual(self.transport.budget.reserved, 1 << 20)
        conn.connectionLost(None)
        self.assertEqual(self.transport.budget.reserved, 0)
        self.delivered.clear()
