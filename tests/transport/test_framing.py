"""Tests for bitnode.transport.framing (StringTransport + Clock, no sockets)."""

from __future__ import annotations

import hashlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from bitnode.transport.framing import KEEP, SKIP, FrameProtocol, FrameTooLarge, encode_frame
from bitnode.transport.limits import BufferBudget


class Recorder(FrameProtocol):
    """Records frames and rejections."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.frames: list[tuple[bytes, bytes, bytes | None]] = []
        self.rejected: list[str] = []
        self.heads: list[tuple[bytes, int]] = []
        self.skipped: list[bytes] = []
        self.buffered_at_head: list[int] = []

    def headReceived(self, head: bytes, body_length: int) -> str:
        self.heads.append((head, body_length))
        self.buffered_at_head.append(sum(len(p) for p in self._body_parts))
        return SKIP if head.startswith(b"skip") else KEEP

    def frameSkipped(self, head: bytes) -> None:
        self.skipped.append(head)

    def frameReceived(self, head: bytes, body: bytes, body_sha256: bytes | None) -> None:
        self.frames.append((head, body, body_sha256))

    def frameRejected(self, reason: str) -> None:
        self.rejected.append(reason)


def connect(clock: Clock | None = None, **kw) -> tuple[Recorder, StringTransport]:
    proto = Recorder(clock or Clock(), kw.pop("max_frame", 1024), **kw)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


FRAMES = [(b"head-one", b"body-one"), (b"", b""), (b"h", b""), (b"", b"only body"), (b"H" * 40, b"\x00" * 300)]


class FramingTests(unittest.TestCase):
    def test_wire_layout(self) -> None:
        self.assertEqual(encode_frame(b"ab", b"xyz"), struct.pack(">IH", 7, 2) + b"abxyz")

    def test_send_frame_writes_prefix_head_body_separately(self) -> None:
        proto, transport = connect()
        writes: list[list[bytes]] = []
        transport.writeSequence = lambda seq: writes.append(list(seq))  # type: ignore[method-assign]
        body = b"B" * 500
        size = proto.sendFrame(b"head", body)
        self.assertEqual(size, 6 + 4 + 500)
        self.assertEqual(writes, [[struct.pack(">IH", 506, 4), b"head", body]])
        self.assertIs(writes[0][2], body)  # the very object: never concatenated

    def test_send_then_receive_round_trip(self) -> None:
        sender, wire = connect()
        for head, body in FRAMES:
            sender.sendFrame(head, body)
        receiver, _ = connect()
        receiver.dataReceived(wire.value())
        self.assertEqual([(h, b) for h, b, _d in receiver.frames], FRAMES)

    def test_many_frames_in_one_chunk(self) -> None:
        proto, _ = connect()
        proto.dataReceived(b"".join(encode_frame(h, b) for h, b in FRAMES * 20))
        self.assertEqual([(h, b) for h, b, _d in proto.frames], FRAMES * 20)
        self.assertEqual(proto.frames_in, 100)

    def test_split_at_every_byte_boundary(self) -> None:
        stream = b"".join(encode_frame(h, b) for h, b in FRAMES)
        for cut in range(len(stream) + 1):
            proto, transport = connect()
            proto.dataReceived(stream[:cut])
            proto.dataReceived(stream[cut:])
            self.assertEqual([(h, b) for h, b, _d in proto.frames], FRAMES, f"cut at {cut}")
            self.assertFalse(transport.disconnecting)

    def test_one_byte_at_a_time(self) -> None:
        stream = b"".join(encode_frame(h, b) for h, b in FRAMES)
        proto, _ = connect()
        for i in range(len(stream)):
            proto.dataReceived(stream[i : i + 1])
        self.assertEqual([(h, b) for h, b, _d in proto.frames], FRAMES)

    def test_body_digest_computed_while_streaming(self) -> None:
        proto, _ = connect(digest_bodies=True, max_frame=100_000)
        body = bytes(range(256)) * 300
        frame = encode_frame(b"h", body)
        for i in range(0, len(frame), 4096):
            proto.dataReceived(frame[i : i + 4096])
        self.assertEqual(proto.frames, [(b"h", body, hashlib.sha256(body).digest())])

    def test_held_tail_gives_the_hash_state_of_the_body_without_it(self) -> None:
        got = []

        class Holding(Recorder):
            def frameReceived(self, head, body, body_sha256, body_prefix=None) -> None:
                super().frameReceived(head, body, body_sha256)
                got.append(body_prefix)

        body = bytes(range(256)) * 300
        for hold, chunk in ((100, 4096), (100, 1), (len(body) + 5, 999), (1, 77)):
            proto = Holding(Clock(), 100_000, digest_bodies=True, digest_hold=hold)
            proto.makeConnection(StringTransport())
            frame = encode_frame(b"h", body) + encode_frame(b"empty", b"")
            for i in range(0, len(frame), chunk):
                proto.dataReceived(frame[i : i + chunk])
            self.assertEqual(proto.frames, [(b"h", body, hashlib.sha256(body).digest()),
                                            (b"empty", b"", hashlib.sha256(b"").digest())])
            (state, length), (empty_state, empty_length) = got
            self.assertEqual(length, max(0, len(body) - hold))
            self.assertEqual(state.digest(), hashlib.sha256(body[:length]).digest())
            self.assertEqual((empty_state.digest(), empty_length), (hashlib.sha256(b"").digest(), 0))
            got.clear()

    def test_body_arriving_in_chunks_is_joined_into_bytes(self) -> None:
        proto, _ = connect(max_frame=10_000)
        frame = encode_frame(b"h", b"z" * 5000)
        for i in range(0, len(frame), 1000):
            proto.dataReceived(frame[i : i + 1000])
        (head, body, _d), = proto.frames
        self.assertIsInstance(body, bytes)
        self.assertEqual(body, b"z" * 5000)

    def test_oversize_frame_closes_connection_and_is_counted_once(self) -> None:
        proto, transport = connect(max_frame=100)
        proto.dataReceived(encode_frame(b"ok", b"") + encode_frame(b"h", b"x" * 100) + encode_frame(b"late", b""))
        self.assertEqual([h for h, _b, _d in proto.frames], [b"ok"])
        self.assertEqual(proto.rejected, ["oversize"])
        self.assertTrue(transport.disconnecting)
        proto.dataReceived(encode_frame(b"after", b""))
        self.assertEqual(len(proto.frames), 1)

    def test_frame_at_exact_limit_is_accepted(self) -> None:
        proto, transport = connect(max_frame=100)
        proto.dataReceived(encode_frame(b"h" * 10, b"x" * 90))
        self.assertEqual(len(proto.frames), 1)
        self.assertFalse(transport.disconnecting)

    def test_oversize_is_detected_from_the_prefix_alone(self) -> None:
        proto, transport = connect(max_frame=100)
        proto.dataReceived(struct.pack(">IH", 0xFFFFFFFF, 0))
        self.assertEqual(proto.rejected, ["oversize"])
        self.assertTrue(transport.disconnecting)

    def test_oversize_head_closes_connection(self) -> None:
        proto, transport = connect(max_frame=1000, max_head=10)
        proto.dataReceived(encode_frame(b"h" * 11, b""))
        self.assertEqual(proto.rejected, ["oversize"])
        self.assertTrue(transport.disconnecting)

    def test_inconsistent_prefix_is_malformed(self) -> None:
        for prefix in (struct.pack(">IH", 1, 0), struct.pack(">IH", 5, 4), struct.pack(">IH", 0, 0)):
            proto, transport = connect()
            proto.dataReceived(prefix + b"\x00" * 10)
            self.assertEqual(proto.rejected, ["malformed"], prefix)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(proto.frames, [])

    def test_send_over_limit_raises(self) -> None:
        proto, transport = connect(max_frame=10)
        self.assertRaises(FrameTooLarge, proto.sendFrame, b"h", b"x" * 10)
        self.assertEqual(transport.value(), b"")

    def test_flood_disconnects_and_is_counted(self) -> None:
        clock = Clock()
        proto, transport = connect(clock, max_frames_per_second=5)
        proto.dataReceived(encode_frame(b"f", b"") * 5)
        self.assertFalse(transport.disconnecting)
        clock.advance(1.0)  # a new second: the budget is back
        proto.dataReceived(encode_frame(b"f", b"") * 5)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(encode_frame(b"f", b""))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(proto.rejected, ["flood"])
        self.assertEqual(len(proto.frames), 10)

    def test_flood_in_one_chunk_stops_at_the_limit(self) -> None:
        proto, transport = connect(max_frames_per_second=3)
        proto.dataReceived(encode_frame(b"f", b"") * 50)
        self.assertEqual(len(proto.frames), 3)
        self.assertEqual(proto.rejected, ["flood"])
        self.assertTrue(transport.disconnecting)

    def test_frame_received_error_does_not_break_the_stream(self) -> None:
        class Exploding(Recorder):
            def frameReceived(self, head: bytes, body: bytes, body_sha256: bytes | None) -> None:
                super().frameReceived(head, body, body_sha256)
                if head == b"boom":
                    raise RuntimeError("bug in subclass")

        proto = Exploding(Clock(), 1000)
        proto.makeConnection(StringTransport())
        proto.dataReceived(encode_frame(b"boom") + encode_frame(b"next"))
        self.assertEqual([h for h, _b, _d in proto.frames], [b"boom", b"next"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_connection_lost_discards_partial_frame(self) -> None:
        proto, _ = connect()
        proto.dataReceived(encode_frame(b"h", b"x" * 100)[:50])
        proto.connectionLost(None)
        self.assertEqual(proto.frames, [])
        self.assertTrue(proto.closing)

    def test_max_frame_must_be_positive(self) -> None:
        self.assertRaises(ValueError, Recorder, Clock(), 0)


class HeadFirstTests(unittest.TestCase):
    """Issue 14.3: a frame's head is judged before any of its body is kept."""

    def test_the_head_is_judged_before_a_byte_of_the_body_is_kept(self) -> None:
        proto, _ = connect(max_frame=100_000)
        frame = encode_frame(b"keep", b"b" * 50_000)
        proto.dataReceived(frame[:6 + 4 + 10])
        self.assertEqual(proto.heads, [(b"keep", 50_000)])
        self.assertEqual(proto.buffered_at_head, [0])
        proto.dataReceived(frame[6 + 4 + 10:])
        self.assertEqual([(h, len(b)) for h, b, _d in proto.frames], [(b"keep", 50_000)])

    def test_a_skipped_body_is_read_past_without_being_kept(self) -> None:
        proto, transport = connect(max_frame=100_000, digest_bodies=True)
        stream = encode_frame(b"skip-me", b"x" * 60_000) + encode_frame(b"next", b"y")
        for i in range(0, len(stream), 7000):
            proto.dataReceived(stream[i:i + 7000])
            self.assertLessEqual(sum(len(p) for p in proto._body_parts), 1)
        self.assertEqual(proto.skipped, [b"skip-me"])
        self.assertEqual([(h, b) for h, b, _d in proto.frames], [(b"next", b"y")])
        self.assertFalse(transport.disconnecting)

    def test_progress_is_reported_only_for_kept_bodies(self) -> None:
        proto, _ = connect(max_frame=1000)
        proto.dataReceived(encode_frame(b"keep", b"k" * 100)[:60])
        self.assertEqual(proto.receiving, (50, 100))
        proto.dataReceived(encode_frame(b"keep", b"k" * 100)[60:] + encode_frame(b"skip", b"s" * 100)[:60])
        self.assertIsNone(proto.receiving)


