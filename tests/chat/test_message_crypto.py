"""Sealed private messages: round trip, wrong recipient, tampering, wrong sender key, malformed input."""

from __future__ import annotations

import struct
from functools import cache

from twisted.trial import unittest

from bitnode.chat.message_crypto import (
    FORMAT_VERSION,
    GROUP_MESSAGE,
    PRIVATE_MESSAGE,
    MessageHeader,
    MessageRejected,
    encode_header,
    open_message,
    peek,
    seal,
)
from bitnode.crypt import keys
from bitnode.errors import BadRequest

ALICE, BOB, CAROL = "alice@id.net_8084", "bob@id.net_8084", "carol@id.net_8084"


@cache
def _keys():
    """Three 2048-bit keys, made once per test run (key generation is the slow part)."""
    return tuple(keys.generate_rsa(2048) for _ in range(3))


class SealedMessageTests(unittest.TestCase):
    def setUp(self):
        self.alice, self.bob, self.carol = _keys()

    def header(self, **changes):
        fields = dict(message_type=PRIVATE_MESSAGE, sender=ALICE, recipient=BOB, message_id="m-1", time=1700000000.25)
        fields.update(changes)
        return MessageHeader(**fields)

    def sealed(self, data=None, **changes):
        data = {"message": "Hola Bob! ünïcode"} if data is None else data
        return seal(self.header(**changes), data, self.alice, self.bob.public_key())

    def test_round_trip_gives_back_header_and_data(self):
        blob = self.sealed({"message": "Hola Bob! ünïcode", "n": [1, 2.5, None, True]})
        opened = open_message(blob, self.bob, self.alice.public_key(), BOB)
        self.assertEqual(opened.header, self.header())
        self.assertEqual(opened.data, {"message": "Hola Bob! ünïcode", "n": [1, 2.5, None, True]})
        self.assertEqual(peek(blob), self.header())
        self.assertNotIn(b"Hola", blob)  # the content travels encrypted

    def test_every_seal_uses_a_fresh_key(self):
        self.assertNotEqual(self.sealed(), self.sealed())

    def test_layout_starts_with_version_and_the_encoded_header(self):
        blob = self.sealed()
        head = encode_header(self.header())
        self.assertTrue(blob.startswith(head))
        self.assertEqual(head[0], FORMAT_VERSION)
        self.assertEqual(head[1:2 + len(PRIVATE_MESSAGE)], bytes([len(PRIVATE_MESSAGE)]) + PRIVATE_MESSAGE.encode())
        self.assertEqual(struct.unpack(">d", head[-8:])[0], 1700000000.25)
        # the signature closes the record: its length, then the 256 bytes of a 2048-bit RSA-PSS signature
        self.assertEqual(int.from_bytes(blob[-258:-256], "big"), 256)

    def test_someone_else_cannot_read_it(self):
        blob = self.sealed()
        # Carol holds the blob but not Bob's key: refused because it is addressed to Bob...
        self.assertRaises(MessageRejected, open_message, blob, self.carol, self.alice.public_key(), CAROL)
        # ...and even pretending to be Bob, her key cannot unwrap the message key.
        err = self.assertRaises(MessageRejected, open_message, blob, self.carol, self.alice.public_key(), BOB)
        self.assertIn("cannot be decrypted", str(err))

    def test_any_changed_byte_is_rejected(self):
        blob = self.sealed()
        for position in (0, 5, 30, len(blob) // 2, len(blob) - 200, len(blob) - 1):
            tampered = bytearray(blob)
            tampered[position] ^= 0x01
            with self.subTest(position=position):
                self.assertRaises(MessageRejected, open_message, bytes(tampered), self.bob,
                                  self.alice.public_key(), BOB)

    def test_a_changed_header_with_the_same_ciphertext_is_rejected(self):
        blob = self.sealed()
        forged_head = encode_header(self.header(time=1800000000.0))
        forged = forged_head + blob[len(encode_header(self.header())):]
        err = self.assertRaises(MessageRejected, open_message, forged, self.bob, self.alice.public_key(), BOB)
        self.assertIn("signature", str(err))

    def test_wrong_sender_key_is_rejected(self):
        blob = self.sealed()
        err = self.assertRaises(MessageRejected, open_message, blob, self.bob, self.carol.public_key(), BOB)
        self.assertIn("signature does not verify", str(err))

    def test_resigned_by_a_forger_is_rejected_under_the_real_senders_key(self):
        # Carol seals a message claiming to be Alice: it only verifies with Carol's key.
        blob = seal(self.header(), {"message": "from 'alice'"}, self.carol, self.bob.public_key())
        self.assertRaises(MessageRejected, open_message, blob, self.bob, self.alice.public_key(), BOB)
        self.assertEqual(open_message(blob, self.bob, self.carol.public_key(), BOB).data, {"message": "from 'alice'"})

    def test_truncated_padded_and_garbage_blobs_are_rejected(self):
        blob = self.sealed()
        for bad in (b"", b"\x01", blob[:-1], blob[:40], blob + b"\x00", b"\x02" + blob[1:], "text", None):
            with self.subTest(bad=bad[:8] if isinstance(bad, bytes) else bad):
                self.assertRaises(MessageRejected, open_message, bad, self.bob, self.alice.public_key(), BOB)

    def test_peek_rejects_malformed_headers(self):
        self.assertRaises(MessageRejected, peek, b"\x01\x05hello")
        self.assertRaises(MessageRejected, peek, b"\x09" + self.sealed()[1:])

    def test_bad_headers_and_data_are_refused_when_sealing(self):
        bob = self.bob.public_key()
        for header in (self.header(message_type="chat"), self.header(message_id="has space"),
                       self.header(message_id=""), self.header(sender=""), self.header(time="now"),
                       self.header(message_id="x" * 129)):
            self.assertRaises(BadRequest, seal, header, {}, self.alice, bob)
        self.assertRaises(BadRequest, seal, self.header(), {"x": float("nan")}, self.alice, bob)
        self.assertRaises(BadRequest, seal, self.header(), {"x": object()}, self.alice, bob)

    def test_group_type_is_carried(self):
        blob = self.sealed(message_type=GROUP_MESSAGE, recipient="group_1$alice@id.net_8084")
        opened = open_message(blob, self.bob, self.alice.public_key(), "group_1$alice@id.net_8084")
        self.assertEqual(opened.header.message_type, GROUP_MESSAGE)

    def test_non_object_json_round_trips(self):
        self.assertEqual(open_message(self.sealed(["a", 1]), self.bob, self.alice.public_key(), BOB).data, ["a", 1])
