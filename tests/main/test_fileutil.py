"""Tests for bitnode.main.fileutil."""

from __future__ import annotations

import hashlib
import os
import stat

from twisted.trial import unittest

from bitnode.main import fileutil
from tests.support import temp_path


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class AtomicWriteTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = temp_path(self, "file.bin")
        self.dir = os.path.dirname(self.path)

    def test_writes_content_with_default_mode(self) -> None:
        fileutil.atomic_write(self.path, b"hello")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"hello")
        self.assertEqual(_mode(self.path), 0o644)

    def test_private_mode(self) -> None:
        fileutil.atomic_write(self.path, b"secret", mode=0o600)
        self.assertEqual(_mode(self.path), 0o600)

    def test_mode_ignores_umask(self) -> None:
        old = os.umask(0o077)
        try:
            fileutil.atomic_write(self.path, b"x", mode=0o644)
        finally:
            os.umask(old)
        self.assertEqual(_mode(self.path), 0o644)

    def test_replaces_existing_file_and_leaves_no_temp_files(self) -> None:
        fileutil.atomic_write(self.path, b"one" * 1000)
        fileutil.atomic_write(self.path, b"two")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"two")
        self.assertEqual(os.listdir(self.dir), ["file.bin"])

    def test_accepts_bytearray_and_memoryview(self) -> None:
        fileutil.atomic_write(self.path, bytearray(b"ab"))
        fileutil.atomic_write(self.path + "2", memoryview(b"cd"))
        with open(self.path + "2", "rb") as f:
            self.assertEqual(f.read(), b"cd")

    def test_refuses_text(self) -> None:
        self.assertRaises(TypeError, fileutil.atomic_write, self.path, "text")
        self.assertFalse(os.path.exists(self.path))

    def test_failure_leaves_old_content_and_no_temp_file(self) -> None:
        fileutil.atomic_write(self.path, b"old")
        os.mkdir(os.path.join(self.dir, "sub"))
        target = os.path.join(self.dir, "sub")  # a directory: os.replace must fail
        self.assertRaises(OSError, fileutil.atomic_write, target, b"new")
        self.assertEqual(sorted(os.listdir(self.dir)), ["file.bin", "sub"])
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"old")

    def test_missing_directory_raises(self) -> None:
        self.assertRaises(OSError, fileutil.atomic_write, os.path.join(self.dir, "no", "f"), b"x")


class HelperTests(unittest.TestCase):
    def test_read_limited(self) -> None:
        path = self.mktemp()
        fileutil.atomic_write(path, b"x" * 10)
        self.assertEqual(fileutil.read_limited(path, 10), b"x" * 10)
        self.assertRaises(fileutil.FileTooLarge, fileutil.read_limited, path, 9)

    def test_remove_if_exists(self) -> None:
        path = self.mktemp()
        fileutil.atomic_write(path, b"x")
        self.assertTrue(fileutil.remove_if_exists(path))
        self.assertFalse(fileutil.remove_if_exists(path))

    def test_ensure_dir_is_private_and_idempotent(self) -> None:
        path = os.path.join(self.mktemp(), "a", "b")
        fileutil.ensure_dir(path)
        fileutil.ensure_dir(path)
        self.assertTrue(os.path.isdir(path))
        self.assertEqual(_mode(path) & 0o077, 0)


class WriteTempFileTests(unittest.TestCase):
    def test_the_temp_file_is_complete_with_its_mode_and_a_failed_one_leaves_nothing(self) -> None:
        folder = os.path.dirname(temp_path(self, "unused"))
        path = fileutil.write_temp_file(folder, ".data.", b"x" * 100_000, 0o600)
        self.assertTrue(os.path.samefile(os.path.dirname(path), folder))
        self.assertEqual(_mode(path), 0o600)
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), b"x" * 100_000)
        self.assertRaises(TypeError, fileutil.write_temp_file, folder, ".bad.", 12345, 0o600)
        self.assertEqual(os.listdir(folder), [os.path.basename(path)])


class Sha256FileTests(unittest.TestCase):
    def test_the_digest_is_the_whole_files_whatever_the_chunk_size(self) -> None:
        path = temp_path(self, "blob")
        data = os.urandom(5000)
        with open(path, "wb") as handle:
            handle.write(data)
        for chunk in (1, 7, 4096, 1 << 20):
            self.assertEqual(fileutil.sha256_file(path, chunk), hashlib.sha256(data).hexdigest())
