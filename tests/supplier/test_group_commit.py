"""Tests for bitnode.supplier.group_commit and the DiskStore's group commit: blocks that arrive while a
write runs are written together, and no block is acknowledged before its data and directory are fsynced."""

from __future__ import annotations

import errno
import os

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.errors import InsufficientStorage, TooManyRequests
from bitnode.supplier.disk_store import DiskStore, StoreLimits, customer_dirname
from bitnode.supplier.group_commit import PendingWrite, WriteQueue, write_batch

CUSTOMER = "alice@127.0.0.1_8084"


class HeldThreads:
    """A run_in_thread whose calls wait until the test runs them (the reactor thread never blocks)."""

    def __init__(self) -> None:
        self.queued: list[tuple[defer.Deferred, object, tuple]] = []

    def __call__(self, fn, *args):
        d = defer.Deferred()
        self.queued.append((d, fn, args))
        return d

    def run_next(self):
        d, fn, args = self.queued.pop(0)
        try:
            result = fn(*args)
        except Exception as err:  # noqa: BLE001 - handed to the caller, as deferToThread does
            d.errback(err)
        else:
            d.callback(result)


class FakeFsync:
    """Records what was fsynced (file or directory, by path) and, at that moment, which blocks were answered;
    can be told to fail for some paths."""

    def __init__(self, answered) -> None:
        self.answered = answered
        self.events: list[tuple[str, str, frozenset]] = []
        self.fail_for: set[str] = set()

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        kind = "dir" if os.path.isdir(path) else "file"
        self.events.append((kind, path, frozenset(self.answered())))
        if any(path.endswith(end) for end in self.fail_for):
            raise OSError(errno.EIO, "fake I/O error")
        os.fsync(fd)


class GroupCommitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.threads = HeldThreads()
        self.stores: dict[str, defer.Deferred] = {}
        self.fsync = FakeFsync(lambda: {path for path, d in self.stores.items() if d.called})
        self.limits = StoreLimits(reserve_bytes=0)
        self.store = DiskStore(self.mktemp(), self.threads, lambda: self.limits, fsync=self.fsync)
        self.space = os.path.join(self.store.root, customer_dirname(CUSTOMER))

    def put(self, path: str, data: bytes = b"block") -> defer.Deferred:
        d = self.stores[path] = self.store.store_block(CUSTOMER, path, data)
        return d

    def batch_paths(self, index: int = 0) -> list[str]:
        """The block paths of a queued worker call (a batch)."""
        _, fn, args = self.threads.queued[index]
        self.assertEqual(fn.__name__, "_store_batch")
        return [path for path, _target, _data, _sha256 in args[1]]

    def test_blocks_arriving_during_a_write_are_written_together(self) -> None:
        self.put("v/0/0")
        self.assertEqual(self.batch_paths(), ["v/0/0"])  # a lone block goes at once: no timer
        for path in ("v/1/0", "v/2/0", "v/3/0"):
            self.put(path)
        self.assertEqual(len(self.threads.queued), 1)  # they wait for the running batch
        self.threads.run_next()
        self.assertIsNone(self.successResultOf(self.stores["v/0/0"]))
        self.assertEqual(self.batch_paths(), ["v/1/0", "v/2/0", "v/3/0"])
        self.threads.run_next()
        for path in ("v/1/0", "v/2/0", "v/3/0"):
            self.assertIsNone(self.successResultOf(self.stores[path]))
            self.assertEqual(self.successResultOf(self.drain(self.store.fetch_block(CUSTOMER, path))), b"block")
        self.assertEqual(dict(self.store.batches), {"batches": 2, "blocks": 4, "largest": 3})
        second = self.fsync.events[5:]  # after the first batch: 3 folders made in "v", one file fsync each ...
        self.assertEqual([kind for kind, _, _ in second], ["file"] * 3 + ["dir"] * 4)
        dirs = [path for kind, path, _ in second if kind == "dir"]
        self.assertEqual(len(dirs), len(set(dirs)))  # ... and each directory flushed once for all of them
        self.assertIn(os.path.join(self.space, "v"), dirs)

    def test_no_block_is_acknowledged_before_its_data_and_its_directory_are_fsynced(self) -> None:
        for path in ("v/0/0", "v/0/1", "v/1/0"):
            self.put(path)
        while self.threads.queued:
            self.threads.run_next()
        for path in ("v/0/0", "v/0/1", "v/1/0"):
            self.assertIsNone(self.successResultOf(self.stores[path]))
            folder = os.path.join(self.space, *path.split("/")[:-1])
            name = path.rsplit("/", 1)[1]
            events = self.fsync.events
            data = next(i for i, (kind, p, _) in enumerate(events)
                        if kind == "file" and os.path.basename(p).startswith(f".{name}.") and os.path.dirname(p) == folder)
            entry = next(i for i, (kind, p, _) in enumerate(events) if i > data and kind == "dir" and p == folder)
            self.assertNotIn(path, events[data][2] | events[entry][2])  # not answered yet when they ran

    def test_a_block_whose_fsync_fails_is_not_acknowledged_and_leaves_nothing(self) -> None:
        for path in ("v/0/0", "v/0/1", "v/1/0"):
            self.put(path)
        self.threads.run_next()
        self.fsync.fail_for = {".tmp"}  # every data fsync of the next batch fails
        self.threads.run_next()
        for path in ("v/0/1", "v/1/0"):
            self.failureResultOf(self.stores[path], OSError)
        self.assertEqual(sorted(os.listdir(os.path.join(self.space, "v", "0"))), ["0"])  # no temp file left
        self.assertEqual(sorted(self.successResultOf(self._listing())), ["v/0/0"])

    def test_a_directory_whose_fsync_fails_fails_the_blocks_renamed_into_it(self) -> None:
        for path in ("v/0/0", "v/0/1", "v/1/0"):
            self.put(path)
        self.threads.run_next()
        self.fsync.fail_for = {os.path.join("v", "1")}
        self.threads.run_next()
        self.assertIsNone(self.successResultOf(self.stores["v/0/1"]))
        self.failureResultOf(self.stores["v/1/0"], OSError)

    def test_a_refused_block_fails_alone_and_the_quota_counts_the_batch(self) -> None:
        self.limits = StoreLimits(min_file_charge=0, min_dir_charge=0, reserve_bytes=0)
        self.store.set_quota(CUSTOMER, 10)
        self.put("v/0/0", b"1234")
        self.put("v/0/1", b"1234")
        self.put("v/0/2", b"1234")  # 12 bytes: over the quota with the two before it
        self.put("v/0/3", b"12")  # fits again: 10 bytes
        while self.threads.queued:
            self.threads.run_next()
        for path in ("v/0/0", "v/0/1", "v/0/3"):
            self.assertIsNone(self.successResultOf(self.stores[path]))
        self.failureResultOf(self.stores["v/0/2"], InsufficientStorage)
        usage = self.successResultOf(self.drain(self.store.usage(CUSTOMER)))
        self.assertEqual((usage["files"], usage["bytes"]), (3, 10))
        fresh = DiskStore(self.store.root)  # a walk of the disk says the same
        self.assertEqual(self.successResultOf(fresh.usage(CUSTOMER))["bytes"], 10)
        fresh.close()

    def test_the_same_block_twice_waits_for_the_next_batch(self) -> None:
        self.put("v/0/0", b"first")
        self.put("v/0/1", b"a")
        self.stores["again"] = self.store.store_block(CUSTOMER, "v/0/1", b"b")
        self.threads.run_next()
        self.assertEqual(self.batch_paths(), ["v/0/1"])
        self.threads.run_next()
        self.assertEqual(self.batch_paths(), ["v/0/1"])
        self.threads.run_next()
        self.assertIsNone(self.successResultOf(self.stores["again"]))
        self.assertEqual(self.successResultOf(self.drain(self.store.fetch_block(CUSTOMER, "v/0/1"))), b"b")
        self.assertEqual(self.successResultOf(self.drain(self.store.usage(CUSTOMER)))["files"], 2)

    def test_blocks_beyond_the_queue_bound_are_refused_as_busy_and_memory_stays_bounded(self) -> None:
        self.limits = StoreLimits(reserve_bytes=0, queue_bytes=10)
        self.put("v/0/0", b"12345678")  # taken at once into the running batch: the queue is empty again
        self.put("v/1/0", b"123456")
        self.put("v/2/0", b"1234")  # 10 bytes wait: still allowed
        self.failureResultOf(self.put("v/3/0", b"1"), TooManyRequests)  # would be 11
        self.assertEqual(self.store.refused["queue_full"], 1)
        while self.threads.queued:
            self.threads.run_next()
        for path in ("v/0/0", "v/1/0", "v/2/0"):
            self.assertIsNone(self.successResultOf(self.stores[path]))
        self.put("v/3/0", b"1")  # the queue drained: accepted again
        self.drain(self.stores["v/3/0"])
        self.assertIsNone(self.successResultOf(self.stores["v/3/0"]))

    def test_one_block_larger_than_the_queue_bound_is_still_taken_when_nothing_waits(self) -> None:
        self.limits = StoreLimits(reserve_bytes=0, queue_bytes=4)
        self.put("v/0/0", b"12345678")
        self.put("v/1/0", b"12345678")  # nothing waits (the first is being written): taken
        self.drain(self.stores["v/1/0"])
        self.assertIsNone(self.successResultOf(self.stores["v/1/0"]))

    def test_list_and_delete_wait_between_batches(self) -> None:
        self.put("v/0/0")
        self.put("v/1/0")
        listing = self.store.list_blocks(CUSTOMER, "")
        self.threads.run_next()  # first batch: v/0/0
        self.threads.run_next()  # the listing asked before the second batch was queued
        self.assertEqual(sorted(self.successResultOf(listing)), ["v/0/0"])
        self.threads.run_next()
        self.assertIsNone(self.successResultOf(self.stores["v/1/0"]))

    def drain(self, d: defer.Deferred) -> defer.Deferred:
        """Run the worker calls until ``d`` has its result."""
        done = []
        d.addBoth(lambda result: done.append(True) or result)
        while self.threads.queued and not done:
            self.threads.run_next()
        return d

    def _listing(self) -> defer.Deferred:
        return self.drain(self.store.list_blocks(CUSTOMER, ""))


