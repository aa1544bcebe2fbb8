"""Tests for bitnode.supplier.disk_store: the IStorageServer contract on disk, quotas, path safety."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.errors import BadRequest, InsufficientStorage
from bitnode.supplier import disk_store
from bitnode.supplier.disk_store import DiskStore, customer_dirname
from tests.storage.test_ports import StorageServerContract

CUSTOMER = "alice@127.0.0.1_8084"


class DiskStoreContractTests(StorageServerContract, unittest.TestCase):
    def make_server(self):
        return DiskStore(self.mktemp())


class DiskStoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.store = DiskStore(self.root)

    def test_blocks_live_under_the_customer_directory(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/0/3", b"abc"))
        path = os.path.join(os.path.abspath(self.root), CUSTOMER, "v1", "0", "3")
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), b"abc")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(self.store.customers(), [CUSTOMER])

    def test_unsafe_customer_ids_get_hashed_directories(self) -> None:
        self.assertEqual(customer_dirname(CUSTOMER), CUSTOMER)
        odd = customer_dirname("Alice Smith")
        self.assertTrue(odd.startswith("x-"))
        self.assertNotIn("/", odd)
        self.assertRaises(BadRequest, customer_dirname, "../x/y")

    def test_escapes_are_refused_and_counted(self) -> None:
        for bad in ("../x", "/etc/passwd", "a/../../b", "a\x00b", "a" * 600, ".hidden/0/0", "v/./x"):
            self.failureResultOf(self.store.store_block(CUSTOMER, bad, b"x"), BadRequest)
            self.failureResultOf(self.store.fetch_block(CUSTOMER, bad), BadRequest)
        self.assertGreaterEqual(sum(self.store.refused.values()), 14)
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(os.path.abspath(self.root)), "x")))
        self.failureResultOf(self.store.delete(CUSTOMER, "../"), BadRequest)
        self.failureResultOf(self.store.list_blocks(CUSTOMER, "/abs/"), BadRequest)

    def test_quota_refuses_and_writes_nothing(self) -> None:
        self.store.set_quota(CUSTOMER, 10)
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"12345678"))
        self.failureResultOf(self.store.store_block(CUSTOMER, "v/0/1", b"123"), InsufficientStorage)
        self.assertEqual(self.store.refused["over_quota"], 1)
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"1234567890"))  # replacing counts the old
        self.assertEqual(self.successResultOf(self.store.used_bytes(CUSTOMER)), 10)
        self.assertEqual(self.successResultOf(self.store.delete(CUSTOMER, "v/")), 1)
        self.assertEqual(self.successResultOf(self.store.used_bytes(CUSTOMER)), 0)
        self.assertRaises(BadRequest, self.store.set_quota, CUSTOMER, -1)
        self.store.set_quota(CUSTOMER, None)
        self.assertIsNone(self.store.quota(CUSTOMER))

    def test_usage_is_counted_from_disk_after_restart(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"x" * 100))
        again = DiskStore(self.root)
        self.assertEqual(self.successResultOf(again.used_bytes(CUSTOMER)), 100)
        self.assertEqual(self.successResultOf(again.total_used()), 100)

    def test_leftover_temp_files_are_not_listed(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"x"))
        space = os.path.join(os.path.abspath(self.root), CUSTOMER, "v", "0")
        with open(os.path.join(space, ".0.abc.tmp"), "wb") as handle:
            handle.write(b"half")
        self.assertEqual(list(self.successResultOf(self.store.list_blocks(CUSTOMER, ""))), ["v/0/0"])

    def test_remove_customer_frees_everything(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"x" * 7))
        self.assertEqual(self.successResultOf(self.store.remove_customer(CUSTOMER)), 7)
        self.assertEqual(self.store.customers(), [])
        self.assertEqual(self.successResultOf(self.store.used_bytes(CUSTOMER)), 0)

    def test_work_goes_through_the_injected_thread_runner(self) -> None:
        calls = []

        def runner(fn, *args):
            calls.append(fn.__name__)
            return defer.maybeDeferred(fn, *args)

        store = DiskStore(self.mktemp(), runner)
        self.successResultOf(store.store_block(CUSTOMER, "v/0/0", b"x"))
        self.successResultOf(store.fetch_block(CUSTOMER, "v/0/0"))
        self.successResultOf(store.list_blocks(CUSTOMER, ""))
        self.successResultOf(store.delete(CUSTOMER, "v/0/0"))
        self.assertEqual(calls, ["_store", "_read", "_list", "_delete"])


class DurableDirectoryTests(unittest.TestCase):
    """A directory created for a block is flushed into its parent before the store is acknowledged."""

    def setUp(self) -> None:
        self.flushed: list[str] = []
        real = disk_store.fsync_dir

        def record(path: str) -> None:
            self.flushed.append(path)
            real(path)

        self.patch(disk_store, "fsync_dir", record)
        self.store = DiskStore(self.mktemp())
        self.space = os.path.join(self.store.root, customer_dirname(CUSTOMER))

    def test_new_directories_are_flushed_into_their_parents(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/0/0", b"block"))
        self.assertEqual(self.flushed, [self.store.root, self.space, os.path.join(self.space, "v1")])

    def test_existing_directories_are_not_flushed_again(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/0/0", b"block"))
        self.flushed.clear()
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/0/1", b"block"))
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/0/1", b"again"))
        self.assertEqual(self.flushed, [])
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/1/0", b"block"))
        self.assertEqual(self.flushed, [os.path.join(self.space, "v1")])
        self.assertEqual(self.successResultOf(self.store.fetch_block(CUSTOMER, "v1/1/0")), b"block")


class BlockBufferTests(unittest.TestCase):
    """Immutable block data (bytes, or a view of bytes, as the desk passes it) is written without a copy;
    mutable data is snapshotted when the store is asked for, not when the thread gets to it."""

    def setUp(self) -> None:
        self.queued: list = []

        def later(fn, *args):
            d = defer.Deferred()
            self.queued.append((d, fn, args))
            return d

        self.store = DiskStore(self.mktemp(), run_in_thread=later)

    def run_queued(self) -> None:
        while self.queued:
            d, fn, args = self.queued.pop(0)
            d.callback(fn(*args))

    def test_a_view_of_bytes_and_a_mutable_buffer(self) -> None:
        payload = b"head" + b"view block"
        stored_view = self.store.store_block(CUSTOMER, "v1/0/0", memoryview(payload)[4:])
        mutable = bytearray(b"original")
        stored_copy = self.store.store_block(CUSTOMER, "v1/0/1", mutable)
        mutable[:] = b"changed!"
        self.run_queued()
        self.successResultOf(stored_view)
        self.successResultOf(stored_copy)
        read = [self.store.fetch_block(CUSTOMER, path) for path in ("v1/0/0", "v1/0/1")]
        self.run_queued()
        self.assertEqual([self.successResultOf(d) for d in read], [b"view block", b"original"])
