"""Tests for bitnode.storage.jobs: upload and download jobs on the in-memory grid with a Clock.

Work that would run in the thread pool runs synchronously; time only moves
when a test advances the Clock (suppliers told to answer ``slow``-ly make a
segment take one second, so progress, speed and cancel can be observed).
"""

from __future__ import annotations

import os
import random

from twisted.internet import defer
from twisted.trial import unittest

from automats import Registry
from bitnode.crypt import keys
from bitnode.errors import InsufficientStorage, NotFound, Unavailable
from bitnode.storage import blockformat, segment_crypto
from bitnode.storage.catalog import COMPLETE, UPLOADING, Catalog
from bitnode.storage.job_context import Placement, StorageContext, delete_versions, new_version_id
from bitnode.storage.memory_grid import FaultyServer, MemoryStorageServer
from bitnode.storage.ports import TransferCancelled, block_path
from bitnode.storage.transfers import TransferManager
from tests.storage.test_local_files import parts_beside
from tests.support import clock_at
from tests.userid.fakes import rsa_key

SEG = 64 * 1024
CUSTOMER = "alice@id.example.net_8084"
KEY_ID = "master$" + CUSTOMER
REMOTE = KEY_ID + ":docs/a.bin"


def sync_thread(fn, *args, **kwargs):
    """run_in_thread fake: the work runs at once on the calling thread."""
    return defer.maybeDeferred(fn, *args, **kwargs)


class Grid:
    """n in-memory suppliers (kept across 'restarts'), seen through FaultyServers on a given clock."""

    def __init__(self, n: int = 5):
        self.stores = [MemoryStorageServer() for _ in range(n)]
        self.ids = [f"s{i}@id.example.net_8084" for i in range(n)]

    def servers(self, clock) -> list[FaultyServer]:
        return [FaultyServer(store, clock, name=sid) for store, sid in zip(self.stores, self.ids, strict=True)]

    def blocks(self, index: int) -> dict:
        return dict(self.stores[index]._spaces.get(CUSTOMER, {}))


class Harness:
    """One 'node': clock, catalog, placement over the grid, context, manager, registry."""

    def __init__(self, case: unittest.TestCase, grid: Grid, catalog_path: str = ":memory:", **ctx_options):
        self.clock = clock_at(1_700_000_000)
        self.grid = grid
        self.servers = grid.servers(self.clock)
        self.catalog = Catalog(catalog_path)
        case.addCleanup(self.catalog.close)
        self.registry = Registry()
        self.changes = 0
        self.damage = 0
        self.no_suppliers = False
        master = rsa_key(0)

        def placement():
            if self.no_suppliers:
                raise Unavailable("no suppliers hired")
            return Placement(tuple(grid.ids), tuple(self.servers))

        def changed():
            self.changes += 1

        def damaged():
            self.damage += 1

        options = {"segment_size": lambda: SEG, "segments_in_flight": lambda: 1}
        options.update(ctx_options)
        self.ctx = StorageContext(
            clock=self.clock, run_in_thread=sync_thread, catalog=self.catalog, customer_id=CUSTOMER,
            placement=placement, wrap_key=lambda key_id, secret: keys.wrap_key(master.public_key(), secret),
            unwrap_key=lambda key_id, blob: keys.unwrap_key(master, blob), registry=self.registry,
            on_catalog_changed=changed, on_blocks_damaged=damaged, **options)
        self.manager = TransferManager(self.ctx)

    def slow(self, delay: float = 1.0) -> None:
        for server in self.servers:
            server.slow(delay)

    def store_calls(self) -> int:
        return sum(server.calls["store_block"] for server in self.servers)


def write(case: unittest.TestCase, size: int, seed: int = 1) -> tuple[str, bytes]:
    path = case.mktemp()
    data = random.Random(seed).randbytes(size)
    with open(path, "wb") as handle:
        handle.write(data)
    return path, data


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def download(h: Harness, target: str, remote: str = REMOTE):
    """Start a download and let slow suppliers answer."""
    job = h.manager.start_download(remote, target)
    h.clock.pump([1.0] * 20)
    return job


