"""Tests for bitnode.storage.uploader (and the helpers the downloader tests share)."""

from __future__ import annotations

import hashlib
import os
import random

from twisted.internet import defer, task
from twisted.trial import unittest

from bitnode.errors import BadRequest, Conflict
from bitnode.storage import uploader as up_mod
from bitnode.storage import wire
from bitnode.storage.memory_grid import FaultyServer, MemoryStorageServer
from bitnode.storage.ports import TransferCancelled, block_path
from bitnode.storage.uploader import FileChanged, Uploader, UploadFailed

SEG = 64 * 1024
K, N = 3, 5
CUSTOMER = "alice@example.net"
VERSION = "F20250101T000000-test"
KEY = bytes(range(32))


def sync_thread(fn, *args):
    """A run_in_thread fake that runs the work at once on the calling thread."""
    return defer.maybeDeferred(fn, *args)


class CountingThreads:
    """run_in_thread fake counting calls per function name."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def __call__(self, fn, *args):
        self.calls[fn.__name__] = self.calls.get(fn.__name__, 0) + 1
        return defer.maybeDeferred(fn, *args)


def make_grid(clock, n=N, slow=0.0, hang=False):
    """n in-memory suppliers, each wrapped in a FaultyServer that answers ``slow`` seconds late when set,
    or (``hang``) not at all until released."""
    grid = [FaultyServer(MemoryStorageServer(), clock, name=f"s{i}") for i in range(n)]
    for server in grid:
        if slow:
            server.slow(slow)
        if hang:
            server.hang()
    return grid


def write_file(testcase, size, seed=0):
    """A file of ``size`` deterministic random bytes; returns (path, data)."""
    path = testcase.mktemp()
    data = random.Random(seed).randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
    return path, data


def upload_sync(testcase, grid, path, **kw):
    """Upload with synchronous fakes and return the UploadResult."""
    clock = kw.pop("clock", task.Clock())
    uploader = Uploader(sync_thread, clock, grid, K, N, segment_size=SEG, **kw)
    return testcase.successResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER))


class UploadTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.grid = make_grid(self.clock)

    def test_segments_and_blocks_are_stored_with_catalog_hashes(self):
        path, _ = write_file(self, 2 * SEG + 10)
        result = upload_sync(self, self.grid, path)
        self.assertEqual((result.file_size, result.segments_total), (2 * SEG + 10, 3))
        self.assertEqual([m.index for m in result.segments], [0, 1, 2])
        self.assertEqual([m.plaintext_length for m in result.segments], [SEG, SEG, 10])
        self.assertEqual(result.degraded, ())
        for pos, server in enumerate(self.grid):
            listing = self.successResultOf(server.list_blocks(CUSTOMER, VERSION + "/"))
            self.assertEqual(len(listing), 3)
            for meta in result.segments:
                self.assertEqual(meta.stored, (0, 1, 2, 3, 4))
                size, sha = listing[block_path(VERSION, meta.index, pos)]
                self.assertEqual(sha, meta.block_sha256[pos])

    def test_empty_file_is_one_empty_segment(self):
        path, _ = write_file(self, 0)
        result = upload_sync(self, self.grid, path)
        self.assertEqual(len(result.segments), 1)
        self.assertEqual(result.segments[0].plaintext_length, 0)
        self.assertEqual(self.grid[4].calls["store_block"], 1)

    def test_n_minus_k_offline_is_ok_but_degraded(self):
        path, _ = write_file(self, SEG + 1)
        self.grid[0].go_offline()
        self.grid[3].go_offline()
        result = upload_sync(self, self.grid, path)
        self.assertEqual(result.degraded, (0, 1))
        self.assertEqual(result.segments[0].stored, (1, 2, 4))
        self.assertEqual(result.segments[0].missing, (0, 3))
        self.assertEqual(
            sorted((f.segment_index, f.block_index) for f in result.failures),
            [(0, 0), (0, 3), (1, 0), (1, 3)],
        )

    def test_missing_supplier_position_counts_as_missing(self):
        path, _ = write_file(self, 10)
        grid = list(self.grid)
        grid[2] = None
        result = upload_sync(self, grid, path)
        self.assertEqual(result.segments[0].missing, (2,))
        self.assertEqual(result.failures[0].reason, "no supplier")

    def test_fewer_than_k_acknowledged_is_never_ok(self):
        path, _ = write_file(self, SEG)
        for s in self.grid[:3]:
            s.go_offline()
        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG)
        err = self.failureResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER), UploadFailed).value
        self.assertEqual(err.completed, ())
        self.assertEqual(err.resume_from, 0)
        self.assertEqual(len(err.failures), 3)

    def test_required_blocks_can_demand_more_than_k(self):
        path, _ = write_file(self, 10)
        self.grid[0].go_offline()
        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG, required_blocks=N)
        self.failureResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER), UploadFailed)

    def test_required_blocks_below_k_is_refused(self):
        self.assertRaises(BadRequest, Uploader, sync_thread, self.clock, self.grid, K, N, required_blocks=2)

    def test_failure_midway_reports_resume_point_and_resume_completes(self):
        path, _ = write_file(self, 4 * SEG)

        def on_progress(p):
            if p.segments_done == 2:
                for s in self.grid[:3]:
                    s.go_offline()

        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG, max_in_flight=1)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER, on_progress=on_progress)
        err = self.failureResultOf(d, UploadFailed).value
        self.assertEqual([m.index for m in err.completed], [0, 1])
        self.assertEqual(err.resume_from, 2)
        for s in self.grid:
            s.heal()
        before = [s.calls["store_block"] for s in self.grid]
        result = self.successResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER, resume_from=2))
        self.assertEqual([m.index for m in result.segments], [2, 3])
        self.assertEqual(
            [s.calls["store_block"] - b for s, b in zip(self.grid, before, strict=True)], [2] * 5
        )

    def test_store_timeout_marks_block_missing(self):
        path, _ = write_file(self, 10)
        self.grid[1].hang()
        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG, store_timeout=10)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER)
        self.assertNoResult(d)
        self.clock.advance(10)
        result = self.successResultOf(d)
        self.assertEqual(result.segments[0].missing, (1,))
        self.assertEqual(result.failures[0].reason, "timeout")

    def test_a_silent_supplier_costs_the_grace_not_the_store_timeout(self):
        path, _ = write_file(self, 10)
        self.grid[4].hang()
        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG, store_timeout=120)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        result = self.successResultOf(d)
        self.assertEqual(result.segments[0].missing, (4,))
        self.assertEqual([(f.block_index, f.reason) for f in result.failures],
                         [(4, "given up: no answer while the others answered")])
        self.assertEqual(self.grid[4].hung_calls, 0, "the store given up is cancelled")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_given_up_supplier_is_skipped_for_a_while_then_tried_again(self):
        path, _ = write_file(self, 5 * SEG)
        for server in self.grid[:4]:
            server.slow(20.0)  # each segment takes 20 s: the skip ends within the upload
        self.grid[4].hang()
        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG, max_in_flight=1,
                            store_timeout=120)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER)
        while not d.called:
            self.clock.advance(10)
        result = self.successResultOf(d)
        # Given up at 100 s (four times the slowest answer after the first ack), skipped until 160 s.
        self.assertEqual([f.reason.split(":")[0] for f in result.failures if f.block_index == 4],
                         ["given up", "skipped", "skipped", "skipped", "given up"])
        self.assertEqual(self.grid[4].calls["store_block"], 2)
        self.assertTrue(all(meta.missing == (4,) for meta in result.segments))

    def test_a_given_up_supplier_is_still_asked_when_too_few_others_are_left(self):
        path, _ = write_file(self, 2 * SEG)
        self.grid[4].slow(30.0)  # given up in the first segment ...
        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG, max_in_flight=1,
                            store_timeout=120)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER)
        self.clock.advance(9.9)
        for server in self.grid[1:3]:
            server.go_offline()  # ... then two others go: without it the second segment has 2 of 3
        while not d.called:
            self.clock.advance(10)
        result = self.successResultOf(d)
        self.assertEqual(self.grid[4].calls["store_block"], 2)
        self.assertEqual(result.segments[1].missing, (1, 2))

    def test_slow_but_steady_suppliers_are_waited_for(self):
        path, _ = write_file(self, 3 * SEG)
        for pos, server in enumerate(self.grid):
            server.slow(5.0 + pos)  # the last two answer after the required three
        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG, max_in_flight=1)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER)
        while not d.called:
            self.clock.advance(1)
        result = self.successResultOf(d)
        self.assertEqual(result.failures, ())
        self.assertTrue(all(meta.missing == () for meta in result.segments))

    def test_one_upload_at_a_time(self):
        path, _ = write_file(self, 10)
        for s in self.grid:
            s.hang()
        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER)
        self.assertRaises(Conflict, uploader.upload, path, VERSION, KEY, CUSTOMER)
        uploader.cancel()
        self.failureResultOf(d, TransferCancelled)

    def test_bad_arguments_raise_at_the_edge(self):
        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG)
        self.assertRaises(BadRequest, uploader.upload, "p", "../v", KEY, CUSTOMER)
        self.assertRaises(BadRequest, uploader.upload, "p", VERSION, b"k", CUSTOMER)
        self.assertRaises(BadRequest, uploader.upload, "p", VERSION, KEY, CUSTOMER, resume_from=-1)
        self.assertRaises(BadRequest, Uploader, sync_thread, self.clock, self.grid[:4], K, N)
        self.assertRaises(BadRequest, Uploader, sync_thread, self.clock, self.grid, 4, 3)

    def test_resume_beyond_end_is_refused(self):
        path, _ = write_file(self, 10)
        uploader = Uploader(sync_thread, self.clock, self.grid, K, N, segment_size=SEG)
        self.failureResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER, resume_from=2), BadRequest)

    def test_file_changing_size_is_detected(self):
        path, _ = write_file(self, 3 * SEG)

        def shrinking_thread(fn, *args):
            if fn is up_mod.prepare_segment and args[1] == 1:
                with open(path, "r+b") as f:
                    f.truncate(SEG + 5)
            return defer.maybeDeferred(fn, *args)

        uploader = Uploader(shrinking_thread, self.clock, self.grid, K, N, segment_size=SEG, max_in_flight=1)
        self.failureResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER), FileChanged)


class ResumeTests(unittest.TestCase):
    def test_resume_from_skips_reading_and_sending_done_segments(self):
        clock = task.Clock()
        grid = make_grid(clock)
        path, _ = write_file(self, 5 * SEG)
        threads = CountingThreads()
        uploader = Uploader(threads, clock, grid, K, N, segment_size=SEG)
        result = self.successResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER, resume_from=3))
        self.assertEqual([m.index for m in result.segments], [3, 4])
        self.assertEqual(threads.calls["prepare_segment"], 2)
        self.assertEqual([s.calls["store_block"] for s in grid], [2] * 5)
        self.assertEqual({c.path.split("/")[1] for s in grid for c in s.log}, {"3", "4"})

    def test_resumed_blocks_are_identical_to_a_full_upload(self):
        clock = task.Clock()
        path, _ = write_file(self, 3 * SEG)
        full = upload_sync(self, make_grid(clock), path)
        uploader = Uploader(sync_thread, clock, make_grid(clock), K, N, segment_size=SEG)
        part = self.successResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER, resume_from=1))
        self.assertEqual(part.segments, full.segments[1:])


class SegmentHookTests(unittest.TestCase):
    def test_every_stored_segment_is_reported_before_it_counts(self):
        clock = task.Clock()
        path, _ = write_file(self, 3 * SEG)
        seen = []
        uploader = Uploader(sync_thread, clock, make_grid(clock), K, N, segment_size=SEG)
        result = self.successResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER, on_segment=seen.append))
        self.assertEqual(sorted(m.index for m in seen), [0, 1, 2])
        self.assertEqual(sorted(seen, key=lambda m: m.index), list(result.segments))

    def test_a_failing_hook_fails_the_upload(self):
        clock = task.Clock()
        path, _ = write_file(self, 2 * SEG)

        def refuse(meta):
            raise OSError("disk full")

        uploader = Uploader(sync_thread, clock, make_grid(clock), K, N, segment_size=SEG)
        self.failureResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER, on_segment=refuse), OSError)


class CancelTests(unittest.TestCase):
    def test_cancel_stops_sending(self):
        clock = task.Clock()
        grid = make_grid(clock, hang=True)
        path, _ = write_file(self, 10 * SEG)
        uploader = Uploader(sync_thread, clock, grid, K, N, segment_size=SEG, max_in_flight=2)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER)
        self.assertEqual([s.calls["store_block"] for s in grid], [2] * 5)
        uploader.cancel()
        self.failureResultOf(d, TransferCancelled)
        for s in grid:
            s.release()
        clock.advance(1000)
        self.assertEqual([s.calls["store_block"] for s in grid], [2] * 5)
        self.assertEqual([s.hung_calls for s in grid], [0] * 5)
        self.assertEqual(uploader.in_flight, 0)

    def test_cancel_while_segment_is_in_the_thread_pool(self):
        clock = task.Clock()
        grid = make_grid(clock)
        pending = []

        def manual_thread(fn, *args):
            d = defer.Deferred()
            pending.append((d, fn, args))
            return d

        path, _ = write_file(self, 3 * SEG)
        uploader = Uploader(manual_thread, clock, grid, K, N, segment_size=SEG)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER)
        first, fn, args = pending.pop(0)
        first.callback(fn(*args))  # stat done; two segments now being prepared
        uploader.cancel()
        for waiting, fn, args in pending:
            waiting.callback(fn(*args))
        self.failureResultOf(d, TransferCancelled)
        self.assertEqual(sum(s.calls["store_block"] for s in grid), 0)


class MemoryBoundTests(unittest.TestCase):
    def test_never_more_than_max_in_flight_segments_held(self):
        clock = task.Clock()
        grid = make_grid(clock, slow=1.0)
        path, data = write_file(self, 12 * SEG)
        threads = CountingThreads()
        uploader = Uploader(threads, clock, grid, K, N, segment_size=SEG, max_in_flight=3)
        finished = []
        d = uploader.upload(path, VERSION, KEY, CUSTOMER, on_progress=finished.append)
        while not d.called:
            held = threads.calls.get("prepare_segment", 0) - len(finished)
            self.assertLessEqual(held, 3)
            self.assertLessEqual(uploader.in_flight, 3)
            clock.advance(1.0)
        result = self.successResultOf(d)
        self.assertEqual(len(result.segments), 12)
        self.assertEqual(uploader.peak_in_flight, 3)
        self.assertEqual(uploader.in_flight, 0)

    def test_hanging_suppliers_stop_reading_after_max_in_flight_segments(self):
        clock = task.Clock()
        grid = make_grid(clock, hang=True)
        path, _ = write_file(self, 20 * SEG)
        threads = CountingThreads()
        uploader = Uploader(threads, clock, grid, K, N, segment_size=SEG, max_in_flight=4)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER)
        self.assertEqual(threads.calls["prepare_segment"], 4)
        for s in grid:
            s.release()
        self.successResultOf(d)
        self.assertEqual(threads.calls["prepare_segment"], 20)


class ProgressTests(unittest.TestCase):
    def test_progress_reports_bytes_speed_and_eta_on_injected_clock(self):
        clock = task.Clock()
        grid = make_grid(clock, slow=2.0)
        path, _ = write_file(self, 4 * SEG)
        seen = []
        uploader = Uploader(sync_thread, clock, grid, K, N, segment_size=SEG, max_in_flight=1)
        d = uploader.upload(path, VERSION, KEY, CUSTOMER, resume_from=1, on_progress=seen.append)
        for _ in range(3):
            clock.advance(2.0)
        self.successResultOf(d)
        self.assertEqual([p.bytes_done for p in seen], [2 * SEG, 3 * SEG, 4 * SEG])
        self.assertEqual([p.segments_done for p in seen], [2, 3, 4])
        self.assertEqual(seen[0].speed, SEG / 2.0)
        self.assertEqual(seen[0].eta, 4.0)
        self.assertEqual(seen[-1].eta, 0.0)

    def test_broken_progress_callback_does_not_break_upload(self):
        clock = task.Clock()
        path, _ = write_file(self, 10)

        def broken(_):
            raise RuntimeError("observer bug")

        uploader = Uploader(sync_thread, clock, make_grid(clock), K, N, segment_size=SEG)
        self.successResultOf(uploader.upload(path, VERSION, KEY, CUSTOMER, on_progress=broken))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PipelineLimitTests(unittest.TestCase):
    def test_pipeline_limit_reports_throughput_and_stages(self):
        path, _ = write_file(self, 3 * SEG + 1)
        report = up_mod.pipeline_limit(path, 3, 5, SEG)
        self.assertEqual(report["bytes"], 3 * SEG + 1)
        self.assertGreater(report["mib_per_s"], 0)
        self.assertEqual(set(report["stages"]), {"read", "encrypt", "encode", "pack_hash"})

    def test_prepare_segment_blocks_hash_to_meta(self):
        path, data = write_file(self, 100)
        prepared = up_mod.prepare_segment(path, 0, SEG, 100, VERSION, KEY, K, N)
        self.assertEqual(len(prepared.blocks), N)
        self.assertEqual(prepared.block_sha256, tuple(hashlib.sha256(b).hexdigest() for b in prepared.blocks))
        for pos, (block, sealed) in enumerate(zip(prepared.blocks, prepared.payloads, strict=True)):
            # each block lives inside its Data payload (layout 2), whose digest the packet will sign
            self.assertIs(block.obj, sealed.payload)
            self.assertEqual(wire.decode_data(sealed.payload), (block_path(VERSION, 0, pos), bytes(block)))
            self.assertEqual(sealed.sha256, hashlib.sha256(sealed.payload).digest())
        self.assertEqual(prepared.plaintext_length, 100)
        self.assertFalse(os.path.exists(path + ".part"))
