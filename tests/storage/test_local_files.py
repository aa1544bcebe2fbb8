"""Tests for bitnode.storage.local_files: downloads never write through a link planted in the destination."""

from __future__ import annotations

import os

from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.storage import local_files
from bitnode.storage.local_files import LinkRefused, create_part, is_part_name, open_folder, part_name_for


def parts_beside(path: str) -> list[str]:
    """Temporary download files left in the folder of ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    return sorted(name for name in os.listdir(folder) if name.endswith(local_files.PART_SUFFIX))


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class PartFileTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.victim = os.path.join(self.dir, "victim")
        with open(self.victim, "wb") as handle:
            handle.write(b"precious")

    def test_part_names_are_fresh_and_recognisable(self):
        names = {part_name_for("a.bin") for _ in range(50)}
        self.assertEqual(len(names), 50)
        self.assertTrue(all(n.startswith("a.bin.") and is_part_name(n) for n in names))
        self.assertFalse(is_part_name("a.bin.part"))
        self.assertTrue(part_name_for("x" * 250).startswith("download."))

    def test_a_link_at_the_old_part_name_is_never_written_through(self):
        dest = os.path.join(self.dir, "file.bin")
        os.symlink(self.victim, dest + ".part")
        part = create_part(dest)
        part.write(b"new bytes")
        part.finish()
        self.assertEqual(read(dest), b"new bytes")
        self.assertEqual(read(self.victim), b"precious")
        self.assertEqual(os.readlink(dest + ".part"), self.victim)

    def test_a_link_at_the_destination_is_replaced_not_followed(self):
        dest = os.path.join(self.dir, "file.bin")
        os.symlink(self.victim, dest)
        part = create_part(dest)
        part.write(b"new bytes")
        part.finish(mode=0o640, mtime_ns=1_600_000_000_123_456_789)
        self.assertFalse(os.path.islink(dest))
        self.assertEqual(read(dest), b"new bytes")
        self.assertEqual(read(self.victim), b"precious")
        st = os.stat(dest)
        self.assertEqual((st.st_mode & 0o7777, st.st_mtime_ns), (0o640, 1_600_000_000_123_456_789))

    def test_the_part_file_is_private_while_written_and_exclusive(self):
        dest = os.path.join(self.dir, "file.bin")
        part = create_part(dest)
        self.assertEqual(os.stat(part.part_path).st_mode & 0o777, 0o600)
        self.assertRaises(LinkRefused, create_part, dest, None, part.part_name)
        part.abort()
        self.assertEqual(parts_beside(dest), [])
        self.assertFalse(os.path.exists(dest))

    def test_a_folder_download_never_goes_through_a_linked_folder(self):
        root = os.path.join(self.dir, "restore")
        outside = os.path.join(self.dir, "outside")
        os.makedirs(root)
        os.makedirs(outside)
        os.symlink(outside, os.path.join(root, "sub"))
        self.assertRaises(LinkRefused, create_part, os.path.join(root, "sub", "deep", "f.txt"), root)
        self.assertEqual(os.listdir(outside), [])
        part = create_part(os.path.join(root, "new", "deep", "f.txt"), root)
        part.write(b"x")
        part.finish()
        self.assertEqual(read(os.path.join(root, "new", "deep", "f.txt")), b"x")

    def test_folders_below_the_root_must_be_folders_and_inside_it(self):
        root = os.path.join(self.dir, "restore")
        os.makedirs(root)
        with open(os.path.join(root, "plain"), "wb"):
            pass
        self.assertRaises(LinkRefused, open_folder, root, ["plain"])
        self.assertRaises(BadRequest, create_part, os.path.join(self.dir, "f.txt"), root)
        self.assertRaises(BadRequest, open_folder, root, [".."])
