"""Tests for bitnode.storage.downloader: whole-pipeline round trips through the memory grid."""

from __future__ import annotations

import hashlib
import itertools
import os

from twisted.internet import defer, reactor, task, threads
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.storage import blockformat, erasure, segment_crypto
from bitnode.storage import downloader as downloader_module
from bitnode.storage.downloader import Downloader, DownloadFailed
from bitnode.storage.ports import CheckedBlock, SegmentMeta, TransferCancelled, block_path
from bitnode.storage.uploader import Uploader
from tests.storage.test_local_files import parts_beside

from .test_uploader import CUSTOMER, KEY, SEG, VERSION, K, N, make_grid, sync_thread, upload_sync, write_file

SHA256 = hashlib.sha256  # the checking server's own, not counted where the downloader's is


class CheckingServer:
    """A server that checks each block against the expected hash itself, as a remote one does from its stream."""

    def __init__(self, inner):
        self.inner = inner
        self.checked = 0

    def fetch_block(self, customer_id, path, expected_sha256=None):
        def check(data):
            digest = SHA256(data).hexdigest()
            if digest != expected_sha256:
                raise blockformat.BlockCorrupt(f"{path}: hash differs")
            self.checked += 1
            return CheckedBlock(memoryview(data), digest)

        return self.inner.fetch_block(customer_id, path).addCallback(check)


class _Base(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.grid = make_grid(self.clock)

    def stored(self, size, seed=0):
        path, data = write_file(self, size, seed)
        return upload_sync(self, self.grid, path, clock=self.clock), data

    def download(self, result, **kw):
        dest = kw.pop("dest", None) or self.mktemp()
        dl = Downloader(sync_thread, self.clock, kw.pop("grid", self.grid), K, N, **kw)
        return dl, dest

    def assert_nothing_left(self, dest):
        self.assertFalse(os.path.exists(dest))
        self.assertEqual(parts_beside(dest), [])

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()


class RoundTripTests(_Base):
    def test_sizes_round_trip_byte_identical(self):
        for size in (0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG + 17):
            self.grid = make_grid(self.clock)
            result, data = self.stored(size, seed=size)
            dl, dest = self.download(result)
            got = self.successResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest))
            self.assertEqual(self.read(dest), data, size)
            self.assertEqual(got.bytes_written, size)
            self.assertEqual(got.problems, ())
            self.assertEqual(set(got.used_blocks), {(0, 1, 2)})
            self.assertEqual(parts_beside(dest), [])

    def store_old_format(self, data: bytes, pack) -> list[SegmentMeta]:
        """Blocks as a node stored them before block format 3: format 1 nonces, packed by ``pack``."""
        segments = []
        for index in range(max(1, -(-len(data) // SEG))):
            plain = data[index * SEG:(index + 1) * SEG]
            raw = erasure.encode(segment_crypto.encrypt_segment_v1(KEY, VERSION, index, plain), K, N)
            hashes = []
            for pos, s in enumerate(self.grid):
                block = pack(VERSION, index, pos, K, N, len(plain), raw[pos])
                self.assertIn(blockformat.unpack(block)[0].format_version, (1, 2))
                self.successResultOf(s.wrapped.store_block(CUSTOMER, block_path(VERSION, index, pos), block))
                hashes.append(hashlib.sha256(block).hexdigest())
            segments.append(SegmentMeta(index, len(plain), tuple(hashes), tuple(range(N))))
        return segments

    def test_version_1_and_2_blocks_stored_earlier_still_download(self):
        for pack in (blockformat.pack_v1, blockformat.pack):
            self.grid = make_grid(self.clock)
            data = os.urandom(2 * SEG + 5)
            segments = self.store_old_format(data, pack)
            dl, dest = self.download(None)
            got = self.successResultOf(dl.download(tuple(segments), VERSION, KEY, CUSTOMER, dest))
            self.assertEqual(self.read(dest), data)
            self.assertEqual(got.problems, ())

    def test_new_blocks_carry_the_segment_nonce(self):
        result, _ = self.stored(SEG + 3)
        for meta in result.segments:
            nonces = set()
            for pos, s in enumerate(self.grid):
                block = self.successResultOf(s.wrapped.fetch_block(CUSTOMER, block_path(VERSION, meta.index, pos)))
                header, _ = blockformat.unpack(block)
                self.assertEqual(header.format_version, 3)
                nonces.add(header.nonce)
            self.assertEqual(len(nonces), 1)

    def test_only_data_blocks_are_fetched_when_all_healthy(self):
        result, _ = self.stored(2 * SEG)
        dl, dest = self.download(result)
        self.successResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest))
        self.assertEqual([s.calls["fetch_block"] for s in self.grid], [2, 2, 2, 0, 0])

    def test_every_k_subset_decodes(self):
        result, data = self.stored(2 * SEG + 3)
        for subset in itertools.combinations(range(N), K):
            for i, s in enumerate(self.grid):
                s.heal()
                if i not in subset:
                    s.go_offline()
            dl, dest = self.download(result)
            got = self.successResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest))
            self.assertEqual(self.read(dest), data, subset)
            self.assertEqual(set(got.used_blocks), {subset})

    def test_replaces_existing_destination(self):
        result, data = self.stored(100)
        dl, dest = self.download(result)
        with open(dest, "wb") as f:
            f.write(b"old content")
        self.successResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest))
        self.assertEqual(self.read(dest), data)

    def test_upload_degraded_then_restore(self):
        self.grid[1].go_offline()
        self.grid[4].go_offline()
        result, data = self.stored(SEG + 5)
        for s in self.grid:
            s.heal()
        dl, dest = self.download(result)
        got = self.successResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest))
        self.assertEqual(self.read(dest), data)
        self.assertEqual(set(got.used_blocks), {(0, 2, 3)})
        self.assertEqual(self.grid[1].calls["fetch_block"], 0)


