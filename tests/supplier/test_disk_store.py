"""Tests for bitnode.supplier.disk_store: the IStorageServer contract on disk, quotas, path safety."""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.errors import BadRequest, InsufficientStorage
from bitnode.supplier import disk_store
from bitnode.supplier.disk_store import DiskStore, StoreLimits, customer_dirname
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
        store = DiskStore(self.mktemp(), limits=lambda: StoreLimits(min_file_charge=0, min_dir_charge=0))
        store.set_quota(CUSTOMER, 10)
        self.successResultOf(store.store_block(CUSTOMER, "v/0/0", b"12345678"))
        self.failureResultOf(store.store_block(CUSTOMER, "v/0/1", b"123"), InsufficientStorage)
        self.assertEqual(store.refused["over_quota"], 1)
        self.successResultOf(store.store_block(CUSTOMER, "v/0/0", b"1234567890"))  # replacing counts the old
        self.assertEqual(self.successResultOf(store.used_bytes(CUSTOMER)), 10)
        self.assertEqual(self.successResultOf(store.delete(CUSTOMER, "v/")), 1)
        self.assertEqual(self.successResultOf(store.used_bytes(CUSTOMER)), 0)
        self.assertRaises(BadRequest, store.set_quota, CUSTOMER, -1)
        store.set_quota(CUSTOMER, None)
        self.assertIsNone(store.quota(CUSTOMER))

    def test_files_and_directories_are_charged_a_minimum(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"x" * 100))
        # one file at 4 KiB, two directories (v, v/0) at 4 KiB each
        self.assertEqual(self.successResultOf(self.store.usage(CUSTOMER)),
                         {"files": 1, "bytes": 100, "dirs": 2, "charged_bytes": 3 * 4096})
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/1", b"y" * 5000))
        self.successResultOf(self.store.store_block(CUSTOMER, "v/1/0", b""))
        self.assertEqual(self.successResultOf(self.store.used_bytes(CUSTOMER)), 4096 + 5000 + 4096 + 3 * 4096)
        self.assertEqual(self.successResultOf(self.store.delete(CUSTOMER, "v/0/")), 2)
        # v/0 went with its blocks
        self.assertEqual(self.successResultOf(self.store.usage(CUSTOMER)),
                         {"files": 1, "bytes": 0, "dirs": 2, "charged_bytes": 3 * 4096})
        self.assertFalse(os.path.exists(os.path.join(self.store.root, CUSTOMER, "v", "0")))

    def test_a_changed_minimum_charge_applies_at_once(self) -> None:
        limits = [StoreLimits(min_file_charge=1000, min_dir_charge=0)]
        store = DiskStore(self.mktemp(), limits=lambda: limits[0])
        for i in range(3):
            self.successResultOf(store.store_block(CUSTOMER, f"v/0/{i}", b"x" * (i * 700)))
        self.assertEqual(self.successResultOf(store.used_bytes(CUSTOMER)), 1000 + 1000 + 1400)
        limits[0] = StoreLimits(min_file_charge=2000, min_dir_charge=10)
        self.assertEqual(self.successResultOf(store.used_bytes(CUSTOMER)), 3 * 2000 + 2 * 10)

    def test_usage_is_counted_from_disk_after_restart(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"x" * 100))
        again = DiskStore(self.root)
        self.assertEqual(self.successResultOf(again.usage(CUSTOMER)),
                         {"files": 1, "bytes": 100, "dirs": 2, "charged_bytes": 3 * 4096})
        self.assertEqual(self.successResultOf(again.total_used()), 100)
        self.assertEqual(again.rehashed, 0)  # the index written with the block is trusted after the check

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
        self.assertEqual(calls, ["_store_batch", "_read", "_list", "_delete"])


