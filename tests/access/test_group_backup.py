"""The ``groups`` backup part (bitnode.access.group_backup): what it holds, its bound, what it refuses."""

from __future__ import annotations

import base64
import json

from twisted.trial import unittest

from bitnode.access import group_backup, group_config
from bitnode.access.group_store import GroupStore
from bitnode.errors import BadRequest

G1 = "group_00000000000000000000000000000001$alice@id.net"
G2 = "group_00000000000000000000000000000002$carol@id.net"


def config(group, creator):
    return group_config.new_config(group, creator, "0" * 64, ["b0@id.net", "b1@id.net", creator], 1.0, "")


class PartTests(unittest.TestCase):
    def setUp(self):
        self.store = GroupStore(":memory:")
        self.addCleanup(self.store.close)
        self.store.add_group(G1, config(G1, "alice@id.net").to_json(), "alice@id.net", 1.0)
        self.store.add_group(G2, config(G2, "carol@id.net").to_json(), "carol@id.net", 2.0)
        self.store.save_cursor(G1, True, 12, 8.0)
        self.store.save_cursor(G2, False, 7, 8.0)
        self.store.add_secrets(G1, {1: b"a" * 32, 2: b"b" * 32})
        for seq in range(1, 13):
            self.store.keep_recent(G1, seq, bytes(1000), keep=10)

    def test_round_trip_keeps_groups_memberships_keys_and_the_newest_entries(self):
        value = group_backup.collect(self.store, 1 << 20)
        self.assertEqual(json.loads(json.dumps(value)), value)  # plain JSON
        parsed = group_backup.parse(value)
        first, second = parsed["groups"]
        self.assertEqual((first["group_key_id"], first["active"], first["last_sequence"]), (G1, True, 12))
        self.assertEqual(first["config"], config(G1, "alice@id.net"))
        self.assertEqual(first["secrets"], {1: b"a" * 32, 2: b"b" * 32})
        self.assertEqual([seq for seq, _ in first["recent"]], list(range(3, 13)))
        self.assertEqual((second["active"], second["secrets"], second["recent"]), (False, {}, []))

    def test_the_history_in_the_part_is_bounded_in_bytes_across_groups(self):
        value = group_backup.collect(self.store, 8000)  # 4000 bytes for each of the two groups
        self.assertEqual([seq for seq, _ in value["groups"][0]["recent"]], [9, 10, 11, 12])
        self.assertLess(len(json.dumps(value)), 8000 * 4 // 3 + 2000)
        self.assertEqual(group_backup.collect(self.store, 0)["groups"][0]["recent"], [])

    def test_an_unknown_version_or_a_malformed_part_is_refused(self):
        good = group_backup.collect(self.store, 1 << 20)
        entry = good["groups"][0]
        bad = [None, [], {"version": 99, "groups": []}, {"version": 2}, {"version": 2, "groups": [7]},
               {"version": 2, "groups": [dict(entry, config={"group_key_id": "x"})]},
               {"version": 2, "groups": [dict(entry, active="yes")]},
               {"version": 2, "groups": [dict(entry, last_sequence=-1)]},
               {"version": 2, "groups": [dict(entry, secrets={"1": "00"})]},
               {"version": 2, "groups": [dict(entry, secrets={"x": "00" * 32})]},
               {"version": 2, "groups": [dict(entry, recent=[[0, base64.b64encode(b"x").decode()]])]},
               {"version": 2, "groups": [dict(entry, recent=[[1, "not base64!"]])]}]
        for value in bad:
            self.assertRaises(BadRequest, group_backup.parse, value)

    def test_a_part_from_before_groups_had_several_brokers_restores_nothing(self):
        old = {"version": 1, "memberships": [{"group_key_id": G1, "active": True, "last_sequence": 3}], "queues": []}
        self.assertEqual(group_backup.parse(old), {"version": 2, "groups": []})
