"""A member's groups file: known groups, memberships, message keys, the recent tail (bitnode.access.group_store)."""

from __future__ import annotations

import sqlite3

from twisted.trial import unittest

from bitnode.access.group_store import GroupStore
from bitnode.main.sqlitedb import StoreClosed

G1 = "group_00000000000000000000000000000001$alice@id.net"
G2 = "group_00000000000000000000000000000002$alice@id.net"


class GroupStoreTests(unittest.TestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.store = GroupStore(self.path)
        self.addCleanup(lambda: self.store.close())

    def test_a_group_keeps_its_first_config_and_the_newest_leader(self):
        self.store.add_group(G1, '{"v": 1}', "alice@id.net", 1.0)
        self.store.add_group(G1, '{"v": 2}', "bob@id.net", 2.0)
        self.store.set_leader(G1, "b1@id.net", 3)
        self.store.set_leader(G1, "b0@id.net", 2)  # an older term does not win
        self.assertEqual(self.store.groups(), {G1: {"config": '{"v": 1}', "invited_by": "alice@id.net",
                                                    "invited": 1.0, "leader": "b1@id.net", "term": 3}})

    def test_a_cursor_saved_after_the_store_closed_raises_store_closed(self):
        # groups_service.stop closes the store while a member's save may still wait for a thread
        self.store.close()
        self.assertRaises(StoreClosed, self.store.save_cursor, G1, True, 3, 1.0)
        self.assertRaises(StoreClosed, self.store.cursors)

    def test_a_generation_known_already_keeps_its_key(self):
        self.store.add_secrets(G1, {1: b"a" * 32})
        self.store.add_secrets(G1, {1: b"b" * 32, 2: b"c" * 32})
        self.store.add_secrets(G2, {1: b"d" * 32})
        self.assertEqual(self.store.secrets(G1), {G1: {1: b"a" * 32, 2: b"c" * 32}})
        self.assertEqual(set(self.store.secrets()), {G1, G2})

    def test_the_recent_tail_keeps_the_newest_entries_and_answers_within_a_byte_budget(self):
        for seq in range(1, 8):
            self.store.keep_recent(G1, seq, bytes(100), keep=5)
        self.store.keep_recent(G1, 7, bytes(100), keep=5)  # a repeat changes nothing
        self.assertEqual([s for s, _ in self.store.recent(G1, 1 << 20)], [3, 4, 5, 6, 7])
        self.assertEqual([s for s, _ in self.store.recent(G1, 250)], [6, 7])
        self.assertEqual(self.store.recent(G2, 1 << 20), [])

    def test_memberships_survive_reopening_and_forgetting_a_group_takes_everything(self):
        self.store.add_group(G1, "{}", "alice@id.net", 1.0)
        self.store.save_cursor(G1, True, 4, 1.0)
        self.store.save_cursor(G2, False, 0, 2.0)
        self.store.add_secrets(G1, {1: b"a" * 32})
        self.store.keep_recent(G1, 4, b"x", keep=10)
        self.store.close()
        self.store = GroupStore(self.path)
        self.assertEqual(self.store.cursors(), {G1: {"active": True, "last_sequence": 4, "changed": 1.0},
                                                G2: {"active": False, "last_sequence": 0, "changed": 2.0}})
        self.assertEqual(self.store.describe(), {"groups_known": 1, "memberships": 1, "recent_entries": 1})
        self.store.drop_cursor(G2)
        self.store.forget_group(G1)
        self.assertEqual((self.store.groups(), self.store.cursors(), self.store.secrets(), self.store.recent(G1, 99)),
                         ({}, {}, {}, []))

    def test_a_file_of_the_single_broker_format_opens_without_its_queues(self):
        # format 1 kept the creator's queue in this file; its groups cannot work with several brokers
        path = self.mktemp()
        db = sqlite3.connect(path)
        db.executescript("""
            CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('format', '1');
            CREATE TABLE queues (group_key_id TEXT PRIMARY KEY, created REAL NOT NULL, head INTEGER NOT NULL);
            INSERT INTO queues VALUES ('%s', 1.0, 3);
            CREATE TABLE entries (group_key_id TEXT, sequence INTEGER, blob BLOB);
            CREATE TABLE members (group_key_id TEXT, member_id TEXT);
            CREATE TABLE cursors (group_key_id TEXT PRIMARY KEY, active INTEGER NOT NULL,
                                  last_sequence INTEGER NOT NULL, changed REAL NOT NULL);
            INSERT INTO cursors VALUES ('%s', 1, 3, 1.0);
        """ % (G1, G1))
        db.commit()
        db.close()
        store = GroupStore(path)
        self.addCleanup(store.close)
        self.assertEqual((store.cursors(), store.groups()), ({}, {}))
        store.save_cursor(G1, True, 0, 2.0)  # and it works as a file of today's format
        tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
        self.assertFalse(tables & {"queues", "entries", "members"})
