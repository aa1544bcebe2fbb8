"""Tests for bitnode.transport.packet: wire format, test vector, every rejection."""

from __future__ import annotations

import hashlib
import struct

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.transport.commands import Command
from bitnode.transport.packet import (
    MAX_ID,
    MAX_SIGNATURE,
    SIGNING_DOMAIN,
    BadPacket,
    BadSignature,
    Packet,
    PacketHead,
    PacketTooLarge,
    UnknownSender,
)
from tests.support import clock_at
from tests.transport.test_support import Ed25519Signer, KeyBook, seed

ALICE = "alice@127.0.0.1_8084"
BOB = "bob@127.0.0.1_8084"

# Version-1 packet: Ed25519 seed bytes(range(32)), date 1700000000.25,
# Data from alice to bob, key_id "master$alice@127.0.0.1_8084",
# packet_id "backup-1/0-1", payload b"\x00\x01payload\xff".  Must decode forever.
VECTOR_V1 = bytes.fromhex(
    "010041d954fc40100000000000000000000a225e92e59aa8ddbf50dc8a80391a85be48704001dfb996a2383341d19a0d"
    "3fcf0004446174610014616c696365403132372e302e302e315f383038340014616c696365403132372e302e302e315f"
    "38303834000c6261636b75702d312f302d310012626f62403132372e302e302e315f38303834001b6d61737465722461"
    "6c696365403132372e302e302e315f3830383400076564323535313900407e02b78b0cd1ccccdc77246f3358c3b67464"
    "547b7e925bde5fda8f9636ebe415746e7e4a63cd3a3f3515d5c9facd699bd7030468f39dba520b831c3eb84c22020001"
    "7061796c6f6164ff"
)
VECTOR_PAYLOAD = b"\x00\x01payload\xff"


