"""Tests for bitnode.dht.records: signing, verification, type shapes, overwrite rules."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.crypt.fastsign import generate_ed25519
from bitnode.dht import records
from bitnode.dht.ids import key_to_id
from bitnode.dht.records import InvalidRecord, Record, RecordConflict
from bitnode.errors import BadRequest
from tests.dht.strategies import PROPERTY, json_values, mutated_json
from tests.dht.test_bound_values import IdentityValueTests
from tests.dht.test_bound_values import envelope as bound_envelope
from tests.dht.test_bound_values import value as suppliers_value

ALICE = records.generate_signing_key()
MALLORY = records.generate_signing_key()
NICK = {"idurl": "http://id.local/alice.xml", "nickname": "alice"}


def nick(signer=ALICE, created: int = 1000, ttl: int = 3600, seq: int = 0, value: dict | None = None) -> Record:
    return records.sign_record(signer, "nickname:alice", value or NICK, records.NICKNAME, created, created + ttl, seq)


def note(signer=ALICE, created: int = 1000, text: str = "hi", key: str = "app:note") -> Record:
    return records.sign_record(signer, key, {"text": text}, records.SKIP_VALIDATION, created, created + 600, 0)


class SignVerifyTests(unittest.TestCase):
    def test_signed_record_verifies_after_a_json_round_trip(self) -> None:
        rec = nick()
        back = records.parse_and_verify(json.loads(rec.to_json()), now=1001)
        self.assertEqual(back, rec)
        self.assertEqual(rec.key_id, key_to_id("nickname:alice"))
        self.assertEqual(set(rec.to_dict()), set(records._FIELDS))

    def test_fastsign_private_key_is_accepted_as_signer(self) -> None:
        key = generate_ed25519()
        rec = nick(signer=key)
        self.assertEqual(rec.writer_pubkey, records.public_key_b64(key.raw))
        records.verify(rec, now=1000)

    def test_signer_must_be_an_ed25519_private_key(self) -> None:
        self.assertRaises(BadRequest, records.public_key_b64, ALICE.public_key())
        self.assertRaises(BadRequest, records.public_key_b64, "not a key")

    def test_any_tampered_field_is_rejected(self) -> None:
        rec = nick().to_dict()
        for field, value in (("value", {"idurl": "http://evil/x.xml", "nickname": "alice"}),
                             ("expires", rec["expires"] + 1), ("seq", 5), ("created", 999),
                             ("writer_pubkey", records.public_key_b64(MALLORY))):
            forged = dict(rec, **{field: value})
            self.assertRaises(InvalidRecord, records.parse_and_verify, forged, 1001)

    def test_garbage_signature_and_key_are_rejected_not_crashing(self) -> None:
        rec = nick().to_dict()
        for patch in ({"signature": "!!!"}, {"signature": ""}, {"writer_pubkey": "AAAA"},
                      {"writer_pubkey": "x" * 44}, {"signature": 5}, {"seq": True}):
            self.assertRaises(InvalidRecord, records.parse_and_verify, dict(rec, **patch), 1001)

    def test_envelope_needs_exactly_its_fields(self) -> None:
        rec = nick().to_dict()
        self.assertRaises(InvalidRecord, records.parse_and_verify, dict(rec, extra=1), 1001)
        partial = dict(rec)
        del partial["seq"]
        self.assertRaises(InvalidRecord, records.parse_and_verify, partial, 1001)
        self.assertRaises(InvalidRecord, records.parse_and_verify, [rec], 1001)

    def test_times_are_checked(self) -> None:
        self.assertRaises(InvalidRecord, nick, ttl=0)
        self.assertRaises(InvalidRecord, nick, ttl=records.MAX_TTL + 1)
        rec = nick(created=5000)
        self.assertRaises(InvalidRecord, records.verify, rec, 5000 - records.MAX_CLOCK_SKEW - 1)
        records.verify(rec, 5000 - records.MAX_CLOCK_SKEW)
        self.assertTrue(rec.is_expired(5000 + 3600))
        self.assertFalse(rec.is_expired(5000 + 3599))

    def test_oversize_record_is_refused(self) -> None:
        self.assertRaises(InvalidRecord, records.sign_record, ALICE, "app:big", "x" * records.MAX_RECORD_BYTES,
                          records.SKIP_VALIDATION, 0, 60, 0)


class ShapeTests(unittest.TestCase):
    def test_typed_shapes_accept_good_values(self) -> None:
        # suppliers and identity values: tests/dht/test_bound_values.py
        records.sign_record(ALICE, "app:any", [1, "two", None], records.SKIP_VALIDATION, 0, 60, 0)
        records.sign_record(ALICE, "abcd", {"text": "A-B-C-D"}, records.SKIP_VALIDATION, 0, 60, 0)

    def test_bad_shapes_are_rejected(self) -> None:
        bad = [
            ("nickname:alice", dict(NICK, nickname="bob"), records.NICKNAME),  # key/name mismatch
            ("nickname:alice", {"idurl": "x"}, records.NICKNAME),  # missing field
            ("nickname:alice", dict(NICK, extra=1), records.NICKNAME),  # extra field
            ("nickname:alice", dict(NICK, idurl=""), records.NICKNAME),
            ("nickname:alice", "alice", records.NICKNAME),
            ("identity:alice", {"idurl": "x", "xml": 5}, records.IDENTITY),
            ("suppliers:alice", {"customer_idurl": "http://id.local/alice.xml", "ecc_map": "1-of-2",
                                 "suppliers": [], "revision": 3}, records.SUPPLIERS),  # unsigned, no key name
            ("app:x", {"f": float("nan")}, records.SKIP_VALIDATION),
        ]
        for key, value, rtype in bad:
            self.assertRaises(InvalidRecord, records.sign_record, ALICE, key, value, rtype, 0, 60, 0)

    def test_key_namespaces_are_reserved_for_their_types(self) -> None:
        self.assertRaises(InvalidRecord, records.check_key, "nickname:alice", records.SKIP_VALIDATION)
        self.assertRaises(InvalidRecord, records.check_key, "identity:alice", records.NICKNAME)
        self.assertRaises(InvalidRecord, records.check_key, "alice", records.NICKNAME)
        self.assertRaises(InvalidRecord, records.check_key, "nickname:", records.NICKNAME)
        self.assertRaises(InvalidRecord, records.check_key, "app:x", "unknown_type")
        self.assertRaises(InvalidRecord, records.check_key, "", records.SKIP_VALIDATION)
        self.assertRaises(InvalidRecord, records.check_key, "a\nb", records.SKIP_VALIDATION)
        self.assertRaises(InvalidRecord, records.check_key, "x" * 257, records.SKIP_VALIDATION)
        records.check_key("app:x", records.SKIP_VALIDATION)

    def test_signature_over_a_typed_key_with_a_wrong_type_is_still_rejected(self) -> None:
        # A valid signature does not make a reserved namespace acceptable.
        rec = note(key="app:alice")
        forged = dataclasses.replace(rec, key="nickname:alice")
        self.assertRaises(InvalidRecord, records.verify, forged, 1000)


class OverwriteTests(unittest.TestCase):
    def test_first_owner_holds_a_nickname_until_expiry(self) -> None:
        old = nick()
        theirs = nick(signer=MALLORY, created=1500, value=NICK)
        self.assertRaises(RecordConflict, records.check_replace, old, theirs, 1500)
        self.assertTrue(records.check_replace(old, nick(signer=MALLORY, created=4700), 4700))  # old expired

    def test_same_writer_needs_a_higher_seq(self) -> None:
        old = nick(seq=2)
        self.assertTrue(records.check_replace(old, nick(seq=3, created=1100), 1100))
        self.assertRaises(RecordConflict, records.check_replace, old, nick(seq=2, created=1100), 1100)
        self.assertRaises(RecordConflict, records.check_replace, old, nick(seq=1, created=1100), 1100)
        self.assertFalse(records.check_replace(old, old, 1100))  # identical: a refresh, nothing to write
        self.assertTrue(records.check_replace(None, old, 1100))

    def test_skip_validation_last_writer_wins(self) -> None:
        old = note(created=1000)
        newer = note(signer=MALLORY, created=1001, text="mine")
        self.assertTrue(records.check_replace(old, newer, 1001))
        self.assertRaises(RecordConflict, records.check_replace, newer, old, 1001)

    def test_pick_best_follows_the_same_rules(self) -> None:
        first, later, mallory = nick(created=1000), nick(created=1100, seq=1), nick(signer=MALLORY, created=1200)
        self.assertEqual(records.pick_best([mallory, first, later], 1300), later)
        self.assertIsNone(records.pick_best([first], 5000))
        self.assertEqual(records.pick_best([first, mallory], 4700), mallory)  # first expired
        a, b = note(created=1000), note(signer=MALLORY, created=1050)
        self.assertEqual(records.pick_best([b, a], 1100), b)
        self.assertIsNone(records.pick_best([], 0))


class FirstComeTests(unittest.TestCase):
    def test_a_first_come_record_must_be_fresh_when_a_node_first_stores_it(self) -> None:
        rec = nick(created=1000)
        records.check_fresh(rec, 1000 + records.FIRST_COME_MAX_AGE)
        self.assertRaises(records.StaleRecord, records.check_fresh, rec, 1001 + records.FIRST_COME_MAX_AGE)
        self.assertRaises(records.StaleRecord, records.check_fresh, rec, 1100, max_age=99)
        records.check_fresh(note(created=1000), 10**6)  # last-writer-wins records are not first-come
        self.assertTrue(issubclass(records.StaleRecord, InvalidRecord))

    def test_created_in_the_future_is_refused(self) -> None:
        self.assertRaises(InvalidRecord, records.verify, nick(created=2000), 2000 - records.MAX_CLOCK_SKEW - 1)

    def test_readers_take_the_writer_most_nodes_returned_not_the_earliest_created(self) -> None:
        alice = [nick(created=5000, seq=s) for s in (3, 3, 4)]
        backdated = nick(signer=MALLORY, created=1000, ttl=records.MAX_TTL)
        self.assertEqual(records.pick_best([backdated, *alice], 5100), alice[2])
        self.assertEqual(records.pick_best([backdated, backdated, alice[0]], 5100), backdated)
        # A tie goes to the earliest created.
        self.assertEqual(records.pick_best([alice[0], backdated], 5100), backdated)
        self.assertEqual(records.pick_best([alice[0], nick(signer=MALLORY, created=5050)], 5100), alice[0])


#: Key-bound records (signed once: RSA): a customer's suppliers record, an identity record.
BOUND_SAMPLES = [
    bound_envelope(suppliers_value(), MALLORY, created=1000),
    records.sign_record(MALLORY, IdentityValueTests.key,
                        {"idurl": IdentityValueTests.identity.idurl,
                         "xml": IdentityValueTests.identity.to_xml().decode("utf-8")}, records.IDENTITY, 1000, 4600, 0),
]


def samples() -> list[Record]:
    """One valid record of each type (what the mutations start from)."""
    return [nick(), note(), *BOUND_SAMPLES]


class RecordParserPropertyTests(unittest.TestCase):
    """Random and mutated envelopes raise nothing but InvalidRecord in the record parser."""

    def parse_or_refuse(self, data: object) -> Record | None:
        try:
            return records.parse_and_verify(data, 1001)
        except InvalidRecord:
            return None

    @PROPERTY
    @given(json_values)
    def test_random_json(self, value: object) -> None:
        self.parse_or_refuse(value)

    @PROPERTY
    @given(st.data())
    def test_random_fields_in_a_record_shape(self, data: st.DataObject) -> None:
        doc = {name: data.draw(json_values) for name in records._FIELDS}
        if data.draw(st.booleans()):
            doc["record_type"] = data.draw(st.sampled_from(sorted(records.RECORD_TYPES)))
        self.parse_or_refuse(doc)
        try:
            records.check_shape(doc["record_type"], str(doc["key"]), doc["value"])
        except InvalidRecord:
            pass

    @PROPERTY
    @given(st.data())
    def test_mutated_records(self, data: st.DataObject) -> None:
        original = data.draw(st.sampled_from(samples()))
        doc = data.draw(mutated_json(original.to_dict()))
        parsed = self.parse_or_refuse(doc)
        if parsed is not None:  # only a mutation that changed nothing can still carry a valid signature
            self.assertEqual(parsed, original)

    @PROPERTY
    @given(st.data())
    def test_check_key_refuses_cleanly(self, data: st.DataObject) -> None:
        try:
            records.check_key(data.draw(json_values), data.draw(st.sampled_from(sorted(records.RECORD_TYPES))))
        except InvalidRecord:
            pass
