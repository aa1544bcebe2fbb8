"""Tests for bitnode.storage.queries: what the files API asks of a catalog, on the in-memory grid."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.errors import BadRequest, NotFound
from bitnode.storage.catalog import COMPLETE, split_remote_path
from bitnode.storage.queries import FileQueries, download_target, item_summary, local_kind
from tests.storage.test_jobs import KEY_ID, REMOTE, SEG, Grid, Harness, read, write


class Source:
    """A catalog source as service_backups is one: catalog, transfers, placement, check_remote_path."""

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.catalog = harness.catalog
        self.transfers = harness.manager
        self.changed = 0
        self.settled = 0

    def placement(self):
        return self.h.ctx.placement()

    def check_remote_path(self, remote_path: str) -> tuple[str, str]:
        return split_remote_path(remote_path)

    def catalog_changed(self) -> None:
        self.changed += 1

    @property
    def upload_transfers(self):
        return self.transfers

    def upload_settled(self) -> defer.Deferred:
        self.settled += 1
        return defer.succeed(None)


def result_of(case: unittest.TestCase, coroutine):
    return case.successResultOf(defer.Deferred.fromCoroutine(coroutine))


def failure_of(case: unittest.TestCase, coroutine, kind: type):
    return case.failureResultOf(defer.Deferred.fromCoroutine(coroutine), kind)


class FileQueriesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.grid = Grid()
        self.h = Harness(self, self.grid)
        self.source = Source(self.h)
        self.queries = FileQueries(self.source, self.h.ctx.run_in_thread)

    def upload(self, size: int = 2 * SEG, remote: str = REMOTE) -> bytes:
        local, data = write(self, size)
        info = result_of(self, self.queries.upload(self.h.manager, os.path.abspath(local), remote, wait=True))
        self.assertEqual(info["state"], "DONE")
        return data

    def test_an_uploaded_file_is_listed_exists_and_its_info_says_every_position_holds_its_block(self) -> None:
        self.upload()
        self.assertEqual(self.source.settled, 1)  # waiting waited until the source said the upload settled
        _, path = split_remote_path(REMOTE)
        listed = result_of(self, self.queries.list_items(KEY_ID, "", True, True, False, 0, None))
        self.assertEqual([(i["remote_path"], i["type"], i["size"]) for i in listed if i["type"] == "file"],
                         [(REMOTE, "file", 2 * SEG)])
        self.assertEqual([i["uploads"] for i in listed if i["type"] == "file"], [[]])
        self.assertEqual(result_of(self, self.queries.exists(KEY_ID, path)),
                         {"exist": True, "remote_path": REMOTE, "type": "file"})
        self.assertEqual(result_of(self, self.queries.exists(KEY_ID, "nothing/here"))["exist"], False)
        info = result_of(self, self.queries.item_info(KEY_ID, path, True, True))
        self.assertEqual([v["state"] for v in info["versions"]], [COMPLETE])
        self.assertEqual(info["redundancy"], info["versions"][0]["redundancy"])
        self.assertEqual((info["uploads"], info["downloads"]), ([], []))
        self.assertEqual([(p["position"], p["blocks_held"]) for p in info["versions"][0]["positions"]],
                         [(n, 2) for n in range(5)])
        self.assertTrue(info["versions"][0]["restorable"])
        self.assertTrue(info["metadata"]["kept"])

    def test_a_listing_pages_over_the_whole_list(self) -> None:
        for n in range(3):
            self.upload(10, f"{KEY_ID}:f{n}")
        listed = result_of(self, self.queries.list_items(KEY_ID, "", True, False, False, 1, 1))
        self.assertEqual([i["remote_path"] for i in listed], [f"{KEY_ID}:f1"])
        one = result_of(self, self.queries.list_items(KEY_ID, "f2", True, False, False, 0, None))
        self.assertEqual([i["remote_path"] for i in one], [f"{KEY_ID}:f2"])

    def test_a_download_writes_the_file_into_a_folder_under_its_name(self) -> None:
        data = self.upload()
        destination = os.path.abspath(self.mktemp())
        os.makedirs(destination)
        info = result_of(self, self.queries.download(REMOTE, destination, wait=True))
        self.assertEqual(info["state"], "DONE")
        self.assertEqual(read(os.path.join(destination, "a.bin")), data)
        failure_of(self, self.queries.download(f"{KEY_ID}:", destination, wait=True), BadRequest)

    def test_create_tells_storage_the_catalog_changed(self) -> None:
        item = result_of(self, self.queries.create(KEY_ID, "new/folder", True, False, 5.0))
        self.assertEqual((item["type"], item["name"]), ("folder", "folder"))
        self.assertEqual(self.source.changed, 1)

    def test_stop_cancels_the_jobs_under_a_folder_and_says_when_there_are_none(self) -> None:
        self.h.slow(1.0)
        local, _ = write(self, 2 * SEG)
        job = self.h.manager.start_upload(local, f"{KEY_ID}:docs/x.bin")
        stopped = self.queries.stop(f"{KEY_ID}:docs", "upload")
        self.assertEqual([j["id"] for j in stopped["cancelled"]], [job.id])
        self.assertEqual(job.state, "CANCELLED")
        self.assertRaises(NotFound, self.queries.stop, f"{KEY_ID}:docs", "upload")

    def test_a_tree_is_catalogued_without_uploading(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "sub"))
        for name in ("a.txt", os.path.join("sub", "b.txt")):
            with open(os.path.join(root, name), "w") as handle:
                handle.write("x")
        added = result_of(self, self.queries.add_tree(root, f"{KEY_ID}:tree", KEY_ID, "tree", 5.0))
        self.assertEqual((added["remote_path"], added["files"], added["skipped"]), (f"{KEY_ID}:tree", 2, []))
        self.assertTrue(self.h.catalog.exists(KEY_ID, "tree/sub/b.txt"))
        self.assertEqual(self.h.catalog.versions(COMPLETE), [])
        failure_of(self, self.queries.add_tree(os.path.join(root, "a.txt"), f"{KEY_ID}:t", KEY_ID, "t", 5.0),
                   BadRequest)


class LocalPathTests(unittest.TestCase):
    def test_local_kind_and_download_target_refuse_what_cannot_be_used(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.assertEqual(local_kind(folder), "folder")
        self.assertRaises(NotFound, local_kind, os.path.join(folder, "missing"))
        self.assertEqual(download_target(folder, "a.bin", False), os.path.join(folder, "a.bin"))
        self.assertRaises(BadRequest, download_target, os.path.join(folder, "missing"), "a", True)
        os.makedirs(os.path.join(folder, "a.bin"))
        self.assertRaises(BadRequest, download_target, folder, "a.bin", False)

    def test_item_summary_names_the_item_after_its_last_path_part(self) -> None:
        row = {"remote_path": f"{KEY_ID}:x/y.txt", "key_id": KEY_ID, "path": "x/y.txt", "type": "file",
               "created": 1.0, "size": 3}
        self.assertEqual(item_summary(row)["name"], "y.txt")
        self.assertIsNone(item_summary(row)["latest_version"])