def text(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack(">H", len(raw)) + raw


def raw_header(
    *,
    version: int = 1,
    flags: int = 0,
    date: float = 1700000000.0,
    payload: bytes = b"",
    digest: bytes | None = None,
    fields: tuple = ("Data", ALICE, ALICE, "p1", BOB, "", "ed25519"),
    signature: bytes = b"s" * 64,
    payload_length: int | None = None,
) -> bytes:
    """A header built straight from the documented layout, independent of the code."""
    length = len(payload) if payload_length is None else payload_length
    out = struct.pack(">BBdQ", version, flags, date, length)
    out += hashlib.sha256(payload).digest() if digest is None else digest
    for value in fields:
        out += text(value)
    return out + text(signature)


def make_packet(clock: Clock, signer: Ed25519Signer, payload: bytes = b"hello", **kw) -> Packet:
    args = dict(command=Command.MESSAGE, owner_id=ALICE, creator_id=ALICE, remote_id=BOB, payload=payload)
    args.update(kw)
    return Packet.create(clock, signer=signer, **args)


class PacketTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = clock_at(1700000000.5)
        self.alice = Ed25519Signer(seed(1))
        self.keys = KeyBook()
        self.keys.add(ALICE, self.alice)

    def test_create_dates_packet_from_clock_and_signs_it(self) -> None:
        packet = make_packet(self.clock, self.alice, packet_id="m1")
        self.assertEqual(packet.date, 1700000000.5)
        self.assertEqual(packet.command, "Message")
        self.assertEqual(packet.algorithm, "ed25519")
        self.assertEqual(len(packet.signature), 64)
        packet.verify(self.keys)

    def test_create_makes_random_packet_ids(self) -> None:
        one, two = make_packet(self.clock, self.alice), make_packet(self.clock, self.alice)
        self.assertNotEqual(one.packet_id, two.packet_id)

    def test_encode_decode_round_trip(self) -> None:
        payload = bytes(range(256)) * 7
        packet = make_packet(self.clock, self.alice, payload=payload, key_id="k$alice", packet_id="é-1")
        decoded = Packet.decode(packet.encode())
        self.assertEqual(decoded, packet)
        self.assertEqual(decoded.payload, payload)
        decoded.verify(self.keys)

    def test_decode_parts_with_streamed_digest(self) -> None:
        packet = make_packet(self.clock, self.alice, payload=b"x" * 1000)
        decoded = Packet.decode_parts(
            packet.encode_header(), packet.payload, payload_sha256=hashlib.sha256(packet.payload).digest()
        )
        self.assertEqual(decoded, packet)
        decoded.verify(self.keys)

    def test_create_with_a_known_digest_is_the_same_packet(self) -> None:
        payload = b"block bytes" * 100
        known = make_packet(self.clock, self.alice, payload=payload, packet_id="d1",
                            payload_sha256=hashlib.sha256(payload).digest())
        hashed = make_packet(self.clock, self.alice, payload=payload, packet_id="d1")
        self.assertEqual(known.encode(), hashed.encode())
        Packet.decode(known.encode()).verify(self.keys)

    def test_a_wrong_known_digest_is_refused_by_the_receiver(self) -> None:
        packet = make_packet(self.clock, self.alice, payload=b"block", payload_sha256=hashlib.sha256(b"other").digest())
        self.assertRaises(BadSignature, Packet.decode, packet.encode())
        self.assertRaises(BadPacket, make_packet, self.clock, self.alice, payload_sha256=b"short")

    def test_streamed_prefix_hash_of_a_received_packet(self) -> None:
        payload = bytes(range(256)) * 20
        packet = make_packet(self.clock, self.alice, payload=payload)
        head = PacketHead.decode(packet.encode_header())
        held_at = len(payload) - 300
        received = head.packet(payload, hashlib.sha256(payload).digest(), (hashlib.sha256(payload[:held_at]), held_at))
        for length in (held_at, held_at + 1, len(payload)):
            self.assertEqual(received.streamed_prefix_sha256(length), hashlib.sha256(payload[:length]).hexdigest())
        # before the kept state, past the payload, or no state kept (a packet we built): the caller hashes itself
        self.assertIsNone(received.streamed_prefix_sha256(held_at - 1))
        self.assertIsNone(received.streamed_prefix_sha256(len(payload) + 1))
        self.assertIsNone(packet.streamed_prefix_sha256(len(payload)))
        self.assertIsNone(head.packet(payload).streamed_prefix_sha256(len(payload)))
        self.assertEqual(received, packet)

    def test_empty_payload_round_trips(self) -> None:
        packet = make_packet(self.clock, self.alice, payload=b"")
        self.assertEqual(Packet.decode(packet.encode()), packet)

    def test_header_follows_documented_layout(self) -> None:
        packet = make_packet(self.clock, self.alice, payload=b"abc", packet_id="p1", key_id="")
        expected = raw_header(
            date=packet.date,
            payload=b"abc",
            fields=("Message", ALICE, ALICE, "p1", BOB, "", "ed25519"),
            signature=packet.signature,
        )
        self.assertEqual(packet.encode_header(), expected)
        self.assertEqual(packet.signed_data(), SIGNING_DOMAIN + expected[: -len(text(packet.signature))])

    def test_payload_is_not_in_header(self) -> None:
        packet = make_packet(self.clock, self.alice, payload=b"P" * 5000)
        self.assertNotIn(b"P" * 100, packet.encode_header())
        self.assertEqual(packet.encode(), packet.encode_header() + packet.payload)

    def test_repr_does_not_dump_payload(self) -> None:
        packet = make_packet(self.clock, self.alice, payload=b"Q" * 10000)
        self.assertNotIn("QQQQ", repr(packet))

    # -- the fixed test vector ---------------------------------------------

    def test_vector_v1_decodes_and_verifies(self) -> None:
        packet = Packet.decode(VECTOR_V1)
        self.assertEqual(packet.command, "Data")
        self.assertEqual(packet.owner_id, ALICE)
        self.assertEqual(packet.creator_id, ALICE)
        self.assertEqual(packet.packet_id, "backup-1/0-1")
        self.assertEqual(packet.date, 1700000000.25)
        self.assertEqual(packet.payload, VECTOR_PAYLOAD)
        self.assertEqual(packet.remote_id, BOB)
        self.assertEqual(packet.key_id, "master$alice@127.0.0.1_8084")
        self.assertEqual(packet.algorithm, "ed25519")
        keys = KeyBook()
        keys.add(ALICE, Ed25519Signer(bytes(range(32))))
        packet.verify(keys)

    def test_vector_v1_is_reproduced_by_create(self) -> None:
        clock = Clock()
        clock.advance(1700000000.25)
        packet = Packet.create(
            clock,
            Command.DATA,
            ALICE,
            ALICE,
            BOB,
            VECTOR_PAYLOAD,
            Ed25519Signer(bytes(range(32))),
            key_id="master$alice@127.0.0.1_8084",
            packet_id="backup-1/0-1",
        )
        self.assertEqual(packet.encode(), VECTOR_V1)

    # -- structural rejections ---------------------------------------------

    def test_every_truncation_is_rejected(self) -> None:
        for cut in range(len(VECTOR_V1)):
            with self.assertRaises(BadPacket, msg=f"cut at {cut}"):
                Packet.decode(VECTOR_V1[:cut])

    def test_extra_byte_is_rejected(self) -> None:
        self.assertRaises(BadPacket, Packet.decode, VECTOR_V1 + b"\x00")

    def test_trailing_header_bytes_are_rejected(self) -> None:
        header = raw_header(payload=b"ab")
        self.assertRaises(BadPacket, Packet.decode_parts, header + b"z", b"ab")

    def test_payload_length_mismatch_is_rejected(self) -> None:
        header = raw_header(payload=b"ab")
        self.assertRaises(BadPacket, Packet.decode_parts, header, b"abc")

    def test_bad_version_is_rejected(self) -> None:
        for version in (0, 2, 255):
            data = bytes([version]) + VECTOR_V1[1:]
            with self.assertRaisesRegex(BadPacket, "version"):
                Packet.decode(data)

    def test_reserved_flags_are_rejected(self) -> None:
        self.assertRaises(BadPacket, Packet.decode_parts, raw_header(flags=1), b"")

    def test_oversize_fields_are_rejected_before_reading_them(self) -> None:
        long_id = "a" * (MAX_ID + 1)
        fields = ("Data", long_id, ALICE, "p1", BOB, "", "ed25519")
        with self.assertRaises(PacketTooLarge) as caught:
            Packet.decode_parts(raw_header(fields=fields), b"")
        self.assertEqual(caught.exception.reason, "oversize")
        # a claimed length alone is enough: the bytes need not be there
        claim = struct.pack(">BBdQ", 1, 0, 1.0, 0) + b"\x00" * 32 + struct.pack(">H", 0xFFFF)
        self.assertRaises(PacketTooLarge, Packet.decode, claim)

    def test_oversize_signature_is_rejected(self) -> None:
        header = raw_header(signature=b"s" * (MAX_SIGNATURE + 1))
        self.assertRaises(PacketTooLarge, Packet.decode_parts, header, b"")

    def test_payload_over_limit_is_rejected(self) -> None:
        header = raw_header(payload=b"x" * 101)
        with self.assertRaises(PacketTooLarge):
            Packet.decode_parts(header, b"x" * 101, max_payload=100)
        Packet.decode_parts(raw_header(payload=b"x" * 100), b"x" * 100, max_payload=100)

    def test_claimed_huge_payload_is_rejected_from_header_alone(self) -> None:
        header = raw_header(payload_length=2**63)
        self.assertRaises(PacketTooLarge, Packet.decode, header)

    def test_invalid_utf8_is_rejected(self) -> None:
        fields = ("Data", b"\xff\xfe", ALICE, "p1", BOB, "", "ed25519")
        with self.assertRaisesRegex(BadPacket, "UTF-8"):
            Packet.decode_parts(raw_header(fields=fields), b"")

    def test_empty_required_field_is_rejected(self) -> None:
        fields = ("Data", ALICE, "", "p1", BOB, "", "ed25519")
        self.assertRaises(BadPacket, Packet.decode_parts, raw_header(fields=fields), b"")

    def test_unsigned_packet_is_rejected(self) -> None:
        self.assertRaisesRegex(BadPacket, "not signed", Packet.decode_parts, raw_header(signature=b""), b"")

    def test_non_finite_date_is_rejected(self) -> None:
        for date in (float("nan"), float("inf")):
            self.assertRaises(BadPacket, Packet.decode_parts, raw_header(date=date), b"")

    def test_bad_packet_is_a_bad_request(self) -> None:
        self.assertTrue(issubclass(BadPacket, BadRequest))

    # -- authenticity --------------------------------------------------------

    def test_tampered_payload_is_rejected_at_decode(self) -> None:
        data = bytearray(VECTOR_V1)
        data[-1] ^= 0x01
        with self.assertRaises(BadSignature) as caught:
            Packet.decode(bytes(data))
        self.assertEqual(caught.exception.reason, "bad_signature")

    def test_tampered_streamed_digest_is_rejected(self) -> None:
        packet = make_packet(self.clock, self.alice)
        self.assertRaises(
            BadSignature, Packet.decode_parts, packet.encode_header(), packet.payload, payload_sha256=b"\x00" * 32
        )

    def test_tampered_header_field_fails_verification(self) -> None:
        packet = Packet.decode(VECTOR_V1)
        keys = KeyBook()
        keys.add(ALICE, Ed25519Signer(bytes(range(32))))
        forged = Packet.decode(VECTOR_V1.replace(b"bob@", b"eve@"))
        self.assertEqual(forged.remote_id, "eve@127.0.0.1_8084")
        packet.verify(keys)
        self.assertRaises(BadSignature, forged.verify, keys)

    def test_signature_by_another_key_fails(self) -> None:
        mallory = Ed25519Signer(seed(9))
        forged = make_packet(self.clock, mallory)  # claims creator alice
        with self.assertRaises(BadSignature) as caught:
            Packet.decode(forged.encode()).verify(self.keys)
        self.assertEqual(caught.exception.reason, "bad_signature")

    def test_unknown_sender_is_rejected(self) -> None:
        packet = make_packet(self.clock, self.alice, creator_id="carol@127.0.0.1_8084")
        with self.assertRaises(UnknownSender) as caught:
            packet.verify(self.keys)
        self.assertEqual(caught.exception.reason, "unknown_sender")

    def test_failing_key_lookup_counts_as_unknown_sender(self) -> None:
        def broken(creator_id: str) -> None:
            raise RuntimeError("cache down")

        self.assertRaises(UnknownSender, make_packet(self.clock, self.alice).verify, broken)

    def test_algorithm_mismatch_is_rejected(self) -> None:
        class RsaVerifier:
            algorithm = "rsa-pss-sha256"

            def verify(self, data: bytes, signature: bytes) -> bool:
                return True

        packet = make_packet(self.clock, self.alice)
        self.assertRaisesRegex(BadSignature, "rsa-pss", packet.verify, lambda _c: RsaVerifier())

    def test_raising_verifier_means_bad_signature(self) -> None:
        class Raising:
            def verify(self, data: bytes, signature: bytes) -> bool:
                raise ValueError("boom")

        packet = make_packet(self.clock, self.alice)
        self.assertRaises(BadSignature, packet.verify, lambda _c: Raising())

    # -- building bad packets fails at the edge ------------------------------

    def test_create_rejects_oversize_field(self) -> None:
        self.assertRaises(PacketTooLarge, make_packet, self.clock, self.alice, owner_id="o" * (MAX_ID + 1))

    def test_create_rejects_empty_recipient(self) -> None:
        self.assertRaises(BadPacket, make_packet, self.clock, self.alice, remote_id="")

    def test_payload_must_be_bytes(self) -> None:
        self.assertRaises(
            BadPacket, Packet, command="Ack", owner_id=ALICE, creator_id=ALICE, packet_id="p",
            date=1.0, payload="text", remote_id=BOB, algorithm="ed25519",
        )
