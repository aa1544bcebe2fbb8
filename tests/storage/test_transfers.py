"""Tests for bitnode.storage.transfers: slots and queue, listings, stop, resume after a crash."""

from __future__ import annotations

import os

from twisted.trial import unittest

from bitnode.errors import Conflict, Unavailable
from bitnode.storage.catalog import COMPLETE, UPLOADING
from bitnode.storage.transfers import TransferManager
from tests.storage.test_jobs import KEY_ID, REMOTE, SEG, Grid, Harness, download, read, write
from tests.storage.test_local_files import parts_beside


class QueueTests(unittest.TestCase):
    def setUp(self):
        self.grid = Grid()
        self.h = Harness(self, self.grid)
        self.h.slow(1.0)

    def test_one_upload_at_a_time_the_others_wait(self):
        first, _ = write(self, 2 * SEG)
        second, _ = write(self, SEG, seed=2)
        a = self.h.manager.start_upload(first, REMOTE)
        b = self.h.manager.start_upload(second, KEY_ID + ":b.bin")
        self.assertEqual((a.state, b.state), ("UPLOADING", "PENDING"))
        listed = self.h.manager.uploads()
        self.assertEqual([j["id"] for j in listed["running"]], [a.id])
        self.assertEqual([j["id"] for j in listed["pending"]], [b.id])
        self.assertEqual(self.h.manager.uploads(include_pending=False).keys(), {"running"})
        self.assertEqual(len(self.h.manager.transfers()), 2)
        self.h.clock.pump([1.0] * 2)
        self.assertEqual((a.state, b.state), ("DONE", "UPLOADING"))
        self.h.clock.pump([1.0] * 2)
        self.assertEqual(b.state, "DONE")
        self.assertEqual([j["id"] for j in self.h.manager.recent("upload")], [b.id, a.id])

    def test_same_remote_path_twice_conflicts(self):
        source, _ = write(self, SEG)
        self.h.manager.start_upload(source, REMOTE)
        self.assertRaises(Conflict, self.h.manager.start_upload, source, REMOTE)
        self.h.clock.pump([1.0] * 2)
        self.h.manager.start_download(REMOTE, self.mktemp())
        self.assertRaises(Conflict, self.h.manager.start_download, REMOTE, self.mktemp())

    def test_cancel_a_queued_upload(self):
        first, _ = write(self, 2 * SEG)
        second, _ = write(self, SEG, seed=2)
        self.h.manager.start_upload(first, REMOTE)
        b = self.h.manager.start_upload(second, KEY_ID + ":b.bin")
        self.h.manager.cancel("upload", KEY_ID + ":b.bin")
        self.assertEqual(b.state, "CANCELLED")
        self.h.clock.pump([1.0] * 3)
        self.assertEqual([v["remote_path"] for v in self.h.catalog.versions(COMPLETE)], [REMOTE])

    def test_history_is_bounded(self):
        manager = TransferManager(self.h.ctx, history_size=2)
        for seed in range(3):
            source, _ = write(self, 10, seed=seed)
            manager.start_upload(source, f"{KEY_ID}:f{seed}")
            self.h.clock.pump([1.0] * 2)
        self.assertEqual([j["remote_path"] for j in manager.recent()], [f"{KEY_ID}:f2", f"{KEY_ID}:f1"])


    def test_folder_upload_figures_count_each_file_from_its_own_start(self):
        # A folder is one job per file, queued at once: a file that waited for its slot must not
        # count the wait (nor the other files' bytes) in its speed.
        sizes = [10, 10, 5 * SEG, 10]
        t0 = self.h.clock.seconds()
        jobs = []
        for seed, size in enumerate(sizes):
            source, _ = write(self, size, seed=seed)
            jobs.append(self.h.manager.start_upload(source, f"{KEY_ID}:folder/f{seed}"))
        self.h.clock.pump([1.0] * 10)
        infos = [job.info() for job in jobs]
        self.assertEqual([i["state"] for i in infos], ["DONE"] * 4)
        self.assertEqual([i["created"] for i in infos], [t0] * 4)
        self.assertEqual([i["started"] - t0 for i in infos], [0.0, 1.0, 2.0, 7.0])
        self.assertEqual([i["finished"] - t0 for i in infos], [1.0, 2.0, 7.0, 8.0])
        # One 1 s store per segment, one segment in flight: every file moves at one segment a second.
        self.assertEqual([i["speed"] for i in infos], [10.0, 10.0, float(SEG), 10.0])
        self.assertEqual([(i["bytes_done"], i["bytes_total"], i["progress"]) for i in infos],
                         [(size, size, 1.0) for size in sizes])

