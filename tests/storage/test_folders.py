"""Tests for bitnode.storage.folders: a folder comes back as it was (modes, mtimes, empty folders, links)."""

from __future__ import annotations

import os
import stat

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.storage import folders
from tests.storage.test_jobs import KEY_ID, SEG, Grid, Harness
from tests.storage.test_local_files import parts_beside

MTIME = 1_600_000_000_123_456_789


def make_tree(case: unittest.TestCase) -> tuple[str, str]:
    """A folder with files of several modes and mtimes, an empty folder, and links inside, outside and dangling."""
    base = os.path.abspath(case.mktemp())
    root = os.path.join(base, "photos")
    outside = os.path.join(base, "outside.txt")
    os.makedirs(os.path.join(root, "sub", "deeper"))
    os.makedirs(os.path.join(root, "empty"))
    with open(outside, "wb") as handle:
        handle.write(b"not to be uploaded")
    for name, data, mode, offset in (("a.txt", b"hello", 0o644, 1), ("sub/run.sh", b"#!/bin/sh\n", 0o755, 2),
                                     ("sub/deeper/big.bin", os.urandom(2 * SEG + 9), 0o600, 3),
                                     ("sub/deeper/empty.bin", b"", 0o640, 4)):
        path = os.path.join(root, name)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, mode)
        os.utime(path, ns=(MTIME + offset, MTIME + offset))
    os.symlink("a.txt", os.path.join(root, "inside-link"))
    os.symlink(outside, os.path.join(root, "sub", "outside-link"))
    os.symlink("no/such/file", os.path.join(root, "dangling"))
    os.chmod(os.path.join(root, "empty"), 0o700)
    for folder, offset in (("empty", 5), ("sub/deeper", 6), ("sub", 7), ("", 8)):
        os.utime(os.path.join(root, folder), ns=(MTIME + offset, MTIME + offset))
    return base, root


def describe(root: str) -> dict:
    """Everything under ``root`` that a restore must give back: kind, mode, mtime, bytes or link text."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            relative = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                found[relative] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                found[relative] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with open(path, "rb") as handle:
                    found[relative] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, handle.read())
    st = os.stat(root)
    found["."] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return found


class ScanTests(unittest.TestCase):
    def test_links_are_kept_as_links_and_never_followed(self):
        base, root = make_tree(self)
        tree = folders.scan_folder(root)
        self.assertEqual([e.relative for e in tree.folders], ["", "empty", "sub", "sub/deeper"])
        self.assertEqual([e.relative for e in tree.files],
                         ["a.txt", "sub/deeper/big.bin", "sub/deeper/empty.bin", "sub/run.sh"])
        links = {e.relative: e.link_target for e in tree.links}
        self.assertEqual(links, {"dangling": "no/such/file", "inside-link": "a.txt",
                                 "sub/outside-link": os.path.join(base, "outside.txt")})
        self.assertEqual(tree.skipped, [])
        self.assertEqual(tree.files[0].mode, 0o644)
        self.assertEqual(tree.files[0].mtime_ns, MTIME + 1)

    def test_what_cannot_be_read_is_skipped_with_the_reason(self):
        _, root = make_tree(self)
        os.mkfifo(os.path.join(root, "pipe"))
        with open(os.path.join(root, "back\\slash"), "wb"):
            pass
        unreadable = os.path.join(root, "sub", "run.sh")
        tree = folders.scan_folder(root, readable=lambda path: path != unreadable)
        reasons = {os.path.relpath(s["local_path"], root): s["error"] for s in tree.skipped}
        self.assertIn("fifo", reasons["pipe"])
        self.assertIn("name cannot be stored", reasons["back\\slash"])
        self.assertEqual(reasons["sub/run.sh"], "cannot be read: permission denied")
        self.assertNotIn("sub/run.sh", [e.relative for e in tree.files])
        self.assertEqual(len(tree.files), 3)

    def test_too_many_entries_and_not_a_folder(self):
        _, root = make_tree(self)
        self.assertRaises(BadRequest, folders.scan_folder, root, 5)
        self.assertRaises(BadRequest, folders.scan_folder, os.path.join(root, "a.txt"))


class RoundTripTests(unittest.TestCase):
    def setUp(self):
        self.grid = Grid()
        self.h = Harness(self, self.grid)

    def upload(self, root: str, **kw) -> dict:
        return self.successResultOf(defer_of(folders.upload_folder(self.h.manager, KEY_ID, "photos", root,
                                                                   wait=True, **kw)))

    def download(self, destination: str) -> dict:
        return self.successResultOf(defer_of(folders.download_folder(self.h.manager, KEY_ID, "photos",
                                                                     destination, wait=True)))

    def test_a_restored_folder_has_its_modes_mtimes_empty_folders_and_links(self):
        base, root = make_tree(self)
        uploaded = self.upload(root)
        self.assertEqual((uploaded["files"], uploaded["folders"], uploaded["links"]), (4, 4, 3))
        self.assertEqual(uploaded["skipped"], [])
        self.assertEqual(self.h.catalog.get(KEY_ID, "photos/sub/outside-link")["type"], "link")
        self.assertEqual(self.h.catalog.get(KEY_ID, "photos/empty")["mode"], 0o700)
        destination = os.path.abspath(self.mktemp())
        os.makedirs(destination)
        restored = self.download(destination)
        self.assertEqual(restored["skipped"], [])
        self.assertEqual(describe(os.path.join(destination, "photos")), describe(root))
        self.assertEqual(parts_beside(os.path.join(destination, "photos", "a.txt")), [])

    def test_a_file_that_cannot_be_read_is_skipped_and_the_rest_uploads(self):
        _, root = make_tree(self)
        unreadable = os.path.join(root, "a.txt")
        self.patch(folders, "can_read", lambda path: path != unreadable)
        uploaded = self.upload(root)
        self.assertEqual(uploaded["files"], 3)
        self.assertEqual(uploaded["skipped"], [{"local_path": unreadable, "error": "cannot be read: permission denied"}])
        self.assertTrue(all(t["state"] == "DONE" for t in uploaded["transfers"]))
        self.assertFalse(self.h.catalog.exists(KEY_ID, "photos/a.txt"))

    def test_a_file_gone_before_its_upload_is_listed_with_its_reason(self):
        _, root = make_tree(self)
        real_scan = folders.scan_folder

        def scan_then_remove(*args, **kw):
            tree = real_scan(*args, **kw)
            os.unlink(os.path.join(root, "a.txt"))
            return tree

        self.patch(folders, "scan_folder", scan_then_remove)
        uploaded = self.upload(root)
        self.assertEqual([s["local_path"] for s in uploaded["skipped"]], [os.path.join(root, "a.txt")])
        self.assertIn("does not exist", uploaded["skipped"][0]["error"])
        self.assertEqual(sum(1 for t in uploaded["transfers"] if t["state"] == "DONE"), 3)

    def test_a_restore_never_writes_through_a_link_in_the_destination(self):
        base, root = make_tree(self)
        self.upload(root)
        destination = os.path.abspath(self.mktemp())
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(destination, "photos"))
        os.makedirs(elsewhere)
        os.symlink(elsewhere, os.path.join(destination, "photos", "sub"))
        restored = self.download(destination)
        self.assertEqual(os.listdir(elsewhere), [])
        self.assertTrue(restored["skipped"])
        self.assertTrue(all("symbolic link" in s["error"] for s in restored["skipped"]))
        with open(os.path.join(destination, "photos", "a.txt"), "rb") as handle:
            self.assertEqual(handle.read(), b"hello")


def defer_of(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)
