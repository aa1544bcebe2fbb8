"""Tests for bitnode.dht.storage: the sqlite record store, its expiry and quotas."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.dht.limits import DHTLimits
from bitnode.dht.storage import RecordStore, WriterQuotaExceeded
from bitnode.errors import InsufficientStorage

REC = {"key": "app:x", "value": {"n": 1}}


class RecordStoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.path = os.path.join(self.mktemp() + "-dht.sqlite")
        self.store = RecordStore(self.path, self.clock)
        self.addCleanup(lambda: self.store.close())

    def test_put_then_get_per_layer(self) -> None:
        self.store.put(0, "app:x", REC, expires=2000, own=True)
        self.store.put(5, "app:x", {"other": True}, expires=2000)
        row = self.store.get(0, "app:x")
        self.assertEqual((row.layer, row.key, row.record, row.expires, row.own), (0, "app:x", REC, 2000.0, True))
        self.assertEqual(self.store.get(5, "app:x").record, {"other": True})
        self.assertIsNone(self.store.get(1, "app:x"))
        self.assertIsNone(self.store.get(0, "app:y"))

    def test_put_replaces_the_previous_record(self) -> None:
        self.store.put(0, "app:x", REC, expires=2000)
        self.store.put(0, "app:x", {"v": 2}, expires=3000)
        self.assertEqual(self.store.get(0, "app:x").record, {"v": 2})
        self.assertEqual(self.store.count(), 1)

    def test_expired_rows_are_invisible_then_deleted(self) -> None:
        self.store.put(0, "app:x", REC, expires=1500)
        self.store.put(0, "app:y", REC, expires=2500)
        self.clock.advance(500)  # now == 1500: x has expired
        self.assertIsNone(self.store.get(0, "app:x"))
        self.assertEqual([r["key"] for r in self.store.dump()], ["app:y"])
        self.assertEqual(self.store.count(), 2)
        self.assertEqual(self.store.expire(), 1)
        self.assertEqual(self.store.count(), 1)

    def test_records_persist_across_reopen_in_wal_mode(self) -> None:
        self.store.put(0, "app:x", REC, expires=2000, own=True)
        self.store.close()
        self.store = RecordStore(self.path, self.clock)
        row = self.store.get(0, "app:x")
        self.assertEqual((row.record, row.own), (REC, True))
        self.assertEqual(self.store.count(), 1)
        mode = self.store._db.execute("PRAGMA journal_mode").fetchone()[0]
        self.assertEqual(mode, "wal")

    def test_full_store_refuses_new_keys_but_accepts_updates(self) -> None:
        store = RecordStore(":memory:", self.clock, DHTLimits(store_max_records=2))
        self.addCleanup(store.close)
        store.put(0, "app:a", REC, expires=1100)
        store.put(0, "app:b", REC, expires=5000)
        self.assertRaises(InsufficientStorage, store.put, 0, "app:c", REC, 5000)
        store.put(0, "app:b", {"v": 2}, expires=5000)  # same key: allowed
        self.clock.advance(100)  # app:a expires, which frees a slot
        store.put(0, "app:c", REC, expires=5000)
        self.assertEqual(sorted(r["key"] for r in store.dump()), ["app:b", "app:c"])

    def test_writer_quota_counts_records_and_bytes_of_each_writer(self) -> None:
        store = RecordStore(":memory:", self.clock, DHTLimits(writer_max_records=2, writer_max_bytes=300))
        self.addCleanup(store.close)
        a, b = {"writer_pubkey": "A", "v": 1}, {"writer_pubkey": "B", "v": 1}
        store.put(0, "app:1", a, expires=5000)
        store.put(0, "app:2", a, expires=5000)
        self.assertRaises(WriterQuotaExceeded, store.put, 0, "app:3", a, 5000)
        store.put(0, "app:2", dict(a, v=2), expires=5000)  # replacing its own record: allowed
        store.put(0, "app:3", b, expires=5000)  # another writer: its own quota
        self.assertRaises(WriterQuotaExceeded, store.put, 0, "app:4", dict(b, pad="x" * 300), 5000)
        store.put(0, "app:own", a, expires=5000, own=True)  # our own records are not counted
        self.assertEqual(store.usage("A")["records"], 2)
        self.assertEqual(store.usage()["records"], 3)
        store.delete(0, "app:1")
        store.put(0, "app:5", a, expires=5000)
        self.assertEqual(store.usage("A")["records"], 2)

    def test_total_bytes_cap_and_usage_after_expiry_and_reopen(self) -> None:
        limits = DHTLimits(store_max_bytes=200)
        store = RecordStore(self.path, self.clock, limits)
        rec = {"writer_pubkey": "A", "blob": "x" * 60}
        store.put(0, "app:1", rec, expires=1500)
        store.put(0, "app:2", rec, expires=5000)
        self.assertRaises(InsufficientStorage, store.put, 0, "app:3", rec, 5000)
        self.clock.advance(600)  # app:1 expires: its bytes are released when the next put needs room
        store.put(0, "app:3", rec, expires=5000)
        used = store.usage()
        store.close()
        self.store = reopened = RecordStore(self.path, self.clock, limits)
        self.assertEqual(reopened.usage(), used)
        self.assertEqual(reopened.usage("A"), used)

    def test_a_store_file_from_before_quotas_is_migrated(self) -> None:
        import sqlite3
        self.store.close()
        path = self.mktemp()
        db = sqlite3.connect(path)
        db.executescript("CREATE TABLE records (layer INTEGER NOT NULL, key TEXT NOT NULL, record TEXT NOT NULL,"
                         " expires REAL NOT NULL, own INTEGER NOT NULL, stored_at REAL NOT NULL,"
                         " replicated_at REAL NOT NULL, PRIMARY KEY (layer, key));")
        db.execute("INSERT INTO records VALUES (0, 'app:x', ?, 5000, 0, 1000, 1000)", ('{"writer_pubkey": "W"}',))
        db.commit()
        db.close()
        self.store = RecordStore(path, self.clock)
        self.assertEqual(self.store.usage("W"), {"records": 1, "bytes": len('{"writer_pubkey": "W"}')})
        self.assertEqual(self.store.get(0, "app:x").record, {"writer_pubkey": "W"})

    def test_own_records_and_replication_due(self) -> None:
        self.store.put(0, "app:mine", REC, expires=9000, own=True)
        self.store.put(0, "app:theirs", REC, expires=9000)
        self.assertEqual([r.key for r in self.store.own_records()], ["app:mine"])
        self.assertEqual(self.store.due_for_replication(3600), [])
        self.clock.advance(3600)
        self.assertEqual([r.key for r in self.store.due_for_replication(3600)], ["app:theirs"])
        self.assertEqual([r.key for r in self.store.due_for_replication(3600, own=True)], ["app:mine"])
        self.assertEqual(self.store.count_due(3600), 1)
        self.store.mark_replicated(0, "app:theirs")
        self.assertEqual(self.store.due_for_replication(3600), [])

    def test_due_records_come_longest_waiting_first_and_limited(self) -> None:
        for i in range(5):
            self.store.put(0, f"app:{i}", REC, expires=99_000)
            self.clock.advance(10)
        self.store.mark_replicated(0, "app:0")
        self.clock.advance(3600)
        self.assertEqual([r.key for r in self.store.due_for_replication(3600, limit=3)], ["app:1", "app:2", "app:3"])

    def test_delete_and_json_safe_dump(self) -> None:
        self.store.put(0, "app:x", REC, expires=2000)
        self.assertEqual(self.store.dump()[0]["record"], REC)
        self.assertTrue(self.store.delete(0, "app:x"))
        self.assertFalse(self.store.delete(0, "app:x"))
        self.assertEqual(self.store.count(), 0)