class DurableDirectoryTests(unittest.TestCase):
    """A directory created for a block is flushed into its parent before the store is acknowledged,
    and the block's own directory after its rename; a directory that exists and gets no entry is not."""

    def setUp(self) -> None:
        self.flushed: list[str] = []

        def record(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if os.path.isdir(path):
                self.flushed.append(path)
            os.fsync(fd)

        self.store = DiskStore(self.mktemp(), fsync=record)
        self.space = os.path.join(self.store.root, customer_dirname(CUSTOMER))

    def test_new_directories_are_flushed_into_their_parents(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/0/0", b"block"))
        self.assertEqual(sorted(self.flushed), sorted([self.store.root, self.space, os.path.join(self.space, "v1"),
                                                       os.path.join(self.space, "v1", "0")]))

    def test_existing_directories_are_not_flushed_again(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/0/0", b"block"))
        self.flushed.clear()
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/0/1", b"block"))
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/0/1", b"again"))
        self.assertEqual(self.flushed, [os.path.join(self.space, "v1", "0")] * 2)  # the renames' directory
        self.flushed.clear()
        self.successResultOf(self.store.store_block(CUSTOMER, "v1/1/0", b"block"))
        self.assertEqual(sorted(self.flushed), [os.path.join(self.space, "v1"), os.path.join(self.space, "v1", "1")])
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


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StoredHashTests(unittest.TestCase):
    """Listings come from the hashes taken when each block was written, and those stay right."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.store = DiskStore(self.root)
        self.space = os.path.join(self.store.root, CUSTOMER)

    def listing(self, store: DiskStore | None = None, prefix: str = "") -> dict:
        return self.successResultOf((store or self.store).list_blocks(CUSTOMER, prefix))

    def test_a_listing_reads_no_stored_file(self) -> None:
        for i in range(20):
            self.successResultOf(self.store.store_block(CUSTOMER, f"v/{i}/0", b"%d" % i * 1000))
        opened = []
        real_open = open

        def counting_open(path, *args, **kwargs):
            opened.append(path)
            return real_open(path, *args, **kwargs)

        disk_store.open = counting_open  # shadows the builtin for the module's own calls
        self.addCleanup(delattr, disk_store, "open")
        listing = self.listing()
        self.assertEqual(len(listing), 20)
        self.assertEqual(listing["v/7/0"], (1000, sha(b"7" * 1000)))
        self.assertEqual(opened, [])

    def test_a_hash_the_caller_had_is_indexed_without_hashing_again(self) -> None:
        # the desk passes the hash kept while the packet streamed in; a stand-in value shows it is the one used
        given = "ab" * 32
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"streamed", sha256=given))
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/1", b"hashed here"))
        self.assertEqual(self.listing(), {"v/0/0": (8, given), "v/0/1": (11, sha(b"hashed here"))})

    def test_an_overwrite_lists_the_new_hash_also_after_a_restart(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"old"))
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"brand new"))
        self.assertEqual(self.listing(), {"v/0/0": (9, sha(b"brand new"))})
        self.store.close()
        again = DiskStore(self.root)
        self.assertEqual(self.listing(again), {"v/0/0": (9, sha(b"brand new"))})
        self.assertEqual(again.rehashed, 0)

    def test_a_lost_index_is_rebuilt_from_the_files(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"block a"))
        self.successResultOf(self.store.store_block(CUSTOMER, "w/1/2", b"block b"))
        self.store.close()
        for name in os.listdir(self.store.root):
            if name.startswith(".index"):
                os.unlink(os.path.join(self.store.root, name))
        again = DiskStore(self.root)
        self.assertEqual(self.listing(again), {"v/0/0": (7, sha(b"block a")), "w/1/2": (7, sha(b"block b"))})
        self.assertEqual(again.rehashed, 2)

    def test_the_first_walk_only_stats_and_the_first_listing_hashes(self) -> None:
        for i in range(5):
            self.successResultOf(self.store.store_block(CUSTOMER, f"v/{i}/0", b"old data %d" % i))
        self.store.close()
        os.unlink(os.path.join(self.store.root, ".index.sqlite"))  # data from before the index
        hashed = []
        real = disk_store._hash_file
        self.patch(disk_store, "_hash_file", lambda path: hashed.append(path) or real(path))
        again = DiskStore(self.root)
        self.successResultOf(again.store_block(CUSTOMER, "v/9/0", b"new"))
        self.assertEqual(self.successResultOf(again.usage(CUSTOMER))["files"], 6)
        self.assertEqual(hashed, [])  # a store did not wait for old files to be read
        listing = self.listing(again, "v/3/")
        self.assertEqual(listing, {"v/3/0": (10, sha(b"old data 3"))})
        self.assertEqual(len(hashed), 1)  # only what the listing showed
        self.assertEqual(len(self.listing(again)), 6)
        self.assertEqual(len(hashed), 5)
        self.listing(again)
        self.assertEqual(len(hashed), 5)  # once

    def test_a_file_changed_behind_the_index_is_hashed_again(self) -> None:
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/0", b"as stored"))
        self.successResultOf(self.store.store_block(CUSTOMER, "v/0/1", b"gone soon"))
        self.store.close()
        with open(os.path.join(self.space, "v", "0", "0"), "wb") as handle:
            handle.write(b"changed by hand, longer")  # a lost index row of an overwrite looks the same
        os.unlink(os.path.join(self.space, "v", "0", "1"))
        again = DiskStore(self.root)
        self.assertEqual(self.listing(again), {"v/0/0": (23, sha(b"changed by hand, longer"))})
        self.assertEqual(self.successResultOf(again.usage(CUSTOMER))["files"], 1)

    def test_prefixes_select_subtrees_exactly(self) -> None:
        for path in ("v1/0/0", "v1/1/0", "v1/10/0", "v10/0/0", "v1-x/0/0"):
            self.successResultOf(self.store.store_block(CUSTOMER, path, b"x"))
        self.assertEqual(list(self.listing(prefix="v1/")), ["v1/0/0", "v1/1/0", "v1/10/0"])
        self.assertEqual(list(self.listing(prefix="v1/1/")), ["v1/1/0"])
        self.assertEqual(list(self.listing(prefix="v1/1/0")), ["v1/1/0"])
        self.assertEqual(list(self.listing(prefix="v1")), [])
        self.assertEqual(self.successResultOf(self.store.delete(CUSTOMER, "v1/")), 3)
        self.assertEqual(list(self.listing()), ["v1-x/0/0", "v10/0/0"])

    def test_a_broken_index_is_moved_aside_and_built_again(self) -> None:
        index = os.path.join(self.mktemp() + "-meta", "blocks.sqlite")
        os.makedirs(os.path.dirname(index))
        store = DiskStore(self.root, index_path=index)
        self.successResultOf(store.store_block(CUSTOMER, "v/0/0", b"kept"))
        store.close()
        with open(index, "wb") as handle:
            handle.write(b"this is not a database" * 100)
        again = DiskStore(self.root, index_path=index)
        self.assertIn("moved aside", again.index_problem)
        self.assertTrue(os.path.exists(index + ".broken"))
        self.assertEqual(self.listing(again), {"v/0/0": (4, sha(b"kept"))})


class TempFileTests(unittest.TestCase):
    """Temp files of writes a crash interrupted: removed when the space is first used, never counted."""

    def test_leftover_temp_files_are_removed_at_start_and_never_counted(self) -> None:
        root = self.mktemp()
        store = DiskStore(root, limits=lambda: StoreLimits(min_file_charge=0, min_dir_charge=0))
        self.successResultOf(store.store_block(CUSTOMER, "v/0/0", b"x" * 10))
        store.close()
        folder = os.path.join(os.path.abspath(root), CUSTOMER, "v", "0")
        leftovers = [os.path.join(folder, ".1.a1b2.tmp"), os.path.join(folder, "..0.zz.tmp")]
        for path in leftovers:
            with open(path, "wb") as handle:
                handle.write(b"half written" * 1000)
        again = DiskStore(root, limits=lambda: StoreLimits(min_file_charge=0, min_dir_charge=0))
        self.assertEqual(self.successResultOf(again.total_used()), 10)  # temp files are not data
        self.assertEqual(self.successResultOf(again.load_all([CUSTOMER])), 1)
        self.assertEqual([os.path.exists(p) for p in leftovers], [False, False])
        self.assertEqual(again.temp_files_removed, 2)
        self.assertEqual(self.successResultOf(again.used_bytes(CUSTOMER)), 10)

