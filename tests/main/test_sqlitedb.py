"""The shared sqlite file helper (bitnode.main.sqlitedb)."""

from __future__ import annotations

import sqlite3

from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.main.sqlitedb import SqliteFile, StoreClosed

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS things (name TEXT PRIMARY KEY);
"""


class SqliteFileTests(unittest.TestCase):
    def setUp(self):
        self.path = self.mktemp()

    def test_a_file_is_in_wal_mode_with_its_format_recorded(self):
        db = SqliteFile(self.path, SCHEMA, 3, "things")
        self.addCleanup(db.close)
        self.assertEqual(db.db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(db.db.execute("PRAGMA synchronous").fetchone()[0], 2)  # FULL
        self.assertEqual(db.db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()[0], "3")

    def test_a_transaction_commits_or_rolls_back_whole(self):
        db = SqliteFile(self.path, SCHEMA, 1, "things")
        self.addCleanup(db.close)
        with db.transaction() as conn:
            conn.execute("INSERT INTO things VALUES ('a')")
        with self.assertRaises(sqlite3.IntegrityError):
            with db.transaction() as conn:
                conn.execute("INSERT INTO things VALUES ('b')")
                conn.execute("INSERT INTO things VALUES ('a')")
        self.assertEqual([r[0] for r in db.db.execute("SELECT name FROM things")], ["a"])

    def test_another_format_is_refused_and_the_file_closed(self):
        SqliteFile(self.path, SCHEMA, 1, "things").close()
        err = self.assertRaises(BadRequest, SqliteFile, self.path, SCHEMA, 2, "things")
        self.assertIn("things", str(err))
        self.assertIn("format 1", str(err))

    def test_a_call_that_reaches_a_closed_file_gets_store_closed_not_a_sqlite_error(self):
        # Work queued in the thread pool before its service stopped can run after the file closed.
        db = SqliteFile(self.path, SCHEMA, 1, "things")
        db.close()
        self.assertTrue(db.closed)
        with self.assertRaises(StoreClosed):
            with db.transaction() as conn:
                conn.execute("INSERT INTO things VALUES ('late')")
        with self.assertRaises(StoreClosed):
            with db.locked() as conn:
                conn.execute("SELECT * FROM things")
        self.assertEqual(StoreClosed("x").http_code, 503)