class UploadDownloadTests(unittest.TestCase):
    def setUp(self):
        self.grid = Grid()
        self.h = Harness(self, self.grid)

    def test_round_trip_records_version_and_restores_bytes(self):
        source, data = write(self, 3 * SEG + 100)
        job = self.h.manager.start_upload(source, REMOTE)
        self.assertEqual(job.state, "DONE")
        self.assertIs(self.successResultOf(job.wait()), job)
        version = self.h.catalog.latest_complete(KEY_ID, "docs/a.bin")
        self.assertEqual((version["state"], version["size"], version["k"], version["n"]), (COMPLETE, len(data), 3, 5))
        self.assertEqual(version["suppliers"], self.grid.ids)
        self.assertEqual(self.h.catalog.source(version["version_id"])["local_path"], source)
        self.assertEqual(self.h.catalog.missing_blocks(), [])
        info = job.info()
        self.assertEqual((info["bytes_done"], info["bytes_total"], info["progress"]), (len(data), len(data), 1.0))
        self.assertEqual((info["segments_done"], info["segments_total"]), (4, 4))
        self.assertGreater(self.h.changes, 0)

        target = os.path.join(self.mktemp(), "restored", "a.bin")
        down = self.h.manager.start_download(REMOTE, target)
        self.assertEqual(down.state, "DONE", down.error)
        self.assertEqual(read(target), data)
        self.assertEqual(parts_beside(target), [])
        self.assertEqual(down.info()["bytes_done"], len(data))
        self.assertEqual(down.result["corrupt_blocks"], [])
        self.assertEqual(down.version_id, version["version_id"])

    def test_progress_speed_and_eta_while_uploading(self):
        source, data = write(self, 4 * SEG)
        self.h.slow(1.0)
        job = self.h.manager.start_upload(source, REMOTE)
        self.assertEqual(job.state, "UPLOADING")
        self.assertIn("upload_job", [m["name"] for m in self.h.registry.list()])
        self.h.clock.advance(1.0)
        info = job.info()
        self.assertEqual((info["bytes_done"], info["bytes_total"], info["segments_done"]), (SEG, 4 * SEG, 1))
        self.assertEqual(info["speed"], SEG)
        self.assertEqual(info["eta"], 3.0)
        self.assertEqual(self.h.manager.transfers()[0]["id"], job.id)
        self.h.clock.pump([1.0] * 3)
        self.assertEqual(job.state, "DONE")
        self.assertEqual(self.h.manager.transfers(), [])
        self.assertEqual(self.h.manager.recent()[0]["state"], "DONE")
        self.assertNotIn("upload_job", [m["name"] for m in self.h.registry.list()])

    def test_cancel_mid_upload_deletes_blocks_and_version(self):
        source, _ = write(self, 4 * SEG)
        self.h.slow(1.0)
        job = self.h.manager.start_upload(source, REMOTE)
        waiting = job.wait()
        self.h.clock.advance(1.0)
        self.assertTrue(self.grid.blocks(0))
        self.h.manager.cancel("upload", REMOTE)
        self.assertEqual(job.state, "CANCELLED")  # pending stores are cancelled at once
        self.failureResultOf(waiting, TransferCancelled)
        self.h.clock.advance(1.0)  # the suppliers acknowledge the deletes
        self.assertEqual(self.h.catalog.versions(), [])
        self.assertEqual([self.grid.blocks(i) for i in range(5)], [{}] * 5)
        self.assertRaises(NotFound, self.h.manager.cancel, "upload", REMOTE)

    def test_one_supplier_failing_mid_upload_leaves_missing_blocks_for_the_rebuild(self):
        source, data = write(self, 3 * SEG)
        self.h.slow(1.0)
        job = self.h.manager.start_upload(source, REMOTE)
        self.h.clock.advance(1.0)
        self.h.servers[2].go_offline()
        self.h.clock.pump([1.0] * 5)
        self.assertEqual(job.state, "DONE")
        # Segment 1 was already with every supplier when s2 went away; segment 2 is not.
        self.assertEqual(job.result["degraded_segments"], 1)
        self.assertEqual([(s, p) for _, s, p in self.h.catalog.missing_blocks()], [(2, 2)])
        self.assertEqual(self.h.damage, 1)
        target = self.mktemp()
        self.assertEqual(download(self.h, target).state, "DONE")
        self.assertEqual(read(target), data)

    def test_too_few_suppliers_pauses_then_resumes_without_resending(self):
        source, data = write(self, 3 * SEG)
        self.h.slow(1.0)
        job = self.h.manager.start_upload(source, REMOTE)
        self.h.clock.advance(1.0)
        for server in self.h.servers[:3]:
            server.go_offline()
        self.h.clock.pump([1.0] * 2)
        self.assertEqual(job.state, "PAUSED")
        self.failureResultOf(job.wait(), Unavailable)
        self.assertEqual(self.h.catalog.resume_point(job.version_id), 2)
        self.assertEqual(self.h.catalog.version(job.version_id)["state"], UPLOADING)
        before = self.h.store_calls()
        for server in self.h.servers:
            server.heal()
        self.h.manager.suppliers_changed()
        self.h.clock.pump([1.0] * 2)
        self.assertEqual(job.state, "DONE")
        self.assertEqual(self.h.store_calls() - before, 5)  # segment 2 only
        target = self.mktemp()
        download(self.h, target)
        self.assertEqual(read(target), data)

    def test_a_file_changed_in_place_with_the_same_size_and_mtime_never_reuses_a_nonce_on_resume(self):
        source, _ = write(self, 2 * SEG)
        stat = os.stat(source)
        for server in self.h.servers[:3]:
            server.go_offline()
        job = self.h.manager.start_upload(source, REMOTE)
        self.assertEqual(job.state, "PAUSED")  # segment 0 reached 2 suppliers of the 3 needed: not recorded
        path = block_path(job.version_id, 0, 4)
        first = self.grid.blocks(4)[path]
        with open(source, "r+b") as handle:  # new bytes, same size, and the mtime put back
            handle.write(b"changed!")
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        for server in self.h.servers:
            server.heal()
        job.event("resume")
        self.assertEqual(job.state, "DONE")
        second = self.grid.blocks(4)[path]
        self.assertNotEqual(first, second)
        self.assertNotEqual(_nonce_of(first, job.version_id), _nonce_of(second, job.version_id))

    def test_paused_upload_retries_on_its_timer(self):
        source, data = write(self, 2 * SEG)
        for server in self.h.servers[:3]:
            server.go_offline()
        job = self.h.manager.start_upload(source, REMOTE)
        self.assertEqual(job.state, "PAUSED")
        self.assertIn("timer-1min", job.active_timers())
        for server in self.h.servers:
            server.heal()
        self.h.clock.pump([1.0] * 60)
        self.assertEqual(job.state, "DONE")
        self.assertIsNone(job.error)

    def test_quota_refusal_is_a_507(self):
        self.grid.stores = [MemoryStorageServer(quota_bytes=1000) for _ in range(5)]
        self.h = Harness(self, self.grid)
        source, _ = write(self, 3 * SEG)
        job = self.h.manager.start_upload(source, REMOTE)
        self.assertEqual(job.state, "PAUSED")
        err = self.failureResultOf(job.wait(), InsufficientStorage).value
        self.assertIn("quota", str(err))

    def test_missing_local_file_fails_the_job(self):
        job = self.h.manager.start_upload(os.path.join(self.mktemp(), "nope"), REMOTE)
        self.assertEqual(job.state, "FAILED")
        self.failureResultOf(job.wait(), NotFound)
        self.assertEqual(self.h.catalog.versions(), [])

    def test_no_suppliers_refuses_to_start(self):
        self.h.no_suppliers = True
        source, _ = write(self, 10)
        self.assertRaises(Unavailable, self.h.manager.start_upload, source, REMOTE)
        self.assertRaises(Unavailable, self.h.manager.start_download, REMOTE, self.mktemp())

    def test_file_changing_during_upload_becomes_a_new_version(self):
        source, _ = write(self, 3 * SEG)
        self.h.slow(1.0)
        job = self.h.manager.start_upload(source, REMOTE)
        self.h.clock.advance(1.0)
        first = job.version_id
        _, data = write(self, 2 * SEG + 7, seed=5)
        with open(source, "wb") as handle:
            handle.write(data)
        self.h.clock.pump([1.0] * 10)
        self.assertEqual(job.state, "DONE")
        self.assertNotEqual(job.version_id, first)
        self.assertEqual([v["version_id"] for v in self.h.catalog.versions()], [job.version_id])
        target = self.mktemp()
        download(self.h, target)
        self.assertEqual(read(target), data)

    def test_old_versions_are_pruned_with_their_blocks(self):
        source, _ = write(self, 10)
        ids = []
        for seed in range(3):
            with open(source, "wb") as handle:
                handle.write(bytes([seed]) * 10)
            self.h.clock.advance(1.0)
            ids.append(self.h.manager.start_upload(source, REMOTE).version_id)
        kept = [v["version_id"] for v in self.h.catalog.get(KEY_ID, "docs/a.bin")["versions"]]
        self.assertEqual(kept, [ids[2], ids[1]])
        self.assertFalse(any(path.startswith(ids[0]) for path in self.grid.blocks(0)))

    def test_memory_stays_bounded_by_segments_in_flight(self):
        h = Harness(self, self.grid, segments_in_flight=lambda: 2)
        source, data = write(self, 20 * SEG)
        h.slow(1.0)
        job = h.manager.start_upload(source, REMOTE)
        h.clock.pump([1.0] * 25)
        self.assertEqual(job.state, "DONE")
        self.assertEqual(job.peak_in_flight, 2)


