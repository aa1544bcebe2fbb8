"""Tests for bitnode.access.signed_envelope: the signed JSON envelope of share indexes and key envelopes."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitnode.access import signed_envelope
from bitnode.errors import BadRequest
from tests.crypt.support import KeysTestBase

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
HEAD = {"format": 1, "owner": "alice@127.0.0.1_8084", "key_id": "share_x$alice@127.0.0.1_8084"}


class SignedEnvelopeTests(KeysTestBase):
    def test_a_sealed_head_opens_to_its_canonical_text_and_encodes_back_to_the_same_bytes(self) -> None:
        stored = signed_envelope.seal(self.priv, HEAD)
        signed, signature = signed_envelope.open_signed(self.priv.public_key(), stored, "index", "k", "alice")
        self.assertEqual(json.loads(signed), HEAD)
        self.assertEqual(signed, signed_envelope.canonical(dict(reversed(HEAD.items()))))
        self.assertEqual(signed_envelope.encode(signed, signature), stored)

    def test_another_signer_is_refused_and_named(self) -> None:
        stored = signed_envelope.seal(self.other, HEAD)
        err = self.assertRaises(BadRequest, signed_envelope.open_signed, self.priv.public_key(), stored,
                                "key envelope", "K", "alice")
        self.assertEqual(str(err), "key envelope of K is not signed by alice")

    def test_unreadable_envelopes_are_bad_requests(self) -> None:
        for data in (b"", b"[]", b'{"signed": 1, "signature": ""}', b'{"signed": "{}", "signature": "**"}',
                     b'{"signed": "{}"}', b"\\xff"):
            err = self.assertRaises(BadRequest, signed_envelope.open_signed, self.priv.public_key(), data,
                                    "index", "K", "alice")
            self.assertTrue(str(err).startswith("index"), str(err))

    @PROPERTY
    @given(st.binary(max_size=600))
    def test_random_bytes_are_refused_with_a_bad_request(self, data: bytes) -> None:
        with self.assertRaises(BadRequest):
            signed_envelope.open_signed(self.priv.public_key(), data, "index", "K", "alice")

    @PROPERTY
    @given(st.data())
    def test_a_changed_byte_never_opens_to_another_document(self, data) -> None:
        stored = bytearray(signed_envelope.seal(self.priv, HEAD))
        index = data.draw(st.integers(0, len(stored) - 1))
        stored[index] ^= data.draw(st.integers(1, 255))
        try:
            signed, _ = signed_envelope.open_signed(self.priv.public_key(), bytes(stored), "index", "K", "alice")
        except BadRequest:
            return
        # only a change that decodes to the same bytes (unused bits of the last base64 digit) may pass
        self.assertEqual(json.loads(signed), HEAD)
