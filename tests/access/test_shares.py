"""Tests for bitnode.access.shares: the persisted shares and their history."""

from __future__ import annotations

import json
import os
import stat

from twisted.trial import unittest

from bitnode.access.shares import ShareRegistry
from bitnode.errors import BadRequest, NotFound
from tests.support import clock_at, temp_path

KEY = "share_0123456789abcdef0123456789abcdef$alice@id.example.net_8084"


class RegistryTests(unittest.TestCase):
    def setUp(self):
        self.path = temp_path(self, "shares.json")
        self.clock = clock_at(1000)

    def test_records_and_history_survive_a_restart(self):
        registry = ShareRegistry(self.path, self.clock)
        registry.put(KEY, owner_id="alice@id.example.net_8084", mine=True, grantees=["bob@h_1"], active=True)
        registry.note("granted", KEY, "bob@h_1")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        again = ShareRegistry(self.path, self.clock)
        record = again.require(KEY)
        self.assertEqual((record["mine"], record["grantees"], record["active"], record["created"]),
                         (True, ["bob@h_1"], True, 1000.0))
        self.assertEqual(again.history(), [{"time": 1000.0, "event": "granted", "key_id": KEY, "user": "bob@h_1",
                                            "detail": ""}])

    def test_copies_are_handed_out_and_unknown_fields_refused(self):
        registry = ShareRegistry(self.path, self.clock)
        registry.put(KEY, grantees=["bob@h_1"])
        registry.get(KEY)["grantees"].append("mallory@h_1")
        self.assertEqual(registry.get(KEY)["grantees"], ["bob@h_1"])
        self.assertRaises(BadRequest, registry.put, KEY, colour="red")
        self.assertRaises(NotFound, registry.require, "share_1$bob@h_1")

    def test_forget_keeps_the_history_and_the_history_is_bounded(self):
        registry = ShareRegistry(self.path, self.clock, history_size=3)
        registry.put(KEY, mine=True)
        for event in ("created", "granted", "opened", "deleted"):
            registry.note(event, KEY)
        registry.forget(KEY)
        self.assertIsNone(registry.get(KEY))
        self.assertEqual([e["event"] for e in ShareRegistry(self.path, self.clock, 3).history()],
                         ["granted", "opened", "deleted"])

    def test_an_unreadable_file_is_moved_aside(self):
        with open(self.path, "w") as handle:
            handle.write("{broken")
        registry = ShareRegistry(self.path, self.clock)
        self.assertEqual(registry.shares(), [])
        self.assertTrue(os.path.exists(self.path + ".broken"))
        with open(self.path + ".broken") as handle:
            self.assertEqual(handle.read(), "{broken")
        registry.put(KEY, mine=False)
        with open(self.path) as handle:
            self.assertEqual(list(json.load(handle)["shares"]), [KEY])
