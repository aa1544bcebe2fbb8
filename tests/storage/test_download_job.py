"""Tests for bitnode.storage.download_job: a download killed or stopped mid-way goes on (or is cleaned up) at restart.

A 'node' is a Harness (tests/storage/test_jobs.py) with a download journal
file; a crash is a new Harness on the same catalog file, journal file and grid
while the old one simply vanishes (its part file stays where it was).
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.storage.download_journal import DownloadJournal
from tests.storage.test_jobs import KEY_ID, REMOTE, SEG, Grid, Harness, read, sync_thread, write
from tests.storage.test_local_files import parts_beside


class ResumeTests(unittest.TestCase):
    def setUp(self):
        self.grid = Grid()
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.catalog_path = os.path.join(base, "catalog.sqlite")
        self.journal_path = os.path.join(base, "downloads.json")
        self.h = self.node()
        source, self.data = write(self, 6 * SEG + 5)
        self.assertEqual(self.h.manager.start_upload(source, REMOTE).state, "DONE")
        self.target = os.path.join(base, "out", "a.bin")

    def node(self) -> Harness:
        journal = DownloadJournal(self.journal_path, sync_thread)
        h = Harness(self, self.grid, self.catalog_path, download_journal=journal,
                    download_checkpoint=lambda: 2 * SEG)
        h.journal = journal
        return h

    def restart(self) -> tuple[Harness, list[dict]]:
        h = self.node()
        entries = self.successResultOf(h.journal.load())
        report = self.successResultOf(defer.Deferred.fromCoroutine(
            h.manager.resume_downloads(entries, lambda entry: entry["remote_path"].startswith(KEY_ID))))
        return h, report

    def fetches(self, h: Harness) -> int:
        return sum(server.calls["fetch_block"] for server in h.servers)

    def crash_after(self, seconds: int):
        """Start the download on slow suppliers (one segment a second) and 'kill' the node after ``seconds``."""
        self.h.slow(1.0)
        job = self.h.manager.start_download(REMOTE, self.target)
        self.h.clock.pump([1.0] * seconds)
        self.assertEqual(job.state, "DOWNLOADING")
        return job

    def test_a_download_killed_mid_way_goes_on_from_its_last_checkpoint(self):
        self.crash_after(5)  # 5 segments written, checkpoints after 2 and 4
        entry = next(iter(DownloadJournal(self.journal_path, sync_thread).load().result.values()))
        self.assertEqual((entry["segments_done"], entry["bytes_done"]), (4, 4 * SEG))
        self.assertEqual(len(parts_beside(self.target)), 1)
        h, report = self.restart()
        self.assertEqual([(r["action"], r["from_bytes"]) for r in report], [("resumed", 4 * SEG)])
        h.clock.pump([1.0] * 5)
        job = h.manager.recent("download")[0]
        self.assertEqual((job["state"], job["after_restart"]), ("DONE", True), job["error"])
        self.assertEqual(read(self.target), self.data)
        self.assertEqual(job["result"]["resumed_from_segment"], 4)
        self.assertEqual(self.fetches(h), 3 * 3)  # segments 4, 5 and 6 only, k=3 blocks each
        self.assertEqual(parts_beside(self.target), [])
        self.assertEqual(h.journal.entries(), {})

    def test_a_stopped_node_keeps_the_part_and_goes_on_where_it_stopped(self):
        job = self.crash_after(3)
        stopped = self.h.manager.stop()
        self.h.clock.pump([1.0] * 2)
        self.successResultOf(stopped)
        self.assertEqual(job.state, "PAUSED")
        self.assertEqual(len(parts_beside(self.target)), 1)
        h, report = self.restart()
        self.assertEqual(report[0]["from_bytes"], 3 * SEG)  # all it had written, synced at the stop
        h.clock.pump([1.0] * 5)
        self.assertEqual(read(self.target), self.data)
        self.assertEqual(self.fetches(h), 4 * 3)

    def test_a_queued_download_is_started_after_a_crash(self):
        source, other_data = write(self, SEG + 1, seed=7)
        self.assertEqual(self.h.manager.start_upload(source, KEY_ID + ":docs/b.bin").state, "DONE")
        self.h.slow(1.0)
        self.h.manager.max_downloads = lambda: 1
        other = os.path.join(os.path.dirname(self.target), "b.bin")
        running = self.h.manager.start_download(REMOTE, self.target)
        queued = self.h.manager.start_download(KEY_ID + ":docs/b.bin", other)
        self.assertEqual((running.state, queued.state), ("DOWNLOADING", "PENDING"))
        h, report = self.restart()
        self.assertEqual(sorted(r["action"] for r in report), ["resumed", "resumed"])
        h.clock.pump([1.0] * 12)
        self.assertEqual((read(self.target), read(other)), (self.data, other_data))

    def test_a_part_whose_version_is_gone_is_removed_and_the_history_says_why(self):
        self.crash_after(3)
        self.h.catalog.delete(KEY_ID, "docs")
        h, report = self.restart()
        h.clock.pump([1.0] * 2)
        ended = h.manager.recent("download")[0]
        self.assertEqual((ended["state"], ended["after_restart"]), ("FAILED", True))
        self.assertIn("in the catalog", ended["error"])
        self.assertEqual(parts_beside(self.target), [])
        self.assertFalse(os.path.exists(self.target))
        self.assertEqual(h.journal.entries(), {})

    def test_a_download_not_resumed_here_is_cleaned_up(self):
        self.crash_after(3)
        h = self.node()
        entries = self.successResultOf(h.journal.load())
        report = self.successResultOf(defer.Deferred.fromCoroutine(
            h.manager.resume_downloads(entries, lambda entry: False)))
        self.assertEqual([r["action"] for r in report], ["cleaned up"])
        self.assertEqual(parts_beside(self.target), [])
        self.assertEqual(h.manager.recent("download")[0]["state"], "FAILED")
        self.assertEqual(h.journal.entries(), {})

    def test_a_part_cut_short_or_gone_starts_over(self):
        self.crash_after(5)
        part = os.path.join(os.path.dirname(self.target), parts_beside(self.target)[0])
        with open(part, "r+b") as handle:
            handle.truncate(SEG)  # less than the checkpoint says is on disk
        h, _ = self.restart()
        h.clock.pump([1.0] * 9)
        job = h.manager.recent("download")[0]
        self.assertEqual((job["state"], job["result"]["resumed_from_segment"]), ("DONE", 0))
        self.assertEqual(read(self.target), self.data)
        self.assertEqual(parts_beside(self.target), [])

    def test_a_cancelled_or_finished_download_leaves_no_journal_entry(self):
        self.h.slow(1.0)
        job = self.h.manager.start_download(REMOTE, self.target)
        self.h.clock.pump([1.0] * 2)
        self.assertEqual(len(self.h.journal.entries()), 1)
        self.h.manager.cancel("download", REMOTE)
        self.h.clock.pump([1.0] * 2)
        self.assertEqual(job.state, "CANCELLED")
        self.assertEqual((self.h.journal.entries(), parts_beside(self.target)), ({}, []))
        done = self.h.manager.start_download(REMOTE, self.target)
        self.h.clock.pump([1.0] * 9)
        self.assertEqual(done.state, "DONE")
        self.assertEqual(DownloadJournal(self.journal_path, sync_thread).load().result, {})

    def test_a_resumed_download_waits_for_its_suppliers_instead_of_failing(self):
        self.crash_after(5)
        h = self.node()
        for server in h.servers:
            server.go_offline()  # the node just started: nobody is connected yet
        entries = self.successResultOf(h.journal.load())
        self.successResultOf(defer.Deferred.fromCoroutine(h.manager.resume_downloads(entries, lambda e: True)))
        job = h.manager.jobs("download")[0]
        self.assertEqual(job.state, "WAITING")
        self.assertIn("timer-1min", job.active_timers())
        self.assertEqual(len(parts_beside(self.target)), 1)  # kept at its checkpoint
        self.assertEqual(len(h.journal.entries()), 1)
        h.clock.advance(60)  # still nobody: it waits again
        self.assertEqual(job.state, "WAITING")
        for server in h.servers:
            server.heal()
        h.manager.suppliers_changed()
        self.assertEqual(job.state, "DONE", job.error)
        self.assertEqual(read(self.target), self.data)
        self.assertEqual(job.result["resumed_from_segment"], 4)
        self.assertEqual((parts_beside(self.target), h.journal.entries()), ([], {}))

    def test_a_download_the_user_waits_on_fails_at_once_and_leaves_nothing(self):
        for server in self.h.servers:
            server.go_offline()
        job = self.h.manager.start_download(REMOTE, self.target)
        self.assertEqual(job.state, "FAILED")
        self.assertEqual((parts_beside(self.target), self.h.journal.entries()), ([], {}))

    def test_a_share_download_is_journaled_but_a_stop_cancels_it(self):
        journal = DownloadJournal(self.journal_path, sync_thread)
        h = Harness(self, self.grid, self.catalog_path, download_journal=journal, resumable_downloads=False)
        h.slow(1.0)
        job = h.manager.start_download(REMOTE, self.target)
        h.clock.pump([1.0] * 2)
        self.assertEqual(len(journal.entries()), 1)  # a crash now: the next start removes its part
        stopped = h.manager.stop()
        h.clock.pump([1.0] * 2)
        self.successResultOf(stopped)
        self.assertEqual(job.state, "CANCELLED")
        self.assertEqual((parts_beside(self.target), journal.entries()), ([], {}))
