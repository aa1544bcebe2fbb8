"""Tests for bitnode.storage.packs: a folder of small files goes up in packs and comes back byte for byte.

On the in-memory grid with a Clock (tests.storage.test_jobs.Harness): what a
folder upload costs in blocks, key wraps and catalog backups; reading one
file, a folder, and after a re-layout; deleting; a pack cut short by a crash.
"""

from __future__ import annotations

import os
import random

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.storage import folders, pack_format, packs
from bitnode.storage.catalog import COMPLETE, UPLOADING, Catalog, PackMember
from bitnode.storage.job_context import new_version_id
from bitnode.storage.ports import SegmentMeta
from tests.storage.test_folders import describe
from tests.storage.test_jobs import KEY_ID, SEG, Grid, Harness, read

SUPPLIERS = [f"s{i}@id.example.net_8084" for i in range(5)]


def make_small_files(case: unittest.TestCase, count: int, size: int, big: int = 0) -> str:
    """A folder of ``count`` files of about ``size`` bytes (some in a sub-folder), plus one of ``big`` bytes."""
    root = os.path.join(os.path.abspath(case.mktemp()), "photos")
    os.makedirs(os.path.join(root, "sub"))
    rnd = random.Random(count)
    for i in range(count):
        name = f"sub/f{i:04d}.bin" if i % 3 == 0 else f"f{i:04d}.bin"
        path = os.path.join(root, name)
        with open(path, "wb") as handle:
            handle.write(rnd.randbytes(rnd.randrange(0, size + 1)))
        os.chmod(path, 0o600 if i % 2 else 0o644)
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    if big:
        with open(os.path.join(root, "big.bin"), "wb") as handle:
            handle.write(rnd.randbytes(big))
    return root


def run(d):
    return defer.Deferred.fromCoroutine(d)


class PackHarnessMixin:
    file_max = 4096
    pack_max = SEG

    def setUp(self):
        self.grid = Grid()
        self.wraps = 0
        self.backups = 0
        self.temp = os.path.abspath(self.mktemp())
        os.makedirs(self.temp)

        def backed_up(on_failure=None):
            self.backups += 1
            return defer.succeed(None)

        self.h = Harness(self, self.grid, temp_dir=self.temp, pack_limits=lambda: (self.file_max, self.pack_max),
                         catalog_backed_up=backed_up)
        wrap = self.h.ctx.wrap_key

        def counting_wrap(key_id, secret):
            self.wraps += 1
            return wrap(key_id, secret)

        self.h.ctx.wrap_key = counting_wrap

    def upload(self, root: str) -> dict:
        return self.successResultOf(run(folders.upload_folder(self.h.manager, KEY_ID, "photos", root, wait=True)))

    def download(self, destination: str) -> dict:
        return self.successResultOf(run(folders.download_folder(self.h.manager, KEY_ID, "photos", destination,
                                                                wait=True)))


