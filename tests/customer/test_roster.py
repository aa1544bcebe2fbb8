"""SupplierRoster: positions, retiring holders and pending releases survive a restart; format 1 still reads."""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from bitnode.customer.roster import Releasing, Retiring, SupplierRoster


class RosterTests(unittest.TestCase):
    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "suppliers.json")

    def test_a_new_roster_is_empty(self):
        roster = SupplierRoster(self.path)
        self.assertEqual((roster.positions, roster.retiring, roster.releasing, roster.revision), ([], [], [], 0))

    def test_format_1_is_read(self):
        with open(self.path, "w") as handle:
            json.dump({"format": 1, "revision": 4, "positions": ["a", "", "c"]}, handle)
        roster = SupplierRoster(self.path)
        self.assertEqual((roster.positions, roster.revision, roster.retiring), (["a", "", "c"], 4, []))

    def test_an_unknown_format_is_refused(self):
        with open(self.path, "w") as handle:
            json.dump({"format": 99, "revision": 4, "positions": []}, handle)
        self.assertRaises(ValueError, SupplierRoster, self.path)

    def test_retire_release_and_forget_survive_a_restart(self):
        roster = SupplierRoster(self.path)
        roster.save(["a", "b", "c"])
        roster.retire("b", 1, "offline for 700s", True, 10.0)
        roster.retire("c", 2, "fewer suppliers wanted", False, 11.0)
        roster.save(["a", ""])
        self.assertTrue(roster.start_release("b", 20.0))
        self.assertFalse(roster.start_release("zz", 20.0))
        roster.note_release_attempt("b", "no answer")
        roster.save_holders()
        again = SupplierRoster(self.path)
        self.assertEqual(again.positions, ["a", ""])
        self.assertEqual(again.revision, 2)  # a change of former holders only is not a new revision
        self.assertEqual(again.retiring, [Retiring("c", 2, "fewer suppliers wanted", False, 11.0)])
        self.assertEqual(again.releasing, [Releasing("b", 20.0, 1, "no answer")])
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        again.forget("b")
        again.forget("c")
        again.save_holders()
        self.assertEqual((SupplierRoster(self.path).retiring, SupplierRoster(self.path).releasing), ([], []))