class FaultTests(_Base):
    def test_n_minus_k_offline_still_restores(self):
        result, data = self.stored(3 * SEG)
        self.grid[0].go_offline()
        self.grid[2].go_offline()
        dl, dest = self.download(result)
        got = self.successResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest))
        self.assertEqual(self.read(dest), data)
        self.assertEqual({p.kind for p in got.problems}, {"error"})

    def test_n_minus_k_plus_one_offline_fails_cleanly(self):
        result, _ = self.stored(3 * SEG)
        for s in self.grid[1:4]:
            s.go_offline()
        dl, dest = self.download(result)
        err = self.failureResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest), DownloadFailed)
        self.assertEqual(err.value.segment_index, 0)
        self.assertIn("only 2 of 3", str(err.value))
        self.assertEqual(sorted(p.block_index for p in err.value.problems), [1, 2, 3])
        self.assert_nothing_left(dest)

    def test_failure_leaves_existing_destination_untouched(self):
        result, _ = self.stored(SEG)
        for s in self.grid[:3]:
            s.go_offline()
        dl, dest = self.download(result)
        with open(dest, "wb") as f:
            f.write(b"previous")
        self.failureResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest), DownloadFailed)
        self.assertEqual(self.read(dest), b"previous")
        self.assertEqual(parts_beside(dest), [])

    def test_failure_in_a_later_segment_removes_partial_file(self):
        result, _ = self.stored(4 * SEG)
        for pos in (0, 1, 2):
            self.successResultOf(self.grid[pos].wrapped.delete(CUSTOMER, block_path(VERSION, 3, pos)))
        dl, dest = self.download(result)
        err = self.failureResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest), DownloadFailed)
        self.assertEqual(err.value.segment_index, 3)
        self.assertEqual({p.kind for p in err.value.problems}, {"missing"})
        self.assert_nothing_left(dest)

    def test_corrupt_block_is_detected_reported_and_parity_used(self):
        result, data = self.stored(2 * SEG)
        self.grid[1].corrupt(block_path(VERSION, 1, 1))
        dl, dest = self.download(result)
        got = self.successResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest))
        self.assertEqual(self.read(dest), data)
        self.assertEqual(got.corrupt_blocks, ((1, 1),))
        self.assertEqual(got.used_blocks, ((0, 1, 2), (0, 2, 3)))

    def test_blocks_a_server_checked_are_not_hashed_again_and_its_refusals_count_as_corrupt(self):
        result, data = self.stored(2 * SEG)
        self.grid[1].corrupt(block_path(VERSION, 1, 1))
        checking = [CheckingServer(server) for server in self.grid]
        dl, dest = self.download(result, grid=checking)
        hashed = []
        real_sha256 = downloader_module.hashlib.sha256
        self.patch(downloader_module.hashlib, "sha256", lambda *a: hashed.append(1) or real_sha256(*a))
        got = self.successResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest))
        self.assertEqual(self.read(dest), data)
        self.assertEqual(got.corrupt_blocks, ((1, 1),))
        self.assertEqual(got.used_blocks, ((0, 1, 2), (0, 2, 3)))
        self.assertEqual(hashed, [])
        self.assertEqual(sum(s.checked for s in checking), 6)

    def test_hanging_supplier_times_out_and_parity_is_used(self):
        result, data = self.stored(SEG)
        self.grid[0].hang()
        dl, dest = self.download(result, hedge_floor=10.0)  # no spare fetch before the timeout
        d = dl.download(result.segments, VERSION, KEY, CUSTOMER, dest, fetch_timeout=5.0)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        got = self.successResultOf(d)
        self.assertEqual(self.read(dest), data)
        self.assertEqual([(p.block_index, p.kind) for p in got.problems], [(0, "timeout")])
        self.assertEqual(got.used_blocks, ((1, 2, 3),))
        self.assertEqual(self.grid[0].hung_calls, 0)

    def test_hanging_supplier_costs_the_hedge_delay_not_the_timeout(self):
        result, data = self.stored(SEG)
        self.grid[0].hang()
        dl, dest = self.download(result)
        d = dl.download(result.segments, VERSION, KEY, CUSTOMER, dest, fetch_timeout=60.0)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)  # the hedge delay's floor: a parity block is fetched beside the silent one
        got = self.successResultOf(d)
        self.assertEqual(self.read(dest), data)
        self.assertEqual(got.used_blocks, ((1, 2, 3),))
        self.assertEqual(self.grid[0].hung_calls, 0, "the fetch nobody needs any more is cancelled")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_silent_supplier_is_asked_last_for_the_rest_of_the_download(self):
        result, data = self.stored(6 * SEG)
        self.grid[0].hang()
        dl, dest = self.download(result, max_in_flight=1)
        d = dl.download(result.segments, VERSION, KEY, CUSTOMER, dest, fetch_timeout=60.0)
        self.clock.advance(2.0)  # only the first segment waits
        got = self.successResultOf(d)
        self.assertEqual(self.read(dest), data)
        self.assertEqual(got.used_blocks, ((1, 2, 3),) * 6)
        self.assertEqual(self.grid[0].calls["fetch_block"], 1)

    def test_an_unexpected_error_in_one_fetch_is_logged_and_another_block_used(self):
        result, data = self.stored(SEG)
        real_verify = downloader_module.verify_block

        def verify(data, sha, version_id, index, pos, *rest):
            if pos == 0:
                raise RuntimeError("a bug")
            return real_verify(data, sha, version_id, index, pos, *rest)

        self.patch(downloader_module, "verify_block", verify)
        dl, dest = self.download(result)
        got = self.successResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest))
        self.assertEqual(self.read(dest), data)
        self.assertEqual([(p.block_index, p.kind) for p in got.problems], [(0, "error")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def with_a_slow_supplier(self, late: float, waited: float):
        """One segment downloaded (byte for byte) while supplier 2 answers ``late`` seconds late, after
        ``waited`` seconds of the clock: the download's result."""
        result, data = self.stored(SEG)
        self.grid[2].slow(late)
        dl, dest = self.download(result)
        d = dl.download(result.segments, VERSION, KEY, CUSTOMER, dest, fetch_timeout=5.0)
        self.clock.advance(waited)
        got = self.successResultOf(d)
        self.assertEqual(self.read(dest), data)
        return got

    def test_slow_supplier_within_the_hedge_delay_is_waited_for(self):
        got = self.with_a_slow_supplier(late=1.5, waited=1.5)
        self.assertEqual(got.used_blocks, ((0, 1, 2),))
        self.assertEqual(self.grid[3].calls["fetch_block"], 0)

    def test_slow_supplier_beyond_the_hedge_delay_gets_a_spare_block_beside_it(self):
        got = self.with_a_slow_supplier(late=3.0, waited=2.0)
        self.assertEqual(got.used_blocks, ((0, 1, 3),))
        self.assertEqual(got.problems, ())
        self.clock.advance(1.0)  # the late answer finds nobody waiting for it
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_hedge_delay_follows_how_fast_suppliers_answer(self):
        result, data = self.stored(3 * SEG)
        for server in self.grid:
            server.slow(3.0)  # everybody is slow: a spare block helps nobody after the first try
        dl, dest = self.download(result, max_in_flight=1)
        d = dl.download(result.segments, VERSION, KEY, CUSTOMER, dest, fetch_timeout=60.0)
        for _ in range(3):
            self.clock.advance(3.0)
        got = self.successResultOf(d)
        self.assertEqual(self.read(dest), data)
        fetches = sum(server.calls["fetch_block"] for server in self.grid)
        self.assertEqual(fetches, 3 * K + 1, "one spare fetch, in the first segment only")
        self.assertEqual(got.used_blocks, ((0, 1, 2),) * 3)
        self.assertEqual(got.problems, ())

    def test_blocks_swapped_between_segments_are_rejected(self):
        result, data = self.stored(2 * SEG)
        for pos, s in enumerate(self.grid):
            inner = s.wrapped
            a = self.successResultOf(inner.fetch_block(CUSTOMER, block_path(VERSION, 0, pos)))
            b = self.successResultOf(inner.fetch_block(CUSTOMER, block_path(VERSION, 1, pos)))
            self.successResultOf(inner.store_block(CUSTOMER, block_path(VERSION, 0, pos), b))
            self.successResultOf(inner.store_block(CUSTOMER, block_path(VERSION, 1, pos), a))
        dl, dest = self.download(result)
        err = self.failureResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest), DownloadFailed)
        self.assertEqual({p.kind for p in err.value.problems}, {"corrupt"})
        self.assert_nothing_left(dest)

    def test_wrong_key_fails_integrity_and_leaves_nothing(self):
        result, _ = self.stored(SEG)
        dl, dest = self.download(result)
        self.failureResultOf(
            dl.download(result.segments, VERSION, bytes(32), CUSTOMER, dest),
            segment_crypto.SegmentIntegrityError,
        )
        self.assert_nothing_left(dest)

    def test_missing_supplier_position_is_skipped(self):
        result, data = self.stored(SEG)
        grid = list(self.grid)
        grid[0] = None
        dl, dest = self.download(result, grid=grid)
        got = self.successResultOf(dl.download(result.segments, VERSION, KEY, CUSTOMER, dest))
        self.assertEqual(self.read(dest), data)
        self.assertEqual(got.problems[0].kind, "no-supplier")


