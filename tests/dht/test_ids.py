"""Tests for bitnode.dht.ids: XOR distance, bucket index, id wire form, contacts."""

from __future__ import annotations

import random

from twisted.trial import unittest

from bitnode.dht import ids
from bitnode.dht.ids import Contact
from bitnode.errors import BadRequest


class DistanceTests(unittest.TestCase):
    def test_xor_distance_is_symmetric_and_zero_only_for_self(self) -> None:
        rng = random.Random(1)
        a, b = ids.random_id(rng), ids.random_id(rng)
        self.assertEqual(ids.distance(a, b), ids.distance(b, a))
        self.assertEqual(ids.distance(a, a), 0)
        self.assertEqual(ids.distance(0b1010, 0b0110), 0b1100)

    def test_bucket_index_is_position_of_highest_differing_bit(self) -> None:
        self.assertEqual(ids.bucket_index(0, 1), 0)
        self.assertEqual(ids.bucket_index(0, 0b1000), 3)
        self.assertEqual(ids.bucket_index(0b1000, 0b1001), 0)
        self.assertEqual(ids.bucket_index(0, 1 << 255), 255)

    def test_bucket_index_of_self_is_refused(self) -> None:
        self.assertRaises(BadRequest, ids.bucket_index, 5, 5)

    def test_key_to_id_is_sha256_sized_and_stable(self) -> None:
        a = ids.key_to_id("nickname:alice")
        self.assertEqual(a, ids.key_to_id("nickname:alice"))
        self.assertNotEqual(a, ids.key_to_id("nickname:bob"))
        self.assertLess(a, ids.ID_SPACE)

    def test_random_id_in_range_stays_in_range(self) -> None:
        rng = random.Random(2)
        for _ in range(100):
            self.assertTrue(16 <= ids.random_id_in_range(16, 32, rng) < 32)
        self.assertRaises(BadRequest, ids.random_id_in_range, 5, 5, rng)


class HexTests(unittest.TestCase):
    def test_id_hex_round_trip(self) -> None:
        node_id = ids.random_id(random.Random(3))
        text = ids.id_to_hex(node_id)
        self.assertEqual(len(text), 64)
        self.assertEqual(ids.id_from_hex(text), node_id)

    def test_id_from_hex_is_strict(self) -> None:
        for bad in ("ab", "G" * 64, "A" * 64, 12, None, "0" * 65, "0" * 63 + "\n", "0" * 63 + "\u0661"):
            self.assertRaises(BadRequest, ids.id_from_hex, bad)


class ContactTests(unittest.TestCase):
    def test_contact_dict_round_trip(self) -> None:
        c = Contact(42, "127.0.0.1", 7001, "http://id/alice.xml", (0, 2))
        self.assertEqual(Contact.from_dict(c.to_dict()), c)
        self.assertEqual(Contact.from_dict(c.to_dict()).layers, (0, 2))
        self.assertTrue(c.in_layer(2))
        self.assertFalse(c.in_layer(3))

    def test_contact_from_dict_rejects_bad_fields(self) -> None:
        good = Contact(1, "10.0.0.1", 1).to_dict()
        for host in ("::1", "0.0.0.0", "255.255.255.255", "fe80::1"):
            self.assertEqual(Contact.from_dict(good | {"host": host}).host, host)
        for patch in ({"port": 0}, {"port": "1"}, {"host": ""}, {"host": "evil.example"}, {"host": "1.2.3"},
                      {"host": "01.2.3.4"}, {"host": "256.1.1.1"}, {"host": "10.0.0.1\n"}, {"host": "1.2.3.4 "},
                      {"user": "x" * 500}, {"layers": [-1]},
                      {"layers": list(range(40))}, {"id": "zz"}):
            self.assertRaises(BadRequest, Contact.from_dict, good | patch)
        self.assertRaises(BadRequest, Contact.from_dict, [1, 2])
