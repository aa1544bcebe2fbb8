"""relayout: versions stored in an old k-of-n are re-uploaded from their blocks in the current layout.

On the in-memory grid of tests/storage/test_jobs.py: files uploaded 3-of-5, then the node
keeps 3 suppliers (the last two positions retiring: still read) and 2-of-3 is the layout.
"""

from __future__ import annotations

import os

from twisted.trial import unittest

from bitnode.storage.catalog import COMPLETE
from bitnode.storage.job_context import Placement
from bitnode.storage.ports import version_prefix
from bitnode.storage.relayout import PENDING_META, Relayout
from tests.storage.test_jobs import CUSTOMER, REMOTE, SEG, Grid, Harness, download, read, write


class RelayoutTests(unittest.TestCase):
    def setUp(self):
        self.grid = Grid(5)
        self.h = Harness(self, self.grid)
        self.source, self.data = write(self, 3 * SEG + 11)
        job = self.h.manager.start_upload(self.source, REMOTE)
        self.h.clock.pump([1.0] * 5)
        self.old = self.h.catalog.version(job.version_id)
        self.assertEqual((self.old["state"], self.old["k"], self.old["n"]), (COMPLETE, 3, 5))
        self.temp = self.mktemp()
        os.makedirs(self.temp)
        self.busy = False
        self.changed = 0
        self.deletes_left: list[str] = []

    def keep_three(self) -> None:
        """The node now has 3 positions; the suppliers of positions 3 and 4 are retiring holders."""
        servers = self.h.servers
        self.h.ctx.placement = lambda: Placement(tuple(self.grid.ids[:3]), tuple(servers[:3]),
                                                 ((3, self.grid.ids[3], servers[3]), (4, self.grid.ids[4], servers[4])))

    def relayout(self) -> Relayout:
        def changed():
            self.changed += 1

        return Relayout(self.h.ctx, self.temp, busy=lambda: self.busy, on_changed=changed,
                        remember_deletes=self.deletes_left.extend)

    def run_pass(self, relayout: Relayout) -> dict:
        d = relayout.start()
        self.h.clock.pump([1.0] * 20)
        self.successResultOf(d)
        return relayout.status()

    def test_fewer_suppliers_re_lays_out_every_version_from_its_blocks(self):
        self.keep_three()
        os.remove(self.source)  # the local file is gone: the blocks are the source
        status = self.run_pass(self.relayout())
        self.assertEqual((status["versions_done"], status["last_error"], status["running"]), (1, "", False))
        (new,) = self.h.catalog.versions()
        self.assertEqual((new["state"], new["k"], new["n"], new["size"]), (COMPLETE, 2, 3, len(self.data)))
        self.assertEqual((new["created"], new["completed"]), (self.old["created"], self.old["completed"]))
        self.assertEqual((new["mode"], new["mtime_ns"]), (self.old["mode"], self.old["mtime_ns"]))  # what a restore sets
        self.assertIsNotNone(new["mode"])
        self.assertNotEqual(new["version_id"], self.old["version_id"])
        self.assertEqual(new["suppliers"], self.grid.ids[:3])
        # old blocks: deleted on the current suppliers, left on the retiring ones (their CancelService does it)
        old_prefix = version_prefix(self.old["version_id"])
        for position in range(5):
            has_old = any(p.startswith(old_prefix) for p in self.grid.blocks(position))
            self.assertEqual(has_old, position >= 3, position)
        self.assertEqual((self.changed, self.deletes_left, os.listdir(self.temp)), (1, [], []))
        # 2-of-3 now: the retiring holders and one more supplier may go
        for position in (3, 4, 0):
            self.h.servers[position].go_offline()
        target = self.mktemp()
        self.assertEqual(download(self.h, target).state, "DONE")
        self.assertEqual(read(target), self.data)
        self.assertEqual(self.run_pass(self.relayout())["versions_done"], 0)  # nothing left to do

    def test_more_suppliers_re_lay_out_to_the_wider_layout(self):
        self.h.ctx.data_blocks = lambda n: 4  # 4-of-5 asked for
        status = self.run_pass(self.relayout())
        self.assertEqual(status["versions_done"], 1)
        (new,) = self.h.catalog.versions()
        self.assertEqual((new["k"], new["n"]), (4, 5))
        target = self.mktemp()
        self.h.servers[2].go_offline()
        self.assertEqual(download(self.h, target).state, "DONE")
        self.assertEqual(read(target), self.data)

    def test_versions_keep_their_order(self):
        source, newer = write(self, SEG + 5, seed=2)
        self.h.manager.start_upload(source, REMOTE)
        self.h.clock.pump([1.0] * 5)
        self.keep_three()
        self.assertEqual(self.run_pass(self.relayout())["versions_done"], 2)
        latest = self.h.catalog.latest_complete("master$" + CUSTOMER, "docs/a.bin")
        self.assertEqual((latest["size"], latest["n"]), (len(newer), 3))

    def test_waits_while_an_upload_runs_and_until_every_position_has_a_supplier(self):
        self.keep_three()
        self.busy = True
        status = self.run_pass(self.relayout())
        self.assertEqual((status["versions_done"], status["versions_pending"], status["waiting"]),
                         (0, 1, "an upload is running"))
        self.busy = False
        servers = self.h.servers
        self.h.ctx.placement = lambda: Placement(("", *self.grid.ids[1:3]), (None, *servers[1:3]))
        self.assertIn("every position", self.run_pass(self.relayout())["waiting"])
        self.assertEqual(self.h.catalog.versions()[0]["version_id"], self.old["version_id"])

    def test_a_copy_a_crash_left_half_done_is_abandoned_then_made_again(self):
        self.keep_three()
        self.h.catalog.begin_copy_version(self.old["version_id"], "F20250101T000000000-deadbeef", 2, 3,
                                          b"w" * 16, self.grid.ids[:3])
        self.h.catalog.set_meta(PENDING_META, '{"%s": "F20250101T000000000-deadbeef"}' % self.old["version_id"])
        with open(os.path.join(self.temp, "relayout-" + self.old["version_id"]), "wb") as handle:
            handle.write(b"plaintext left by a crash")
        status = self.run_pass(self.relayout())
        self.assertEqual(status["versions_done"], 1)
        (new,) = self.h.catalog.versions()
        self.assertNotEqual(new["version_id"], "F20250101T000000000-deadbeef")
        self.assertEqual((self.h.catalog.get_meta(PENDING_META), os.listdir(self.temp)), ("{}", []))

    def test_a_version_that_cannot_be_read_is_left_as_it_is_and_tried_again(self):
        self.keep_three()
        for position in (0, 1, 3):
            self.h.servers[position].go_offline()  # 2 of 5 left: below k=3
        status = self.run_pass(self.relayout())
        self.assertEqual(status["versions_done"], 0)
        self.assertTrue(status["last_error"])
        self.assertEqual([v["version_id"] for v in self.h.catalog.versions()], [self.old["version_id"]])
        self.assertEqual(os.listdir(self.temp), [])
        for position in (0, 1, 3):
            self.h.servers[position].go_online()
        self.assertEqual(self.run_pass(self.relayout())["versions_done"], 1)