class BudgetTests(unittest.TestCase):
    """Issue 14.3: the bytes held by partly received bodies are bounded across connections."""

    def connect(self, budget: BufferBudget, host: str = "10.0.0.1") -> tuple[Recorder, StringTransport]:
        from twisted.internet.address import IPv4Address

        proto = Recorder(Clock(), 100_000, budget=budget)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 4000))
        proto.makeConnection(transport)
        return proto, transport

    def test_a_body_that_does_not_fit_waits_with_reading_paused_then_completes(self) -> None:
        budget = BufferBudget(max_bytes=1500)
        first, _ = self.connect(budget, "10.0.0.1")
        second, second_transport = self.connect(budget, "10.0.0.2")
        frame_a = encode_frame(b"a", b"A" * 1000)
        frame_b = encode_frame(b"b", b"B" * 1000)
        first.dataReceived(frame_a[:500])
        self.assertEqual(budget.reserved, 1000)
        second.dataReceived(frame_b[:700])
        self.assertEqual(second_transport.producerState, "paused")
        self.assertEqual((budget.reserved, budget.waits), (1000, 1))
        second.dataReceived(frame_b[700:])  # arrives while paused: kept in order
        first.dataReceived(frame_a[500:])
        self.assertEqual([h for h, _b, _d in first.frames], [b"a"])
        self.assertEqual([(h, b) for h, b, _d in second.frames], [(b"b", b"B" * 1000)])
        self.assertEqual(second_transport.producerState, "producing")
        self.assertEqual(budget.reserved, 0)
        self.assertLessEqual(budget.peak, 1500)

    def test_one_frame_always_fits_when_nothing_else_is_held(self) -> None:
        budget = BufferBudget(max_bytes=100)
        proto, _ = self.connect(budget)
        proto.dataReceived(encode_frame(b"big", b"x" * 5000))
        self.assertEqual(len(proto.frames), 1)
        self.assertEqual(budget.reserved, 0)

    def test_one_ip_holds_at_most_its_share(self) -> None:
        budget = BufferBudget(max_bytes=4000, per_key_share=0.5)
        one, _ = self.connect(budget, "10.0.0.9")
        two, two_transport = self.connect(budget, "10.0.0.9")
        other, other_transport = self.connect(budget, "10.0.0.7")
        one.dataReceived(encode_frame(b"a", b"x" * 1500)[:10])
        two.dataReceived(encode_frame(b"b", b"x" * 1500)[:10])
        other.dataReceived(encode_frame(b"c", b"x" * 1500)[:10])
        self.assertEqual(two_transport.producerState, "paused")
        self.assertEqual(other_transport.producerState, "producing")
        self.assertEqual(budget.reserved, 3000)

    def test_a_closed_connection_gives_its_reservation_back(self) -> None:
        budget = BufferBudget(max_bytes=1000)
        proto, _ = self.connect(budget)
        waiting, _ = self.connect(budget, "10.0.0.3")
        proto.dataReceived(encode_frame(b"a", b"x" * 900)[:100])
        waiting.dataReceived(encode_frame(b"b", b"y" * 900))
        self.assertEqual(waiting.frames, [])
        proto.connectionLost(None)
        self.assertEqual([h for h, _b, _d in waiting.frames], [b"b"])
        self.assertEqual(budget.reserved, 0)
        waiting.connectionLost(None)
        self.assertEqual(budget.stats()["waiting"], 0)

    def test_skipped_bodies_cost_no_budget(self) -> None:
        budget = BufferBudget(max_bytes=10)
        proto, _ = self.connect(budget)
        proto.dataReceived(encode_frame(b"skip", b"x" * 5000)[:3000])
        self.assertEqual(budget.reserved, 0)