class CatalogBackupTests(unittest.TestCase):
    """An upload is done only once a catalog backup naming it is on k suppliers."""

    def setUp(self):
        self.backups: list[tuple[defer.Deferred, object]] = []

        def backed_up(on_failure=None):
            d = defer.Deferred()
            self.backups.append((d, on_failure))
            return d

        self.h = Harness(self, Grid(), catalog_backed_up=backed_up)

    def test_an_uploaded_version_waits_for_the_catalog_backup_and_frees_its_slot(self):
        first, _ = write(self, SEG + 1)
        second, _ = write(self, SEG + 2, seed=2)
        job = self.h.manager.start_upload(first, REMOTE)
        other = self.h.manager.start_upload(second, KEY_ID + ":docs/b.bin")
        self.assertEqual((job.state, other.state), ("SECURING", "SECURING"))  # one slot, both got through
        self.assertEqual(self.h.catalog.version(job.version_id)["state"], COMPLETE)
        waited = job.wait()
        self.assertNoResult(waited)
        self.assertIn(job.info(), self.h.manager.uploads()["running"])
        # a backup attempt fails: whoever waits hears why, the job goes on waiting for the next one
        self.backups[0][1](Unavailable("only 1 suppliers took its manifest, 3 needed"))
        error = self.failureResultOf(waited, Unavailable)
        self.assertIn("catalog backup that lists it", str(error.value))
        self.assertEqual(job.state, "SECURING")
        again = job.wait()
        job.event("cancel")  # too late: the version is complete
        self.assertEqual(job.state, "SECURING")
        self.backups[0][0].callback({"serial": 2})
        self.assertIs(self.successResultOf(again), job)
        self.assertEqual((job.state, job.error), ("DONE", None))
        self.assertEqual(other.state, "SECURING")
        self.backups[1][0].callback({"serial": 2})
        self.assertEqual(other.state, "DONE")

    def test_stopping_while_a_backup_is_awaited_leaves_the_complete_version(self):
        source, _ = write(self, SEG)
        job = self.h.manager.start_upload(source, REMOTE)
        stopped = self.h.manager.stop()
        self.successResultOf(stopped)  # waiting for the backup is at rest: nothing to stop
        self.backups[0][0].errback(Unavailable("service_backups stopped"))
        self.assertEqual(self.h.catalog.version(job.version_id)["state"], COMPLETE)


