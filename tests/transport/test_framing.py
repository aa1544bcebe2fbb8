"""Tests for bitnode.transport.framing (StringTransport + Clock, no sockets)."""

from __future__ import annotations

import hashlib
import struct

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from bitnode.transport.framing import FrameProtocol, FrameTooLarge, encode_frame


class Recorder(FrameProtocol):
    """Records frames and rejections."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.frames: list[tuple[bytes, bytes, bytes | None]] = []
        self.rejected: list[str] = []

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
