"""Tests for bitnode.interface.api_files: files_*, file_* and transfers_list through the dispatcher.

A real Node with service_identity (fake identity servers, 2048-bit keys) and
service_backups over the in-memory grid of tests/storage/test_backups_service.py.
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.app import api_server
from bitnode.errors import BadRequest
from bitnode.storage.backups_service import BackupsService
from bitnode.storage.memory_grid import MemoryStorageServer
from tests.storage.test_backups_service import (
    ME,
    SEG,
    GridProvider,
    StorageNodeTestCase,
    read,
    wait_until,
    write,
)
from tests.userid.fakes import FakeServers

MASTER = "master$" + ME
REMOTE = MASTER + ":docs/a.bin"


class ApiFilesTestCase(StorageNodeTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        StorageNodeTestCase.setUp(self)
        self.node, self.storage = yield self.start()

    @defer.inlineCallbacks
    def call(self, method, **kwargs):
        answer = yield api_server(self.node).dispatcher.execute_by_name(method, kwargs)
        return answer

    @defer.inlineCallbacks
    def ok(self, method, **kwargs):
        answer = yield self.call(method, **kwargs)
        self.assertEqual(answer.code, 200, answer.envelope)
        return answer.envelope["result"]

    @defer.inlineCallbacks
    def error(self, code, method, **kwargs):
        answer = yield self.call(method, **kwargs)
        self.assertEqual(answer.code, code, answer.envelope)
        return " ".join(answer.envelope["errors"])

    def local(self, size=2 * SEG + 3, seed=1):
        path, data = write(self, size, seed)
        return os.path.abspath(path), data

    def folder(self):
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "sub"))
        files = {"one.txt": b"one", "sub/two.bin": os.urandom(SEG + 5), "sub/three": b""}
        for name, data in files.items():
            with open(os.path.join(root, name), "wb") as handle:
                handle.write(data)
        return root, files


class RoundTripTests(ApiFilesTestCase):
    @defer.inlineCallbacks
    def test_upload_list_info_download(self):
        local, data = self.local()
        done = yield self.ok("file_upload_start", local_path=local, remote_path=REMOTE, wait_result=True)
        self.assertEqual((done["state"], done["bytes_done"], done["bytes_total"]), ("DONE", len(data), len(data)))
        self.assertEqual(done["progress"], 1.0)
        listed = yield self.ok("files_list")
        self.assertEqual([(i["remote_path"], i["type"]) for i in listed],
                         [(MASTER + ":docs", "folder"), (REMOTE, "file")])
        self.assertEqual(listed[1]["size"], len(data))
        self.assertEqual(listed[1]["latest_version"], done["version_id"])
        top = yield self.ok("files_list", remote_path=MASTER + ":", recursive=False)
        self.assertEqual([i["name"] for i in top], ["docs"])
        inside = yield self.ok("files_list", remote_path="docs", include_uploads=True)
        self.assertEqual([(i["name"], i["uploads"]) for i in inside], [("a.bin", [])])
        self.assertEqual((yield self.ok("file_exists", remote_path=REMOTE))["exist"], True)
        self.assertEqual((yield self.ok("file_exists", remote_path=MASTER + ":nope"))["exist"], False)
        info = yield self.ok("file_info", remote_path=REMOTE)
        version = info["versions"][0]
        self.assertEqual((version["k"], version["n"], version["restorable"]), (3, 5, True))
        self.assertEqual([p["blocks_held"] for p in version["positions"]], [3] * 5)
        self.assertEqual(version["blocks_missing"], 0)
        # the redundancy left: every segment has 5 blocks held, 3 needed, in the layout used now
        self.assertEqual(info["redundancy"], version["redundancy"])
        self.assertEqual(version["redundancy"], {
            "blocks_needed": 3, "min_blocks_held": 5, "spare_blocks": 2, "segments_by_blocks_held": {"5": 3},
            "segments_without_spare": 0, "blocks_on_retiring": 0, "layout": "3-of-5", "layout_current": True,
            "target_layout": "3-of-5"})

        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        got = yield self.ok("file_download_start", remote_path=REMOTE, destination_path=where, wait_result=True)
        self.assertEqual(got["state"], "DONE")
        self.assertEqual(read(os.path.join(where, "a.bin")), data)
        by_version = os.path.join(where, "again.bin")
        yield self.ok("file_download_start", remote_path=done["version_id"], destination_path=by_version,
                      wait_result=True)
        self.assertEqual(read(by_version), data)
        self.assertEqual((yield self.ok("transfers_list")), [])
        ended = yield self.ok("transfers_list", include_finished=True)
        self.assertEqual([(t["kind"], t["state"]) for t in ended],  # newest first
                         [("download", "DONE"), ("download", "DONE"), ("upload", "DONE")])
        self.assertFalse(any(t["after_restart"] for t in ended))
        self.assertEqual((yield self.ok("files_uploads")), {"running": [], "pending": []})
        self.assertEqual((yield self.ok("files_downloads")), [])

    @defer.inlineCallbacks
    def test_folder_upload_and_download(self):
        root, files = self.folder()
        result = yield self.ok("file_upload_start", local_path=root, remote_path=MASTER + ":backup",
                               wait_finish=True)
        self.assertEqual((result["files"], result["skipped"]), (3, []))
        self.assertTrue(all(t["state"] == "DONE" for t in result["transfers"]))
        names = [i["path"] for i in (yield self.ok("files_list", remote_path=MASTER + ":backup"))]
        self.assertEqual(names, ["backup/one.txt", "backup/sub", "backup/sub/three", "backup/sub/two.bin"])
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        result = yield self.ok("file_download_start", remote_path=MASTER + ":backup", destination_path=where,
                               wait_result=True)
        self.assertEqual(result["files"], 3)
        for name, data in files.items():
            self.assertEqual(read(os.path.join(where, "backup", name)), data)

    @defer.inlineCallbacks
    def test_a_folder_comes_back_with_its_modes_mtimes_empty_folders_and_links(self):
        root, files = self.folder()
        os.makedirs(os.path.join(root, "nothing-here"))
        os.chmod(os.path.join(root, "one.txt"), 0o640)
        os.utime(os.path.join(root, "one.txt"), ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001))
        os.symlink("/etc/hostname", os.path.join(root, "sub", "host"))
        result = yield self.ok("file_upload_start", local_path=root, remote_path=MASTER + ":backup",
                               wait_finish=True)
        self.assertEqual((result["files"], result["folders"], result["links"], result["skipped"]), (3, 3, 1, []))
        info = yield self.ok("file_info", remote_path=MASTER + ":backup/one.txt")
        self.assertEqual(info["metadata"]["mode"], "0640")
        self.assertEqual(info["metadata"]["permissions"], "-rw-r-----")
        self.assertEqual(info["metadata"]["mtime_ns"], 1_500_000_000_000_000_001)
        self.assertEqual(info["versions"][0]["metadata"], info["metadata"])
        link = yield self.ok("file_info", remote_path=MASTER + ":backup/sub/host")
        self.assertEqual((link["type"], link["metadata"]["link_target"]), ("link", "/etc/hostname"))
        empty = yield self.ok("file_info", remote_path=MASTER + ":backup/nothing-here")
        self.assertEqual(empty["type"], "folder")
        self.assertTrue(empty["metadata"]["kept"])
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        yield self.ok("file_download_start", remote_path=MASTER + ":backup", destination_path=where,
                      wait_result=True)
        restored = os.path.join(where, "backup")
        st = os.stat(os.path.join(restored, "one.txt"))
        self.assertEqual((st.st_mode & 0o777, st.st_mtime_ns), (0o640, 1_500_000_000_000_000_001))
        self.assertEqual(os.readlink(os.path.join(restored, "sub", "host")), "/etc/hostname")
        self.assertTrue(os.path.isdir(os.path.join(restored, "nothing-here")))
        single = os.path.abspath(self.mktemp())
        os.makedirs(single)
        answer = yield self.ok("file_download_start", remote_path=MASTER + ":backup/sub/host", destination_path=single)
        self.assertEqual(answer["link_target"], "/etc/hostname")
        self.assertTrue(os.path.islink(os.path.join(single, "host")))

    @defer.inlineCallbacks
    def test_create_and_delete(self):
        created = yield self.ok("file_create", remote_path=MASTER + ":a/b", as_folder=True)
        self.assertEqual(created["type"], "folder")
        yield self.error(409, "file_create", remote_path=MASTER + ":a/b", as_folder=True)
        yield self.ok("file_create", remote_path=MASTER + ":a/b", as_folder=True, exist_ok=True)
        yield self.error(400, "file_create", remote_path=MASTER + ":x", force_path_id="0/1")
        local, _ = self.local()
        yield self.ok("file_upload_start", local_path=local, remote_path=MASTER + ":a/b/c.bin", wait_result=True)
        deleted = yield self.ok("file_delete", remote_path=MASTER + ":a")
        self.assertEqual((deleted["versions"], deleted["blocks_deleted"], deleted["failed"]), (1, 15, []))
        self.assertEqual((yield self.ok("files_list")), [])
        self.assertEqual([p for p in self.provider.stores[0]._spaces[ME] if not p.startswith("catalog-")], [])
        yield self.error(404, "file_delete", remote_path=MASTER + ":a")

    @defer.inlineCallbacks
    def test_legacy_names(self):
        local, data = self.local(size=100)
        yield self.ok("file_upload_start", local_path=local, remote_path=REMOTE, wait_result=True)
        self.assertEqual(len((yield self.ok("backups_list"))), 2)
        yield self.ok("backups_update")
        target = os.path.join(os.path.abspath(self.mktemp()))
        yield self.ok("restore_single", pathID_or_backupID_or_localPath=REMOTE, destinationPath=target)
        yield wait_until(lambda: os.path.exists(target))
        self.assertEqual(read(target), data)
        self.assertEqual((yield self.ok("backups_running")), {"running": []})

    @defer.inlineCallbacks
    def test_listing_pages_with_offset_and_limit(self):
        for name in ("a", "b", "c"):
            yield self.ok("file_create", remote_path=f"{MASTER}:{name}")
        page = yield self.ok("files_list", offset=1, limit=1)
        self.assertEqual([i["name"] for i in page], ["b"])
        self.assertEqual([i["name"] for i in (yield self.ok("files_list", offset=2))], ["c"])
        self.assertEqual([i["name"] for i in (yield self.ok("files_list", limit=2))], ["a", "b"])
        self.assertEqual((yield self.ok("files_list", offset=5)), [])
        self.assertEqual((yield self.ok("files_list", limit=0)), [])
        yield self.error(400, "files_list", offset=-1)
        yield self.error(400, "files_list", limit=-1)
        yield self.error(400, "files_list", limit="many")
        self.assertRaises(BadRequest, api_server(self.node).api.files_list, offset=-1)

    @defer.inlineCallbacks
    def test_explore_a_local_folder(self):
        root, _ = self.folder()
        seen = yield self.ok("file_explore", local_path=root)
        self.assertEqual(seen["type"], "dir")
        self.assertEqual([(i["name"], i["type"]) for i in seen["items"]], [("one.txt", "file"), ("sub", "dir")])
        one = yield self.ok("file_explore", local_path=os.path.join(root, "one.txt"))
        self.assertEqual((one["type"], one["size"]), ("file", 3))
        yield self.error(404, "file_explore", local_path=os.path.join(root, "nope"))
        yield self.error(400, "file_explore", local_path="relative/path")


class LegacyOnlyTests(ApiFilesTestCase):
    @defer.inlineCallbacks
    def test_local_path_names_and_version_ids(self):
        root, files = self.folder()
        remote = MASTER + ":" + root.lstrip("/")
        added = yield self.ok("backup_tree_add", dirpath=root)
        self.assertEqual((added["remote_path"], added["files"]), (remote, 3))
        self.assertEqual((yield self.ok("file_info", remote_path=remote + "/one.txt"))["versions"], [])
        started = yield self.ok("backup_start_path", path=root)
        self.assertEqual(started["files"], 3)
        yield wait_until(lambda: self.storage.transfers.jobs() == [])
        versions = yield self.ok("backups_id_list")
        self.assertEqual(sorted(v["remote_path"] for v in versions),
                         sorted(f"{remote}/{name}" for name in files))
        one = next(v for v in versions if v["remote_path"].endswith("one.txt"))
        self.assertEqual((yield self.ok("backup_delete_local", backupID=one["version_id"]))["local_files_removed"], 0)
        again = yield self.ok("backup_start_id", pathID=remote + "/one.txt")
        yield again and wait_until(lambda: self.storage.transfers.jobs() == [])
        self.assertEqual(len((yield self.ok("file_info", remote_path=remote + "/one.txt"))["versions"]), 2)
        gone = yield self.ok("backup_delete_id", pathID_or_backupID=one["version_id"])
        self.assertEqual(gone["version_id"], one["version_id"])
        self.assertEqual(len((yield self.ok("file_info", remote_path=remote + "/one.txt"))["versions"]), 1)
        yield self.ok("backup_delete_path", localPath=root)
        yield self.error(404, "file_info", remote_path=remote)
        yield self.error(404, "backup_start_id", pathID="never/uploaded")
        yield self.error(404, "backup_cancel_pending", path_id="never/uploaded")

    @defer.inlineCallbacks
    def test_add_single_items(self):
        root, _ = self.folder()
        folder = yield self.ok("backup_dir_add", dirpath=os.path.join(root, "sub"))
        self.assertEqual(folder["type"], "folder")
        item = yield self.ok("backup_file_add", filepath=os.path.join(root, "one.txt"))
        self.assertEqual(item["type"], "file")
        mapped = yield self.ok("backup_map_path", path=root)
        self.assertEqual(mapped["type"], "folder")


class RunningTransferTests(ApiFilesTestCase):
    @defer.inlineCallbacks
    def test_progress_listing_and_stop(self):
        for gate in self.provider.gates.values():
            gate.budget = 1  # the first segment is acknowledged, the second never is
        local, data = self.local(size=3 * SEG)
        started = yield self.ok("file_upload_start", local_path=local, remote_path=REMOTE)
        self.assertIn(started["state"], ("PREPARING", "PENDING", "UPLOADING"))
        yield wait_until(lambda: sum(len(g.held) for g in self.provider.gates.values()) == 5)
        live = yield self.ok("transfers_list")
        self.assertEqual(len(live), 1)
        self.assertEqual((live[0]["kind"], live[0]["state"]), ("upload", "UPLOADING"))
        self.assertEqual((live[0]["bytes_done"], live[0]["bytes_total"]), (SEG, len(data)))
        self.assertIsNotNone(live[0]["speed"])
        self.assertIsNotNone(live[0]["eta"])
        self.assertEqual(len((yield self.ok("files_uploads"))["running"]), 1)
        listed = yield self.ok("files_list", include_uploads=True)
        self.assertEqual(listed[1]["uploads"][0]["state"], "UPLOADING")
        yield self.error(409, "file_upload_start", local_path=local, remote_path=REMOTE)
        stopped = yield self.ok("file_upload_stop", remote_path=REMOTE)
        self.assertEqual(len(stopped["cancelled"]), 1)
        yield wait_until(lambda: self.storage.transfers.jobs() == [])
        self.assertEqual(self.storage.transfers.recent()[0]["state"], "CANCELLED")
        yield self.error(404, "file_upload_stop", remote_path=REMOTE)
        yield self.error(404, "file_download_stop", remote_path=REMOTE)


class ErrorTests(ApiFilesTestCase):
    @defer.inlineCallbacks
    def test_bad_input_answers_the_right_code_and_leaves_nothing(self):
        missing = os.path.abspath(os.path.join(self.mktemp(), "nope.bin"))
        yield self.error(404, "file_upload_start", local_path=missing, remote_path=REMOTE)
        yield self.error(400, "file_upload_start", local_path="relative.bin", remote_path=REMOTE)
        local, _ = self.local(size=10)
        yield self.error(403, "file_upload_start", local_path=local, remote_path="master$bob@x.example.net:a")
        yield self.error(403, "file_upload_start", local_path=local, remote_path="share9$" + ME + ":a")
        yield self.error(400, "file_upload_start", local_path=local, remote_path="no-key-here")
        yield self.error(400, "file_upload_start", local_path=local, remote_path=MASTER + ":")
        self.assertEqual((yield self.ok("files_list")), [])
        yield self.error(404, "file_info", remote_path=REMOTE)
        yield self.error(404, "file_download_start", remote_path=REMOTE, destination_path=local)
        yield self.error(403, "files_list", key_id="master$bob@x.example.net")

        yield self.ok("file_upload_start", local_path=local, remote_path=REMOTE, wait_result=True)
        nowhere = os.path.abspath(os.path.join(self.mktemp(), "missing-dir", "out.bin"))
        yield self.error(400, "file_download_start", remote_path=REMOTE, destination_path=nowhere)
        self.assertFalse(os.path.exists(os.path.dirname(nowhere)))
        yield self.error(400, "file_download_start", remote_path=REMOTE, destination_path="out.bin")
        yield self.error(404, "file_download_start", remote_path="Fno-such-version")

    @defer.inlineCallbacks
    def test_too_few_suppliers_is_503_and_a_full_supplier_507(self):
        local, _ = self.local(size=SEG)
        for sid in self.provider.ids[:3]:
            self.provider.gates[sid].offline = True
        text = yield self.error(503, "file_upload_start", local_path=local, remote_path=REMOTE, wait_finish=True)
        self.assertIn("required", text)
        self.assertEqual(self.storage.transfers.jobs()[0].state, "PAUSED")

    @defer.inlineCallbacks
    def test_full_suppliers_answer_507(self):
        yield self.node.stopService()
        self.servers = FakeServers()  # a new node registers alice again
        self.provider = GridProvider([MemoryStorageServer(quota_bytes=1000) for _ in range(5)])
        self.node, self.storage = yield self.start()
        local, _ = self.local(size=SEG)
        text = yield self.error(507, "file_upload_start", local_path=local, remote_path=REMOTE, wait_result=True)
        self.assertIn("out of space", text)


class HostileCatalogTests(ApiFilesTestCase):
    @defer.inlineCallbacks
    def test_a_catalog_that_would_crash_file_info_is_refused_on_import(self):
        # What a malicious share owner (or a broken backup) could hand over: positions beyond n, too few suppliers.
        version_id = "F20250101T000000000-0a1b2c3d"
        hostile = {"format": 1, "items": [[MASTER, "docs", 1, 1.0], [MASTER, "docs/a.bin", 0, 1.0]],
                   "versions": [[version_id, MASTER, "docs/a.bin", "complete", 5, 4194304, 1, 1, 2, "d3JhcHBlZA==",
                                 '["s0"]', 1.0, 2.0]],
                   "segments": [[version_id, 0, 5]],
                   "blocks": [[version_id, 0, 0, "aa" * 32, "s0"], [version_id, 0, 7, "bb" * 32, "s0"]]}
        try:
            yield self.node.run_in_thread(self.storage.catalog.import_, json.dumps(hostile).encode())
        except BadRequest:
            pass
        answer = yield self.call("file_info", remote_path=MASTER + ":docs/a.bin")
        self.assertEqual(answer.code, 404, answer.envelope)
        listed = yield self.ok("files_list")
        self.assertEqual(listed, [])


class NoSupplierTests(unittest.TestCase):
    """A node whose service_backups has no provider and no service_customer to ask."""

    @defer.inlineCallbacks
    def test_methods_needing_suppliers_say_so(self):
        helper = StorageNodeTestCase("setUp")
        helper.setUp()
        helper.mktemp = self.mktemp
        helper.addCleanup = self.addCleanup
        node, _ = yield helper.start(storage=BackupsService)
        local, _ = write(self, 10)
        answer = yield api_server(node).dispatcher.execute_by_name(
            "file_upload_start", {"local_path": os.path.abspath(local), "remote_path": REMOTE})
        self.assertEqual(answer.code, 503)
        self.assertIn("service_customer is off", answer.envelope["errors"][0])
        answer = yield api_server(node).dispatcher.execute_by_name("files_list", {})
        self.assertEqual((answer.code, answer.envelope["result"]), (200, []))