class StopAndResumeTests(unittest.TestCase):
    """A 'node' is a Harness; a restart is a new Harness on the same catalog file and the same grid."""

    def setUp(self):
        self.grid = Grid()
        self.catalog_path = os.path.join(self.mktemp() + ".sqlite")
        self.h = Harness(self, self.grid, self.catalog_path)
        self.h.slow(1.0)
        self.source, self.data = write(self, 4 * SEG + 5)

    def start_half_upload(self):
        job = self.h.manager.start_upload(self.source, REMOTE)
        self.h.clock.pump([1.0] * 2)
        self.assertEqual(self.h.catalog.resume_point(job.version_id), 2)
        return job

    def restart(self):
        self.h = Harness(self, self.grid, self.catalog_path)
        self.h.slow(1.0)
        return self.h

    def test_crash_mid_upload_resumes_without_resending_acknowledged_segments(self):
        version = self.start_half_upload().version_id
        # Crash: the old node simply vanishes (its segment 2 was sent, never acknowledged).
        h = self.restart()
        report = self.successResultOf(_run(h.manager.resume_interrupted()))
        self.assertEqual([(r["version_id"], r["action"]) for r in report], [(version, "resumed")])
        job = h.manager.jobs("upload")[0]
        self.assertEqual(job.info()["bytes_done"], 2 * SEG)  # known before the first new segment
        h.clock.pump([1.0] * 4)
        self.assertEqual(job.state, "DONE")
        self.assertEqual(job.result["resumed_from_segment"], 2)
        self.assertEqual(h.store_calls(), 3 * 5)  # segments 2, 3, 4
        self.assertEqual(h.catalog.version(version)["state"], COMPLETE)
        target = self.mktemp()
        download(h, target)
        self.assertEqual(read(target), self.data)

    def test_file_changed_while_down_gets_a_new_version(self):
        old = self.start_half_upload().version_id
        _, changed = write(self, 3 * SEG, seed=9)
        with open(self.source, "wb") as handle:
            handle.write(changed)
        h = self.restart()
        report = self.successResultOf(_run(h.manager.resume_interrupted()))
        self.assertEqual(report[0]["action"], "new version")
        h.clock.pump([1.0] * 6)
        versions = h.catalog.versions()
        self.assertEqual(len(versions), 1)
        self.assertNotEqual(versions[0]["version_id"], old)
        self.assertEqual(versions[0]["state"], COMPLETE)
        self.assertFalse(any(p.startswith(old) for p in self.grid.blocks(0)))
        target = self.mktemp()
        download(h, target)
        self.assertEqual(read(target), changed)

    def test_file_gone_while_down_abandons_the_version(self):
        old = self.start_half_upload().version_id
        os.unlink(self.source)
        h = self.restart()
        report = self.successResultOf(_run(h.manager.resume_interrupted()))
        self.assertEqual([(r["version_id"], r["remote_path"], r["action"]) for r in report],
                         [(old, REMOTE, "abandoned")])
        h.clock.pump([1.0] * 2)
        self.assertEqual(h.catalog.versions(), [])
        # No half-made entry is left: the file item its first upload made goes with it (the folder stays).
        self.assertFalse(h.catalog.exists(KEY_ID, "docs/a.bin"))
        self.assertTrue(h.catalog.exists(KEY_ID, "docs"))
        # The history says what happened to it.
        ended = h.manager.recent("upload")[0]
        self.assertEqual((ended["state"], ended["after_restart"], ended["version_id"]), ("FAILED", True, None))
        self.assertIn("is gone or cannot be read since: the unfinished version was abandoned", ended["error"])

    def test_stop_pauses_uploads_and_cancels_downloads_then_restart_resumes(self):
        other, other_data = write(self, 2 * SEG, seed=3)
        self.h.manager.max_downloads = lambda: 1
        done = self.h.manager.start_upload(other, KEY_ID + ":other")
        self.h.clock.pump([1.0] * 2)
        self.assertEqual(done.state, "DONE")
        job = self.start_half_upload()
        target = self.mktemp()
        down = self.h.manager.start_download(KEY_ID + ":other", target)
        stopped = self.h.manager.stop()
        self.assertEqual(job.state, "PAUSED")
        self.assertEqual(down.state, "CANCELLED")
        self.successResultOf(stopped)
        self.assertEqual(parts_beside(target), [])
        self.assertEqual(job.active_timers(), [])
        self.assertEqual(self.h.registry.list(), [])
        self.assertRaises(Unavailable, self.h.manager.start_upload, other, KEY_ID + ":x")
        self.assertEqual(self.h.catalog.version(job.version_id)["state"], UPLOADING)
        h = self.restart()
        self.successResultOf(_run(h.manager.resume_interrupted()))
        h.clock.pump([1.0] * 4)
        self.assertEqual(h.catalog.version(job.version_id)["state"], COMPLETE)


def _run(coroutine):
    from twisted.internet import defer

    return defer.Deferred.fromCoroutine(coroutine)
