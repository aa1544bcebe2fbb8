"""Records bound to an identity's master key: ``suppliers:`` and ``identity:`` values, their checks and order.

The customer signs its suppliers value once; any node may publish it again in
an envelope of its own. These tests pin what a DHT node accepts, what it keeps
when copies meet, and that random or mutated input only ever raises
``InvalidRecord``.
"""

from __future__ import annotations

import base64
import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.crypt import keys
from bitnode.dht import bound_values, records
from bitnode.dht.records import InvalidRecord, RecordConflict
from bitnode.userid.packet_keys import generate_identity

ALICE_MASTER = keys.generate_rsa(2048)
MALLORY_MASTER = keys.generate_rsa(2048)
ALICE_PUBLISHER = records.generate_signing_key()
SUPPLIER_PUBLISHER = records.generate_signing_key()
MALLORY_PUBLISHER = records.generate_signing_key()
ALICE_IDURL = "http://id.local/alice.xml"
S1, S2 = "http://id.local/s1.xml", "http://id.local/s2.xml"
KEY = bound_values.key_for(records.SUPPLIERS, ALICE_MASTER)
T0 = 1_700_000_000
DAY = 86400


def value(revision: int = 3, signed_at: int = T0, ttl: int = DAY, suppliers=(S1, S2), master=ALICE_MASTER) -> dict:
    return bound_values.sign_suppliers(master, ALICE_IDURL, "1-of-2", list(suppliers), revision, ttl, signed_at)


def unchecked(master=ALICE_MASTER, **fields) -> dict:
    """A value signed by ``master`` as sign_suppliers would, but without its checks (to test the DHT's)."""
    val = {"customer_idurl": ALICE_IDURL, "ecc_map": "1-of-2", "suppliers": [S1], "revision": 1, "ttl": DAY,
           "signed_at": T0, "customer_key": base64.b64encode(master.public_key().to_der()).decode("ascii")}
    val.update(fields)
    val["signature"] = base64.b64encode(keys.sign(master, bound_values._signing_bytes(val))).decode("ascii")
    return val


def envelope(val: dict, publisher=ALICE_PUBLISHER, created: int = T0, lifetime: int | None = None,
             key: str = KEY, seq: int = 0) -> records.Record:
    life = val["ttl"] if lifetime is None else lifetime
    return records.sign_record(publisher, key, val, records.SUPPLIERS, created, created + life, seq)


