"""Tests for bitnode.storage.download_journal: the on-disk list of downloads under way."""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from bitnode.storage.download_journal import DownloadJournal
from tests.storage.test_jobs import sync_thread

ENTRY = {"remote_path": "master$a@h_1:x.bin", "version_id": "V1", "local_path": "/tmp/x.bin", "root": None,
         "part_name": "x.bin.0123abcd.part", "segments_done": 2, "bytes_done": 200, "started": 1.0}


class JournalTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.join(os.path.abspath(self.mktemp()) + ".json")

    def journal(self) -> DownloadJournal:
        return DownloadJournal(self.path, sync_thread)

    def test_entries_are_on_disk_before_the_call_returns_and_dropped_the_same_way(self):
        journal = self.journal()
        self.assertEqual(self.successResultOf(journal.load()), {})
        self.successResultOf(journal.put(ENTRY))
        self.assertEqual(self.successResultOf(self.journal().load()), {ENTRY["part_name"]: ENTRY})
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.successResultOf(journal.drop(ENTRY["part_name"]))
        self.successResultOf(journal.drop("never there"))
        self.assertEqual(self.successResultOf(self.journal().load()), {})

    def test_a_journal_that_does_not_read_is_set_aside_and_counts_as_empty(self):
        for bad in (b"\xff not json", json.dumps({"format": 9, "downloads": {}}).encode(),
                    json.dumps({"format": 1, "downloads": {"other.part": ENTRY}}).encode(),
                    json.dumps({"format": 1, "downloads": {ENTRY["part_name"]: dict(ENTRY, bytes_done="x")}}).encode()):
            with open(self.path, "wb") as handle:
                handle.write(bad)
            self.assertEqual(self.successResultOf(self.journal().load()), {})
            with open(self.path + ".unreadable", "rb") as handle:
                self.assertEqual(handle.read(), bad)
