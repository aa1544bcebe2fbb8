"""Property tests (hypothesis) for identity documents: random and mutated XML raise only InvalidIdentity.

A document that still parses after a mutation verifies only if what its
signature covers is unchanged.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.userid.identity import MAX_XML_BYTES, Identity
from tests.userid.fakes import make_identity, rsa_key

ALICE = make_identity("alice", rsa_key(0), contacts=("tcp://127.0.0.1:9000", "tcp://10.1.2.3:7001"))
XML = ALICE.to_xml()
TAGS = [b"identity", b"version", b"name", b"sources", b"source", b"contacts", b"contact", b"revision", b"date",
        b"publickey", b"signingkey", b"signature"]

xml_fragments = st.lists(
    st.sampled_from([b"<", b">", b"</", b"/>", b"<!DOCTYPE x>", b"<!ENTITY e 'x'>", b"&e;", b"&amp;", b"<?xml?>",
                     b"<![CDATA[x]]>", b"<!-- c -->", b" a='1'", b"\xff", b"\x00"] + TAGS)
    | st.binary(max_size=20),
    max_size=40,
).map(b"".join)


def parse(data: bytes):
    """Identity.from_xml; None when it refused with its own error (a BadRequest)."""
    try:
        return Identity.from_xml(data)
    except BadRequest:
        return None


class IdentityDocumentPropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=2000) | xml_fragments)
    def test_random_input_raises_only_invalid_identity(self, data: bytes) -> None:
        parse(data)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4))
    def test_a_mutated_document_verifies_only_if_its_signed_content_is_unchanged(self, flips) -> None:
        data = bytearray(XML)
        for where, value in flips:
            data[where % len(data)] = value
        document = parse(bytes(data))
        if document is not None and document.verify():
            self.assertEqual(document.signed_content(), ALICE.signed_content())

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=0, max_value=len(XML)), xml_fragments)
    def test_inserted_markup_raises_only_invalid_identity(self, where: int, fragment: bytes) -> None:
        document = parse(XML[:where] + fragment + XML[where:])
        if document is not None and document.verify():
            self.assertEqual(document.signed_content(), ALICE.signed_content())

    def test_entities_and_oversize_documents_are_refused_before_parsing(self) -> None:
        bomb = b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;'>]><identity>&b;</identity>"
        self.assertIsNone(parse(bomb))
        self.assertIsNone(parse(XML + b" " * MAX_XML_BYTES))
        self.assertIsNone(parse(b"<identity>" * 100_000))