class CancelTests(_Base):
    def test_cancel_removes_partial_file(self):
        result, _ = self.stored(4 * SEG)
        dl, dest = self.download(result)
        seen = []

        def on_progress(p):
            seen.append(p)
            if p.segments_done == 1:
                for s in self.grid:
                    s.hang()

        d = dl.download(result.segments, VERSION, KEY, CUSTOMER, dest, on_progress=on_progress)
        self.assertNoResult(d)
        self.assertEqual(len(parts_beside(dest)), 1)
        fetches = sum(s.calls["fetch_block"] for s in self.grid)
        dl.cancel()
        self.failureResultOf(d, TransferCancelled)
        self.assert_nothing_left(dest)
        self.assertEqual(sum(s.hung_calls for s in self.grid), 0)
        self.clock.advance(1000)
        self.assertEqual(sum(s.calls["fetch_block"] for s in self.grid), fetches)


class BoundsAndProgressTests(_Base):
    def test_segments_in_flight_are_bounded(self):
        result, data = self.stored(10 * SEG)
        for s in self.grid:
            s.slow(1.0)
        dl, dest = self.download(result, max_in_flight=3)
        d = dl.download(result.segments, VERSION, KEY, CUSTOMER, dest)
        while not d.called:
            self.assertLessEqual(dl.in_flight, 3)
            self.clock.advance(1.0)
        self.successResultOf(d)
        self.assertEqual(dl.peak_in_flight, 3)
        self.assertEqual(self.read(dest), data)

    def test_progress_reports_speed_and_eta(self):
        result, _ = self.stored(2 * SEG)
        for s in self.grid:
            s.slow(1.0)
        dl, dest = self.download(result, max_in_flight=1)
        seen = []
        d = dl.download(result.segments, VERSION, KEY, CUSTOMER, dest, on_progress=seen.append)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.successResultOf(d)
        self.assertEqual([(p.bytes_done, p.segments_done) for p in seen], [(SEG, 1), (2 * SEG, 2)])
        self.assertEqual((seen[0].speed, seen[0].eta), (float(SEG), 1.0))

    def test_writes_stay_in_order_when_segments_finish_out_of_order(self):
        result, data = self.stored(3 * SEG)
        jobs = []

        def manual_thread(fn, *args):
            d = defer.Deferred()
            jobs.append((d, fn, args))
            return d

        dl = Downloader(manual_thread, self.clock, self.grid, K, N, max_in_flight=3)
        dest = self.mktemp()
        d = dl.download(result.segments, VERSION, KEY, CUSTOMER, dest)
        while jobs:
            # always run the most recently queued job first: later segments finish first
            job, fn, args = jobs.pop()
            job.callback(fn(*args))
        self.successResultOf(d)
        self.assertEqual(self.read(dest), data)


