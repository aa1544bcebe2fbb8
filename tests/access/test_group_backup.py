"""The ``groups`` backup part (bitnode.access.group_backup) and a queue restored without its stream."""

from __future__ import annotations

import json

from twisted.trial import unittest

from bitnode.access import group_backup
from bitnode.access.group_store import GroupStore
from bitnode.errors import BadRequest
from tests.access import test_group_member as member_harness
from tests.access.test_group_member import batch
from tests.access.test_group_queue import ME, Harness, blob

G1 = "group_00000000000000000000000000000001$alice@id.net"
G2 = "group_00000000000000000000000000000002$carol@id.net"


def memory_store(case) -> GroupStore:
    store = GroupStore(":memory:")
    case.addCleanup(store.close)
    return store


def restore_into(store: GroupStore, document: dict) -> None:
    """What the service does with a parsed part, at the store level (no automats)."""
    for queue in document["queues"]:
        store.restore_queue(queue["group_key_id"], queue["created"], queue["head"], queue["members"])
    for entry in document["memberships"]:
        store.save_cursor(entry["group_key_id"], entry["active"], entry["last_sequence"], 9.0)


class PartTests(unittest.TestCase):
    def setUp(self):
        self.store = memory_store(self)
        self.store.create_queue(G1, 5.0)
        self.store.append(G1, ME, "m1", 1.0, b"one", 6.0)
        self.store.append(G1, "bob@id.net", "m2", 1.0, b"two", 7.0)
        self.store.update_member(G1, "bob@id.net", 7.0, verified=True, subscribed=True)
        self.store.update_member(G1, "dave@id.net", 8.0, verified=True, subscribed=False)
        self.store.save_cursor(G1, True, 2, 8.0)
        self.store.save_cursor(G2, False, 7, 8.0)

    def test_round_trip_keeps_memberships_queues_and_members_but_not_the_stream(self):
        value = group_backup.collect(self.store)
        self.assertEqual(value["version"], group_backup.VERSION)
        self.assertEqual(value["memberships"], [
            {"group_key_id": G1, "active": True, "last_sequence": 2},
            {"group_key_id": G2, "active": False, "last_sequence": 7}])
        (queue,) = value["queues"]
        self.assertEqual((queue["group_key_id"], queue["created"], queue["head"]), (G1, 5.0, 2))
        self.assertEqual({m["member_id"]: (m["verified"], m["subscribed"]) for m in queue["members"]},
                         {ME: (False, False), "bob@id.net": (True, True), "dave@id.net": (True, False)})
        self.assertNotIn("one", json.dumps(value))  # no message in it
        document = group_backup.parse(json.loads(json.dumps(value)))  # as it comes back from the backup
        self.assertEqual(document, value)

        other = memory_store(self)
        restore_into(other, document)
        again = group_backup.collect(other)
        self.assertEqual(again["memberships"], value["memberships"])
        self.assertEqual([(q["group_key_id"], q["head"], q["members"]) for q in again["queues"]],
                         [(q["group_key_id"], q["head"], q["members"]) for q in value["queues"]])
        self.assertEqual(other.entries_after(G1, 0, 10, 1 << 20), ([], 2))
        # the numbers go on after the backed-up head
        self.assertEqual(other.append(G1, "bob@id.net", "m3", 1.0, b"three", 9.0), (3, 3, True))

    def test_restoring_an_older_head_never_moves_a_queue_back(self):
        self.store.restore_queue(G1, 1.0, 1, [{"member_id": "bob@id.net", "verified": False, "subscribed": False}])
        self.assertEqual(self.store.head(G1), 2)
        self.assertTrue(self.store.member(G1, "bob@id.net")["verified"])  # known members are kept as they are

    def test_an_unknown_version_or_a_malformed_part_is_refused(self):
        value = group_backup.collect(self.store)
        for bad in (dict(value, version=2), dict(value, version=None), [], "x", dict(value, memberships={}),
                    dict(value, memberships=[{"group_key_id": "share_01$alice@id.net", "active": True,
                                              "last_sequence": 0}]),
                    dict(value, memberships=[{"group_key_id": G1, "active": 1, "last_sequence": 0}]),
                    dict(value, memberships=[{"group_key_id": G1, "active": True, "last_sequence": -1}]),
                    dict(value, queues=[dict(value["queues"][0], head=True)]),
                    dict(value, queues=[dict(value["queues"][0], members=[{"member_id": 3}])])):
            self.assertRaises(BadRequest, group_backup.parse, bad)
        self.assertIn("version 2 is not known", str(self.assertRaises(BadRequest, group_backup.parse,
                                                                       dict(value, version=2))))


class RestoredBrokerTests(unittest.TestCase):
    """A queue hosted again from a backup: its numbers go on, pushes resume, old numbers are gone."""

    def setUp(self):
        self.store = memory_store(self)
        self.h = Harness(self.store)
        members = [{"member_id": "bob@x", "verified": True, "subscribed": True},
                   {"member_id": "carol@x", "verified": True, "subscribed": False}]
        summary = self.successResultOf(self.h.broker.restore(G1, 5.0, 7, members))
        self.assertEqual((summary["head"], summary["messages"], summary["consumers"]), (7, 0, 1))

    def test_a_new_message_takes_the_next_number_and_is_pushed_to_the_restored_consumers(self):
        self.assertEqual(self.successResultOf(self.h.broker.publish(G1, "carol@x", blob("carol@x", "c1"))),
                         {"sequence": 8, "head": 8})
        self.assertEqual(self.h.pushes, [("bob@x", 8, blob("carol@x", "c1"))])
        self.assertEqual(self.h.audits, [])  # verified members are not audited again

    def test_a_fetch_of_the_lost_numbers_answers_nothing_more_to_fetch(self):
        batch_ = self.successResultOf(self.h.broker.fetch(G1, "bob@x", 0))
        self.assertEqual(batch_, {"entries": [], "head": 7, "more": False})
        self.successResultOf(self.h.broker.publish(G1, "carol@x", blob("carol@x", "c1")))
        batch_ = self.successResultOf(self.h.broker.fetch(G1, "bob@x", 0))
        self.assertEqual(([s for s, _ in batch_["entries"]], batch_["more"]), ([8], False))


class MemberOfARestoredQueueTests(unittest.TestCase):
    """group_member's harness: entries a restored broker no longer has are skipped, not waited for."""

    _harness = member_harness.GroupMemberTests  # borrowed, not inherited: its own tests run in their module
    setUp, make, deliver, save = _harness.setUp, _harness.make, _harness.deliver, _harness.save

    def test_a_member_behind_a_restored_queue_skips_to_its_first_entry(self):
        self.member.event("join")
        self.link.answer("subscribe", {"head": 7})
        self.link.answer("fetch", batch(head=7))
        self.assertEqual((self.member.state, self.delivered), ("CONNECTED", []))
        self.member.event("pushed", 8, b"m8")  # looks like a hole after 0: fetched
        self.assertEqual(self.link.last("fetch")[1], 0)
        self.link.answer("fetch", batch(8, 9))
        self.assertEqual(self.delivered, [8, 9])
        self.assertEqual(self.link.last("fetch")[1], 9)  # one more look for what came meanwhile
        self.link.answer("fetch", batch(head=9))
        self.assertEqual(self.member.state, "CONNECTED")
        self.assertEqual(self.member.describe_group()["last_sequence"], 9)
        self.assertEqual(self.saved[-1], (True, 9))