class DownloadTests(unittest.TestCase):
    def setUp(self):
        self.grid = Grid()
        self.h = Harness(self, self.grid)
        self.source, self.data = write(self, 2 * SEG + 3)
        self.version = self.h.manager.start_upload(self.source, REMOTE).version_id

    def test_corrupt_block_is_reported_and_marked_missing(self):
        self.h.servers[0].corrupt(block_path(self.version, 1, 0))
        target = self.mktemp()
        job = self.h.manager.start_download(REMOTE, target)
        self.assertEqual(job.state, "DONE")
        self.assertEqual(read(target), self.data)
        self.assertEqual(job.result["corrupt_blocks"], [[1, 0]])
        self.assertEqual(self.h.catalog.missing_blocks(), [(self.version, 1, 0)])
        self.assertEqual(self.h.damage, 1)

    def test_restores_with_n_minus_k_suppliers_down(self):
        self.h.servers[0].go_offline()
        self.h.servers[4].go_offline()
        target = self.mktemp()
        self.assertEqual(self.h.manager.start_download(REMOTE, target).state, "DONE")
        self.assertEqual(read(target), self.data)
        self.assertEqual(self.h.catalog.missing_blocks(), [])  # offline is not lost

    def test_too_many_suppliers_down_fails_and_leaves_nothing(self):
        for server in self.h.servers[:3]:
            server.go_offline()
        target = self.mktemp()
        job = self.h.manager.start_download(REMOTE, target)
        self.assertEqual(job.state, "FAILED")
        self.failureResultOf(job.wait(), Unavailable)
        self.assertFalse(os.path.exists(target) or parts_beside(target))

    def test_unknown_path_or_version(self):
        job = self.h.manager.start_download(KEY_ID + ":nope", self.mktemp())
        self.failureResultOf(job.wait(), NotFound)
        job = self.h.manager.start_download(KEY_ID + ":docs/a.bin", self.mktemp(), version_id="Fnope")
        self.failureResultOf(job.wait(), NotFound)

    def test_given_version_and_cancel(self):
        self.h.slow(1.0)
        target = self.mktemp()
        job = self.h.manager.start_download(REMOTE, target, version_id=self.version)
        self.assertEqual(job.state, "DOWNLOADING")
        self.h.manager.cancel("download", REMOTE)
        self.h.clock.pump([1.0] * 5)
        self.assertEqual(job.state, "CANCELLED")
        self.failureResultOf(job.wait(), TransferCancelled)
        self.assertFalse(os.path.exists(target) or parts_beside(target))


    def test_a_link_planted_at_the_part_name_is_not_written_through(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        victim = os.path.join(folder, "victim")
        with open(victim, "wb") as handle:
            handle.write(b"precious")
        target = os.path.join(folder, "a.bin")
        os.symlink(victim, target + ".part")
        self.assertEqual(self.h.manager.start_download(REMOTE, target).state, "DONE")
        self.assertEqual(read(target), self.data)
        self.assertEqual(read(victim), b"precious")

    def test_a_folder_download_refuses_a_linked_sub_folder(self):
        root = os.path.abspath(self.mktemp())
        outside = os.path.abspath(self.mktemp())
        os.makedirs(root)
        os.makedirs(outside)
        os.symlink(outside, os.path.join(root, "docs"))
        job = self.h.manager.start_download(REMOTE, os.path.join(root, "docs", "a.bin"), root=root)
        self.assertEqual(job.state, "FAILED")
        self.assertIn("symbolic link", str(job.error))
        self.assertEqual(os.listdir(outside), [])


def _nonce_of(block: bytes, version_id: str) -> bytes:
    """The GCM nonce a stored block's segment was encrypted with (format 1 blocks: the place-only one)."""
    header, _ = blockformat.unpack(block)
    return getattr(header, "nonce", b"") or segment_crypto.segment_nonce(version_id, header.segment_index)


class HelperTests(unittest.TestCase):
    def test_version_ids_sort_by_time(self):
        early, late = new_version_id(1_700_000_000.0), new_version_id(1_700_000_000.5)
        self.assertTrue(early.startswith("F20231114T221320000-"))
        self.assertLess(early, late)

    def test_delete_versions_reports_unreachable_suppliers(self):
        grid = Grid()
        h = Harness(self, grid)
        source, _ = write(self, 10)
        version = h.manager.start_upload(source, REMOTE).version_id
        h.servers[1].go_offline()
        outcome = self.successResultOf(defer.Deferred.fromCoroutine(delete_versions(h.ctx, [version])))
        self.assertEqual(outcome["deleted"], 4)
        self.assertEqual([f["supplier"] for f in outcome["failed"]], [grid.ids[1]])
        self.assertTrue(grid.blocks(1))