class SuppliersValueTests(unittest.TestCase):
    def test_a_signed_value_verifies_in_anyones_envelope_after_a_json_round_trip(self) -> None:
        val = value()
        self.assertEqual(KEY, f"suppliers:{ALICE_MASTER.fingerprint()}")
        for publisher in (ALICE_PUBLISHER, SUPPLIER_PUBLISHER):
            rec = envelope(val, publisher)
            back = records.parse_and_verify(json.loads(rec.to_json()), now=T0 + 1)
            self.assertEqual(back.value, val)
        der = bound_values.check_suppliers(KEY, val)
        self.assertEqual(keys.public_from_der(der), ALICE_MASTER.public_key())

    def test_every_tampered_field_breaks_the_customers_signature(self) -> None:
        val = value()
        changes = {"customer_idurl": "http://id.local/mallory.xml", "ecc_map": "2-of-2", "suppliers": [S2, S1],
                   "revision": 4, "ttl": DAY * 2, "signed_at": T0 + 1}
        for field, changed in changes.items():
            forged = dict(val, **{field: changed})
            self.assertRaises(InvalidRecord, envelope, forged)
            self.assertRaises(InvalidRecord, records.check_shape, records.SUPPLIERS, KEY, forged)

    def test_a_stranger_cannot_write_under_the_customers_key(self) -> None:
        # Mallory signs a value with her own master key: it names her key, not Alice's.
        theirs = value(master=MALLORY_MASTER)
        self.assertRaises(InvalidRecord, envelope, theirs)
        # Putting Alice's public key in it does not help: the signature is Mallory's.
        forged = dict(theirs, customer_key=value()["customer_key"])
        self.assertRaises(InvalidRecord, envelope, forged)

    def test_keys_must_name_a_full_fingerprint(self) -> None:
        val = value()
        for key in ("suppliers:alice@id.local", f"suppliers:{ALICE_MASTER.fingerprint()[:-1]}",
                    f"suppliers:{ALICE_MASTER.fingerprint().upper()}", "suppliers:"):
            self.assertRaises(InvalidRecord, records.check_shape, records.SUPPLIERS, key, val)

    def test_an_envelope_may_not_outlive_the_ttl_the_customer_signed(self) -> None:
        val = value(ttl=60)
        envelope(val, lifetime=60)
        self.assertRaises(InvalidRecord, envelope, val, lifetime=61)

    def test_value_limits(self) -> None:
        for bad in ({"ttl": bound_values.MIN_TTL - 1}, {"ttl": bound_values.MAX_TTL + 1}, {"revision": -1},
                    {"suppliers": [S1] * (bound_values.MAX_SUPPLIERS + 1)}, {"suppliers": ["http://ID.local/s1.xml"]},
                    {"ecc_map": ""}, {"ecc_map": "x" * 17}, {"signed_at": 1.5}, {"customer_idurl": "alice"}):
            self.assertRaises(InvalidRecord, records.check_shape, records.SUPPLIERS, KEY, unchecked(**bad))
            signable = {k: v for k, v in bad.items() if k in ("ttl", "revision", "suppliers")}
            if signable:  # the customer's own signing refuses them too
                self.assertRaises(bound_values.InvalidBoundValue, value, **signable)
        records.check_shape(records.SUPPLIERS, KEY, unchecked())
        envelope(value(suppliers=["", S1, ""]))