class FolderTests(PackHarnessMixin, unittest.TestCase):
    def test_small_files_go_up_in_a_few_packs_and_come_back_identical(self):
        root = make_small_files(self, 120, 3000, big=SEG + 5)
        uploaded = self.upload(root)
        self.assertEqual(uploaded["skipped"], [])
        self.assertEqual(uploaded["files"], 121)
        found = self.h.catalog.packs()
        self.assertEqual(uploaded["packs"], len(found))
        self.assertTrue(2 <= len(found) <= 4, found)
        self.assertEqual(sum(p["files"] for p in found), 120)
        # Blocks: each pack's segments, and the big file's; not one segment per small file.
        segments = sum(-(-p["size"] // SEG) for p in found) + 2
        self.assertEqual(self.h.store_calls(), 5 * segments)
        self.assertEqual(self.wraps, len(found) + 1)  # one key per pack, one for the big file
        info = self.h.catalog.get(KEY_ID, "photos/f0001.bin")
        version = info["versions"][0]
        self.assertEqual((version["state"], version["pack"]["pack_id"] in {p["pack_id"] for p in found}),
                         (COMPLETE, True))
        self.assertEqual(self.h.catalog.get(KEY_ID, "photos")["versions"], [])
        self.assertEqual(len(self.h.catalog.get(KEY_ID, "photos")["packs"]), len(found))
        self.assertTrue(all(t["state"] == "DONE" for t in uploaded["transfers"]))
        listed = {r["path"]: r for r in self.h.catalog.list(KEY_ID, "photos", False)}
        self.assertEqual(listed["photos/sub"]["size"], 0)  # a folder has no size of its own, packs or not
        self.assertEqual(listed["photos/f0001.bin"]["size"], os.path.getsize(os.path.join(root, "f0001.bin")))

        destination = os.path.abspath(self.mktemp())
        os.makedirs(destination)
        restored = self.download(destination)
        # Each pack is read once for all its files: k blocks per segment at most (hedged reads add a few).
        fetched = sum(server.calls["fetch_block"] for server in self.h.servers)
        self.assertLessEqual(fetched, 5 * segments)
        self.assertEqual(restored["skipped"], [])
        self.assertEqual(restored["files"], 121)
        self.assertEqual(restored["packs"], len(found))
        got = describe(os.path.join(destination, "photos"))
        want = describe(root)
        for name in want:
            if want[name][0] == "file":
                self.assertEqual(got[name], want[name], name)
        self.assertEqual(sorted(os.listdir(self.temp)), [])  # no pack left behind, read or written

    def test_one_file_of_a_pack_downloads_alone(self):
        root = make_small_files(self, 20, 2000)
        self.upload(root)
        target = os.path.join(os.path.abspath(self.mktemp()), "one.bin")
        job = self.h.manager.start_download(f"{KEY_ID}:photos/sub/f0003.bin", target)
        self.successResultOf(job.wait())
        self.assertEqual(read(target), read(os.path.join(root, "sub", "f0003.bin")))
        self.assertEqual(os.stat(target).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(target).st_mtime_ns, 1_600_000_000_000_000_003)

    def test_a_new_upload_of_the_folder_replaces_the_packed_versions_and_keeps_two(self):
        root = make_small_files(self, 10, 1000)
        for _ in range(3):
            self.upload(root)
            self.h.clock.advance(10)
        versions = self.h.catalog.get(KEY_ID, "photos/f0001.bin")["versions"]
        self.assertEqual(len(versions), 2)
        found = self.h.catalog.packs()
        self.assertEqual([p["files"] for p in found], [0, 10, 10])  # the oldest pack holds nothing now
        self.assertEqual(int(self.h.catalog.get_meta("packed-files-deleted")), 10)

    def test_a_folder_delete_takes_its_packs_with_it(self):
        root = make_small_files(self, 10, 1000)
        self.upload(root)
        ids = self.h.catalog.version_ids_under(KEY_ID, "photos")
        self.assertEqual(ids, [p["pack_id"] for p in self.h.catalog.packs()])  # files in packs hold no blocks
        self.h.catalog.delete(KEY_ID, "photos")
        self.assertEqual(self.h.catalog.packs(), [])

    def test_packing_off_uploads_each_file_alone(self):
        self.h.ctx.pack_limits = lambda: None
        root = make_small_files(self, 6, 100)
        uploaded = self.upload(root)
        self.assertEqual((uploaded["files"], uploaded["packs"]), (6, 0))
        self.assertEqual(self.h.catalog.packs(), [])


class CrashTests(PackHarnessMixin, unittest.TestCase):
    def test_a_pack_cut_short_is_abandoned_at_the_next_start_and_no_file_of_it_is_listed(self):
        cat = self.h.catalog
        pack_id = new_version_id(self.h.clock.seconds())
        cat.begin_pack(KEY_ID, "photos", pack_id, 10, SEG, 3, 5, b"k", SUPPLIERS)
        with open(os.path.join(self.temp, "pack-" + pack_id), "wb") as handle:
            handle.write(b"left by a crash")
        report = self.successResultOf(run(self.h.manager.resume_after_restart({}, lambda e: True)))
        self.assertEqual(report["counts"], {"uploads_abandoned": 1})
        self.assertIn("upload the folder again", report["uploads"][0]["error"])
        self.assertEqual(cat.packs(), [])
        self.assertEqual(os.listdir(self.temp), [])
        self.assertEqual([r["path"] for r in cat.list(KEY_ID, "photos")], [])


class CatalogPackTests(unittest.TestCase):
    def setUp(self):
        self.cat = Catalog(":memory:")
        self.addCleanup(self.cat.close)

    def pack(self, pack_id="P1", files=(("a", 3), ("b/c", 4)), folder="up"):
        size = sum(n for _, n in files) + 50
        self.cat.begin_pack(KEY_ID, folder, pack_id, size, SEG, 3, 5, b"wrapped", SUPPLIERS, now=1.0)
        self.cat.record_segment(pack_id, SegmentMeta(0, size, tuple(["ab" * 32] * 5), (0, 1, 2, 3, 4)))
        members, offset = [], 0
        for i, (name, length) in enumerate(files):
            members.append(PackMember(name, f"{pack_id}m{i}", offset, length, 0o644, 7))
            offset += length
        return self.cat.finish_pack(pack_id, members, now=2.0)

    def test_a_pack_and_its_files_are_recorded_in_one_step(self):
        outcome = self.pack()
        self.assertEqual(outcome, {"files": 2, "dropped": [], "skipped": []})
        version = self.cat.latest_complete(KEY_ID, "up/b/c")
        self.assertEqual(version["pack"], {"pack_id": "P1", "offset": 3, "length": 4, "pack_state": COMPLETE})
        self.assertEqual((version["k"], version["n"], version["size"], version["mode"]), (3, 5, 4, 0o644))
        self.assertEqual([m["path"] for m in self.cat.pack_members("P1")], ["up/a", "up/b/c"])

    def test_an_unfinished_pack_records_no_file(self):
        self.cat.begin_pack(KEY_ID, "up", "P1", 100, SEG, 3, 5, b"w", SUPPLIERS)
        from bitnode.errors import Conflict
        self.assertRaises(Conflict, self.cat.finish_pack, "P1", [PackMember("a", "M1", 0, 1)])
        self.assertFalse(self.cat.exists(KEY_ID, "up/a"))
        self.assertEqual(self.cat.version("P1")["state"], UPLOADING)

    def test_export_of_packs_is_format_3_and_imports_back(self):
        import json
        self.pack()
        doc = json.loads(self.cat.export())
        self.assertEqual(doc["format"], 3)
        self.assertEqual(doc["packed"], [["P1m0", "P1", 0, 3], ["P1m1", "P1", 3, 4]])
        other = Catalog(":memory:")
        self.addCleanup(other.close)
        other.import_(self.cat.export())
        self.assertEqual(other.latest_complete(KEY_ID, "up/b/c")["pack"]["offset"], 3)
        self.assertEqual(other.packs(), self.cat.packs())

    def test_a_catalog_without_packs_still_exports_format_2(self):
        import json
        self.cat.create(KEY_ID, "docs", as_folder=True)
        self.assertEqual(json.loads(self.cat.export())["format"], 2)

    def test_an_export_whose_packed_rows_lie_is_refused(self):
        import json

        from bitnode.errors import BadRequest
        from bitnode.storage.catalog_format import parse_export
        self.pack()
        good = json.loads(self.cat.export())
        for mutate in (lambda d: d["packed"][0].__setitem__(2, 10 ** 6),     # outside the pack
                       lambda d: d["packed"][0].__setitem__(3, 99),          # not the file's size
                       lambda d: d["packed"][0].__setitem__(1, "P9"),        # no such pack
                       lambda d: d["packed"].append(list(d["packed"][0])),   # twice
                       lambda d: d.__setitem__("format", 2)):                # a version of a folder in format 2
            doc = json.loads(json.dumps(good))
            mutate(doc)
            self.assertRaises(BadRequest, parse_export, json.dumps(doc).encode())

    def test_a_relaid_out_pack_takes_its_files_along(self):
        self.pack()
        self.cat.begin_copy_version("P1", "P2", 2, 4, b"new", SUPPLIERS[:4])
        size = self.cat.version("P1")["size"]
        self.cat.record_segment("P2", SegmentMeta(0, size, tuple(["cd" * 32] * 4), (0, 1, 2, 3)))
        self.cat.replace_version("P1", "P2")
        version = self.cat.latest_complete(KEY_ID, "up/a")
        self.assertEqual((version["pack"]["pack_id"], version["k"], version["n"], version["wrapped_key"]),
                         ("P2", 2, 4, b"new"))

    def test_files_leaving_a_pack_are_counted_and_a_pack_with_none_left_is_dead(self):
        self.pack()
        self.assertEqual(self.cat.delete(KEY_ID, "up/a"), [])  # no blocks of its own to delete
        self.assertEqual(self.cat.packs()[0]["files"], 1)
        self.cat.delete(KEY_ID, "up/b")
        self.assertEqual((self.cat.packs()[0]["files"], self.cat.packs()[0]["live_bytes"]), (0, 0))
        self.assertEqual(self.cat.get_meta("packed-files-deleted"), "2")
        self.assertEqual(packs.packs_figures(self.cat.packs(), 2)["dead_bytes"], self.cat.version("P1")["size"])


class PlanTests(unittest.TestCase):
    def test_small_files_fill_packs_in_order_and_big_ones_go_alone(self):
        class F:
            def __init__(self, size):
                self.size = size
                self.relative = "x"

        overhead = pack_format.index_entry_bytes("x")
        files = [F(s) for s in (10, 10, 200, 5, 10, 90)]
        groups, alone = packs.plan_packs(files, 100, pack_format.INDEX_FIXED_BYTES + 25 + 3 * overhead)
        self.assertEqual([[f.size for f in g] for g in groups], [[10, 10, 5], [10], [90]])
        self.assertEqual([f.size for f in alone], [200])


class FileInfoTests(PackHarnessMixin, unittest.TestCase):
    def test_file_info_of_a_packed_file_says_which_pack_and_how_safe_it_is(self):
        from bitnode.storage.queries import FileQueries
        from tests.storage.test_queries import Source

        root = make_small_files(self, 12, 1000)
        self.upload(root)
        queries = FileQueries(Source(self.h), self.h.ctx.run_in_thread)
        info = self.successResultOf(run(queries.item_info(KEY_ID, "photos/f0001.bin", False, False)))
        version = info["versions"][0]
        pack = self.h.catalog.packs()[0]
        self.assertEqual((version["pack"]["pack_id"], version["pack"]["remote_path"], version["pack"]["pack_size"]),
                         (pack["pack_id"], f"{KEY_ID}:photos", pack["size"]))
        self.assertEqual(version["size"], os.path.getsize(os.path.join(root, "f0001.bin")))
        self.assertTrue(version["restorable"])
        self.assertEqual(version["blocks_total"], 5)  # the pack's one segment
        self.assertEqual(info["redundancy"]["spare_blocks"], 2)
        # A supplier loses the pack's block: every file of the pack tells it.
        self.h.catalog.set_block_holder(pack["pack_id"], 0, 0, "")
        info = self.successResultOf(run(queries.item_info(KEY_ID, "photos/sub/f0003.bin", False, False)))
        self.assertEqual((info["versions"][0]["blocks_missing"], info["redundancy"]["spare_blocks"]), (1, 1))
        folder = self.successResultOf(run(queries.item_info(KEY_ID, "photos", False, False)))
        self.assertEqual([p["version_id"] for p in folder["packs"]], [pack["pack_id"]])
        self.assertEqual(folder["versions"], [])


class SlotTests(PackHarnessMixin, unittest.TestCase):
    file_max = 4096
    pack_max = 8 * 1024

    def test_a_pack_is_written_only_when_its_upload_runs(self):
        root = make_small_files(self, 40, 1000)
        seen = []
        real = packs.pack_format.write_pack

        def watching(dest, sources):
            seen.append(sorted(os.listdir(self.temp)))  # no other pack file waits meanwhile
            return real(dest, sources)

        self.patch(packs.pack_format, "write_pack", watching)
        uploaded = self.upload(root)
        self.assertGreaterEqual(uploaded["packs"], 3)
        self.assertEqual(seen, [[]] * uploaded["packs"])
        self.assertEqual(sum(p["files"] for p in self.h.catalog.packs()), 40)