class WriteQueueTests(unittest.TestCase):
    def write(self, target: str, size: int = 10) -> PendingWrite:
        return PendingWrite(target, "/s/" + target, b"x" * size)

    def test_batches_are_bounded_by_blocks_and_bytes_and_keep_the_order(self) -> None:
        queue = WriteQueue()
        for name in "abcdef":
            queue.add(self.write(name))
        self.assertEqual(queue.bytes, 60)
        self.assertEqual([w.block_path for w in queue.take(4, 1000)], ["a", "b", "c", "d"])
        self.assertEqual([w.block_path for w in queue.take(4, 15)], ["e"])
        self.assertEqual((len(queue), queue.bytes), (1, 10))

    def test_one_block_larger_than_the_byte_bound_still_goes(self) -> None:
        queue = WriteQueue()
        queue.add(self.write("big", 100))
        self.assertEqual(len(queue.take(4, 10)), 1)

    def test_a_target_is_never_twice_in_a_batch(self) -> None:
        queue = WriteQueue()
        for name in ("a", "b", "a", "c"):
            queue.add(self.write(name))
        self.assertEqual([w.block_path for w in queue.take(10, 1000)], ["a", "b"])
        self.assertEqual([w.block_path for w in queue.take(10, 1000)], ["a", "c"])


class WriteBatchTests(unittest.TestCase):
    def test_a_write_that_cannot_start_fails_alone(self) -> None:
        root = self.mktemp()
        os.makedirs(root)
        good = os.path.join(root, "good")
        results = write_batch([(os.path.join(root, "missing", "x"), b"1"), (good, b"2")], [])
        self.assertIsInstance(results[0], OSError)
        self.assertIsNone(results[1])
        with open(good, "rb") as handle:
            self.assertEqual(handle.read(), b"2")
        self.assertEqual(os.stat(good).st_mode & 0o777, 0o600)
        self.assertEqual(os.listdir(root), ["good"])

    def test_new_folders_are_made_and_their_parents_flushed(self) -> None:
        root = self.mktemp()
        os.makedirs(root)
        flushed = []

        def fsync(fd: int) -> None:
            flushed.append(os.readlink(f"/proc/self/fd/{fd}"))

        folder = os.path.join(os.path.abspath(root), "a", "b")
        results = write_batch([(os.path.join(folder, "x"), b"1"), (os.path.join(folder, "y"), b"2")],
                              [os.path.dirname(folder), folder], fsync=fsync)
        self.assertEqual(results, [None, None])
        dirs = [path for path in flushed if os.path.isdir(path)]
        self.assertEqual(sorted(dirs), sorted([os.path.abspath(root), os.path.dirname(folder), folder]))
        self.assertEqual(len(flushed) - len(dirs), 2)  # one fsync per file