class OrderTests(unittest.TestCase):
    """What a DHT node keeps when copies of one key meet."""

    def test_a_re_store_by_a_supplier_renews_the_entry(self) -> None:
        val = value()
        stored = envelope(val, ALICE_PUBLISHER, created=T0)
        again = envelope(val, SUPPLIER_PUBLISHER, created=T0 + DAY // 2)
        self.assertTrue(records.check_replace(stored, again, T0 + DAY // 2))
        # an older envelope of the same value changes nothing (not an error: the same value)
        self.assertFalse(records.check_replace(again, stored, T0 + DAY // 2))

    def test_older_revisions_are_refused_from_anyone(self) -> None:
        new = envelope(value(revision=5), ALICE_PUBLISHER)
        for publisher in (ALICE_PUBLISHER, SUPPLIER_PUBLISHER, MALLORY_PUBLISHER):
            old = envelope(value(revision=4), publisher, created=T0 + 10)
            self.assertRaises(RecordConflict, records.check_replace, new, old, T0 + 10)
        # the same revision signed earlier is older too
        earlier = envelope(value(revision=5, signed_at=T0 - 100), SUPPLIER_PUBLISHER, created=T0 + 10)
        self.assertRaises(RecordConflict, records.check_replace, new, earlier, T0 + 10)

    def test_newer_revisions_replace_whoever_publishes_them(self) -> None:
        old = envelope(value(revision=4), ALICE_PUBLISHER)
        new = envelope(value(revision=5), SUPPLIER_PUBLISHER, created=T0 + 10)
        self.assertTrue(records.check_replace(old, new, T0 + 10))

    def test_an_expired_entry_takes_any_valid_value(self) -> None:
        new = envelope(value(revision=5, ttl=60), ALICE_PUBLISHER)
        old = envelope(value(revision=4), MALLORY_PUBLISHER, created=T0 + 61)
        self.assertTrue(records.check_replace(new, old, T0 + 61))

    def test_pick_best_takes_the_newest_value_then_the_latest_expiry(self) -> None:
        five = value(revision=5)
        r4 = envelope(value(revision=4), ALICE_PUBLISHER, created=T0 + 500)
        r5 = envelope(five, ALICE_PUBLISHER)
        r5_later = envelope(five, SUPPLIER_PUBLISHER, created=T0 + 100)
        self.assertEqual(records.pick_best([r4, r5, r5_later], T0 + 600), r5_later)
        self.assertEqual(records.pick_best([r4, r5], T0 + 600), r5)


class IdentityValueTests(unittest.TestCase):
    master, _, identity = generate_identity("alice", [ALICE_IDURL], [], 2048, T0)
    key = bound_values.key_for(records.IDENTITY, master)

    def identity_record(self, identity=None, key=None, idurl=None, publisher=ALICE_PUBLISHER) -> records.Record:
        identity = identity or self.identity
        val = {"idurl": idurl or identity.idurl, "xml": identity.to_xml().decode("utf-8")}
        return records.sign_record(publisher, key or self.key, val, records.IDENTITY, T0, T0 + DAY, 0)

    def test_a_self_signed_identity_under_its_key_is_accepted_from_any_publisher(self) -> None:
        rec = self.identity_record(publisher=MALLORY_PUBLISHER)
        self.assertEqual(bound_values.identity_of(rec.key, rec.value), self.identity)

    def test_a_foreign_key_a_wrong_idurl_or_no_signature_is_refused(self) -> None:
        other_key = bound_values.key_for(records.IDENTITY, MALLORY_MASTER)
        self.assertRaises(InvalidRecord, self.identity_record, key=other_key)
        self.assertRaises(InvalidRecord, self.identity_record, idurl="http://id.local/bob.xml")
        unsigned = self.identity.updated(now=T0 + 5)
        self.assertRaises(InvalidRecord, self.identity_record, identity=unsigned)

    def test_a_higher_identity_revision_wins(self) -> None:
        old = self.identity_record()
        newer = self.identity_record(identity=self.identity.updated(now=T0 + 5).sign(self.master),
                                     publisher=SUPPLIER_PUBLISHER)
        self.assertTrue(records.check_replace(old, newer, T0 + 5))
        self.assertRaises(RecordConflict, records.check_replace, newer, old, T0 + 5)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


class ParserPropertyTests(unittest.TestCase):
    """Random and mutated values never raise anything but InvalidRecord, and never pass changed."""

    GOOD = value()

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(JSON)
    def test_random_values_are_refused_cleanly(self, junk) -> None:
        for rtype in (records.SUPPLIERS, records.IDENTITY):
            self.assertRaises(InvalidRecord, records.check_shape, rtype, f"{rtype}:{'0' * 64}", junk)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(sorted(bound_values.SUPPLIERS_FIELDS | {"extra"})), JSON)
    def test_a_mutated_field_is_refused_unless_unchanged(self, field, junk) -> None:
        forged = copy.deepcopy(self.GOOD)
        forged[field] = junk
        if forged == self.GOOD:
            records.check_shape(records.SUPPLIERS, KEY, forged)
            return
        self.assertRaises(InvalidRecord, records.check_shape, records.SUPPLIERS, KEY, forged)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_flipped_bytes_in_the_key_or_signature_are_refused(self, data) -> None:
        field = data.draw(st.sampled_from(["customer_key", "signature"]))
        raw = bytearray(base64.b64decode(self.GOOD[field]))
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] ^= data.draw(st.integers(1, 255))
        forged = dict(self.GOOD, **{field: base64.b64encode(bytes(raw)).decode("ascii")})
        self.assertRaises(InvalidRecord, records.check_shape, records.SUPPLIERS, KEY, forged)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(st.sampled_from(sorted(records._FIELDS)), JSON, max_size=9))
    def test_random_envelopes_of_bound_types_are_refused_cleanly(self, raw) -> None:
        raw = dict(raw, record_type=records.SUPPLIERS)
        self.assertRaises(InvalidRecord, records.parse_and_verify, raw, T0)
