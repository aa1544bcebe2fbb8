"""Tests for bitnode.storage.repack: a pack of mostly deleted files is rewritten with the files left, on the
in-memory grid with a Clock; what it frees, and what a failure leaves (the old pack still serves)."""

from __future__ import annotations

import os

from twisted.trial import unittest

from bitnode.errors import Conflict
from bitnode.storage import pack_format, repack
from bitnode.storage.pack_format import PackFormatError, PackSource
from tests.storage.test_folders import describe
from tests.storage.test_jobs import KEY_ID
from tests.storage.test_packs import PackHarnessMixin, make_small_files


class RepackTests(PackHarnessMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = make_small_files(self, 30, 1500)
        self.upload(self.root)
        [self.pack] = self.h.catalog.packs()
        # Two thirds of the files go: the pack is mostly dead bytes.
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".bin") and int(name[1:5]) % 3:
                self.h.catalog.delete(KEY_ID, f"photos/{name}")
                os.unlink(os.path.join(self.root, name))
        self.repacker = repack.Repacker(self.h.ctx, busy=lambda: False, below=lambda: 0.5)

    def blocks_of(self, pack_id: str) -> int:
        return sum(1 for i in range(5) for path in self.grid.blocks(i) if path.startswith(pack_id))

    def test_a_mostly_dead_pack_is_rewritten_with_the_files_left_and_the_old_one_goes(self):
        left = self.h.catalog.packs()[0]
        self.assertLess(left["live_bytes"], 0.5 * left["size"])
        self.assertEqual(repack.repack_candidates([left], 0.5), [left])
        self.successResultOf(self.repacker.start())
        [new] = self.h.catalog.packs()
        self.assertNotEqual(new["pack_id"], self.pack["pack_id"])
        self.assertEqual((new["files"], new["live_bytes"]), (left["files"], left["live_bytes"]))
        self.assertLess(new["size"], left["size"])
        self.assertEqual(self.blocks_of(self.pack["pack_id"]), 0)  # freed on every supplier
        self.assertEqual(self.blocks_of(new["pack_id"]), 5)
        status = self.repacker.status()
        self.assertEqual((status["packs_repacked"], status["bytes_reclaimed"], status["last_error"]),
                         (1, left["size"] - new["size"], ""))
        destination = os.path.abspath(self.mktemp())
        os.makedirs(destination)
        restored = self.download(destination)
        self.assertEqual(restored["skipped"], [])
        got, want = describe(os.path.join(destination, "photos")), describe(self.root)
        self.assertEqual({k: v for k, v in got.items() if v[0] == "file"},
                         {k: v for k, v in want.items() if v[0] == "file"})
        self.assertEqual(os.listdir(self.temp), [])

    def test_a_repack_that_fails_leaves_the_old_pack_serving_every_file(self):
        def broken(*args, **kw):
            raise Conflict("the disk is full")

        self.patch(self.h.catalog, "finish_repack", broken)
        self.successResultOf(self.repacker.start())
        self.assertIn("the disk is full", self.repacker.status()["last_error"])
        [still] = self.h.catalog.packs()
        self.assertEqual(still["pack_id"], self.pack["pack_id"])
        self.assertEqual(self.blocks_of(self.pack["pack_id"]), 5)
        destination = os.path.abspath(self.mktemp())
        os.makedirs(destination)
        self.assertEqual(self.download(destination)["skipped"], [])
        self.assertEqual(os.listdir(self.temp), [])

    def test_repacking_off_or_a_pack_mostly_alive_is_left_alone(self):
        off = repack.Repacker(self.h.ctx, busy=lambda: False, below=lambda: 0.0)
        self.successResultOf(off.start())
        self.assertEqual(off.status()["packs_repacked"], 0)
        self.assertEqual(repack.repack_candidates(self.h.catalog.packs(), 0.2), [])
        busy = repack.Repacker(self.h.ctx, busy=lambda: True, below=lambda: 0.5)
        self.successResultOf(busy.start())
        self.assertEqual(busy.status()["packs_repacked"], 0)


class WriteRepackTests(unittest.TestCase):
    def test_only_files_where_the_index_says_are_copied(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        sources = []
        for name, data in (("a", b"aaa"), ("b", b"bbbb"), ("c", b"cc")):
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(data)
            sources.append(PackSource(name, os.path.join(folder, name)))
        src = os.path.join(folder, "old")
        pack_format.write_pack(src, sources)
        built = pack_format.write_repack(src, [("a", 0, 3), ("c", 7, 2)], os.path.join(folder, "new"))
        self.assertEqual([(f.entry.path, f.entry.offset) for f in built.files], [("a", 0), ("c", 3)])
        got = dict((e.path, d) for e, d in pack_format.iter_members(os.path.join(folder, "new"),
                                                                      pack_format.read_index(os.path.join(folder, "new"))))
        self.assertEqual(got, {"a": b"aaa", "c": b"cc"})
        self.assertRaises(PackFormatError, pack_format.write_repack, src, [("b", 0, 4)], os.path.join(folder, "x"))