class ValidationTests(_Base):
    def test_bad_segment_lists_are_refused(self):
        dl = Downloader(sync_thread, self.clock, self.grid, K, N)
        meta = SegmentMeta(1, 10, ("0" * 64,) * N, (0, 1, 2))
        self.assertRaises(BadRequest, dl.download, [], VERSION, KEY, CUSTOMER, "x")
        self.assertRaises(BadRequest, dl.download, [meta], VERSION, KEY, CUSTOMER, "x")
        short = SegmentMeta(0, 10, ("0" * 64,) * 2, (0, 1))
        self.assertRaises(BadRequest, dl.download, [short], VERSION, KEY, CUSTOMER, "x")
        self.assertRaises(BadRequest, dl.download, [meta], VERSION, KEY, CUSTOMER, "x", fetch_timeout=0)


class RealThreadPoolTests(unittest.TestCase):
    """The whole pipeline with a real bounded thread pool and the real reactor."""

    def setUp(self):
        self.pool = ThreadPool(minthreads=1, maxthreads=2, name="storage-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)

    def run_in_thread(self, fn, *args):
        return threads.deferToThreadPool(reactor, self.pool, fn, *args)

    def test_upload_and_download_in_worker_threads(self):
        grid = make_grid(reactor)
        path, data = write_file(self, 5 * SEG + 123, seed=9)
        uploader = Uploader(self.run_in_thread, reactor, grid, K, N, segment_size=SEG, max_in_flight=2)
        dest = self.mktemp()

        async def go():
            result = await uploader.upload(path, VERSION, KEY, CUSTOMER)
            grid[1].go_offline()
            dl = Downloader(self.run_in_thread, reactor, grid, K, N, max_in_flight=2, fetch_timeout=30)
            got = await dl.download(result.segments, VERSION, KEY, CUSTOMER, dest)
            with open(dest, "rb") as f:
                self.assertEqual(f.read(), data)
            self.assertEqual(set(got.used_blocks), {(0, 2, 3)})

        return defer.ensureDeferred(go())