frame_lists = st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=300)), max_size=8)


class FramePropertyTests(unittest.TestCase):
    """Random and mutated streams never raise out of dataReceived, and good streams cut the same way at any split."""

    @settings(max_examples=150, deadline=None)
    @given(frame_lists, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20))
    def test_any_chunking_gives_the_same_frames(self, frames, cuts) -> None:
        stream = b"".join(encode_frame(h, b) for h, b in frames)
        proto, transport = connect(max_frame=400)
        pos, i = 0, 0
        while pos < len(stream):
            step = cuts[i % len(cuts)]
            proto.dataReceived(stream[pos:pos + step])
            pos, i = pos + step, i + 1
        kept = [(h, b) for h, b in frames if not h.startswith(b"skip")]
        self.assertEqual([(h, b) for h, b, _d in proto.frames], kept)
        self.assertFalse(transport.disconnecting)

    @settings(max_examples=300, deadline=None)
    @given(frame_lists, st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=6),
           st.binary(max_size=200))
    def test_mutated_or_random_streams_never_raise(self, frames, flips, junk) -> None:
        stream = bytearray(b"".join(encode_frame(h, b) for h, b in frames) + junk)
        for where, value in flips:
            if stream:
                stream[where % len(stream)] = value
        proto, _ = connect(max_frame=400, max_head=64, max_frames_per_second=50)
        proto.dataReceived(bytes(stream))
        self.assertLessEqual(len(proto.rejected), 1)
        self.assertLessEqual(len(proto.frames) + len(proto.skipped), max(len(stream) // 6, 0))
