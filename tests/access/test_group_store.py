"""The groups file: hosted queues, their members, this node's memberships (bitnode.access.group_store)."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.access.group_store import GroupStore
from bitnode.errors import NotFound
from bitnode.main.sqlitedb import StoreClosed

G1 = "group_00000000000000000000000000000001$alice@id.net"
G2 = "group_00000000000000000000000000000002$alice@id.net"


class GroupStoreTests(unittest.TestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.store = GroupStore(self.path)
        self.addCleanup(lambda: self.store.close())

    def test_appending_numbers_entries_per_queue_and_a_repeat_keeps_its_number(self):
        self.store.create_queue(G1, 1.0)
        self.store.create_queue(G2, 2.0)
        self.assertEqual(self.store.append(G1, "bob@x", "m1", 10.0, b"one", 11.0), (1, 1, True))
        self.assertEqual(self.store.append(G1, "carol@x", "m1", 10.0, b"two", 12.0), (2, 2, True))
        self.assertEqual(self.store.append(G2, "bob@x", "m9", 10.0, b"other", 12.0), (1, 1, True))
        self.assertEqual(self.store.append(G1, "bob@x", "m1", 10.0, b"one again", 13.0), (1, 2, False))
        self.assertEqual(self.store.entries_after(G1, 0, 10, 1 << 20), ([(1, b"one"), (2, b"two")], 2))
        self.assertEqual(self.store.entries_after(G1, 1, 10, 1 << 20), ([(2, b"two")], 2))
        self.assertRaises(NotFound, self.store.append, "group_09$nobody@x", "bob@x", "m", 1.0, b"", 1.0)

    def test_a_cursor_saved_after_the_store_closed_raises_store_closed(self):
        # groups_service.stop closes the store while a member's save may still wait for a thread
        self.store.close()
        self.assertRaises(StoreClosed, self.store.save_cursor, G1, True, 3, 1.0)
        self.assertRaises(StoreClosed, self.store.cursors)

    def test_a_fetch_is_bounded_by_count_and_bytes_but_never_empty_when_something_is_there(self):
        self.store.create_queue(G1, 1.0)
        for n in range(5):
            self.store.append(G1, "bob@x", f"m{n}", 1.0, bytes(100), 1.0)
        self.assertEqual([s for s, _ in self.store.entries_after(G1, 0, 3, 1 << 20)[0]], [1, 2, 3])
        self.assertEqual([s for s, _ in self.store.entries_after(G1, 0, 10, 250)[0]], [1, 2])
        self.assertEqual([s for s, _ in self.store.entries_after(G1, 0, 10, 10)[0]], [1])
        self.assertEqual(self.store.entries_after(G1, 5, 10, 10), ([], 5))

    def test_members_consumers_and_producers_are_counted_per_queue(self):
        self.store.create_queue(G1, 1.0)
        self.store.update_member(G1, "bob@x", 5.0, verified=True, subscribed=True)
        self.store.update_member(G1, "carol@x", 6.0, subscribed=True)
        self.store.append(G1, "bob@x", "m1", 1.0, b"x", 7.0)
        self.store.update_member(G1, "carol@x", 8.0, subscribed=False)
        bob = self.store.member(G1, "bob@x")
        self.assertEqual((bob["verified"], bob["subscribed"], bob["published"], bob["last_sequence"]),
                         (True, True, 1, 1))
        self.assertIsNone(self.store.member(G1, "dave@x"))
        queue = self.store.queue(G1)
        self.assertEqual((queue["head"], queue["messages"], queue["consumers"], queue["producers"]), (1, 1, 1, 1))
        self.assertEqual([m["member_id"] for m in self.store.members(G1)], ["bob@x", "carol@x"])

    def test_a_deleted_queue_takes_its_entries_and_members_along(self):
        self.store.create_queue(G1, 1.0)
        self.store.append(G1, "bob@x", "m1", 1.0, b"x", 1.0)
        self.assertTrue(self.store.delete_queue(G1))
        self.assertFalse(self.store.delete_queue(G1))
        self.assertEqual((self.store.queues(), self.store.members()), ([], []))
        self.assertRaises(NotFound, self.store.head, G1)
        self.assertRaises(NotFound, self.store.queue, G1)

    def test_memberships_survive_reopening(self):
        self.store.save_cursor(G1, True, 4, 1.0)
        self.store.save_cursor(G2, False, 0, 2.0)
        self.store.create_queue(G1, 1.0)
        self.store.close()
        self.store = GroupStore(self.path)
        self.assertEqual(self.store.cursors(), {G1: {"active": True, "last_sequence": 4, "changed": 1.0},
                                                G2: {"active": False, "last_sequence": 0, "changed": 2.0}})
        self.assertEqual(self.store.queue_ids(), [G1])
        self.store.drop_cursor(G2)
        self.assertEqual(list(self.store.cursors()), [G1])
        self.assertEqual(self.store.describe(), {"hosted_queues": 1, "hosted_entries": 0, "memberships": 1})
