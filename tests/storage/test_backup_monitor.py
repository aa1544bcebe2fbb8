"""Tests for bitnode.storage.backup_monitor: compare, rebuild, report, never delete.

Files are uploaded with the real jobs onto the in-memory grid (tests/storage/test_jobs.py
Harness); the provider fake reads the Harness's current positions, so replacing a
supplier is two assignments.
"""

from __future__ import annotations

from unittest.mock import patch

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.errors import Unavailable
from bitnode.storage import backup_monitor
from bitnode.storage.backup_monitor import BackupMonitor
from bitnode.storage.job_context import Placement
from bitnode.storage.memory_grid import FaultyServer, MemoryStorageServer
from bitnode.storage.ports import block_path
from tests.storage.test_jobs import CUSTOMER, REMOTE, SEG, Grid, Harness, download, read, write


class FakeProvider:
    """Positions and servers straight from the Harness; ``settle`` is what settled() answers.

    ``former`` are retiring holders ``{supplier_id: (position, server)}``; releases and
    rebuild reports are kept.
    """

    def __init__(self, h: Harness):
        self.h = h
        self.settle: defer.Deferred | None = None
        self.former: dict[str, tuple[int, object]] = {}
        self.released: list[str] = []
        self.reports: list[dict] = []

    def positions(self):
        return list(self.h.grid.ids)

    def server(self, supplier_id):
        if supplier_id in self.former:
            return self.former[supplier_id][1]
        return dict(zip(self.h.grid.ids, self.h.servers, strict=True))[supplier_id]

    def settled(self):
        return self.settle

    def retiring(self):
        return [{"supplier_id": s, "position": p} for s, (p, _) in self.former.items()]

    def rebuild_progress(self, report):
        self.reports.append(report)

    def release(self, supplier_id):
        if self.former.pop(supplier_id, None) is None:
            return False
        self.released.append(supplier_id)
        return True


class MonitorTestCase(unittest.TestCase):
    SIZE = 3 * SEG + 11  # four segments

    def setUp(self):
        self.grid = Grid()
        self.h = Harness(self, self.grid)
        self.source, self.data = write(self, self.SIZE)
        self.version = self.h.manager.start_upload(self.source, REMOTE).version_id
        self.provider = FakeProvider(self.h)
        self.changed = 0
        self.monitor = self.make_monitor()

    def make_monitor(self, provider=None, **options):
        def changed():
            self.changed += 1

        monitor = BackupMonitor(self.h.clock, self.h.ctx.run_in_thread, self.h.catalog, CUSTOMER,
                                provider or (lambda: self.provider), on_catalog_changed=changed,
                                registry=self.h.registry, **options)
        self.addCleanup(monitor.destroy)
        return monitor

    def replace(self, position: int, supplier_id: str) -> MemoryStorageServer:
        store = MemoryStorageServer()
        self.grid.stores[position] = store
        self.grid.ids[position] = supplier_id
        self.h.servers[position] = FaultyServer(store, self.h.clock, name=supplier_id)
        return store

    def run_check(self, event="restart"):
        self.monitor.event(event)
        self.h.clock.pump([1.0] * 5)
        self.assertEqual(self.monitor.state, "READY", self.monitor.last_error)
        return self.monitor.status()

    def deletes(self) -> int:
        return sum(server.calls["delete"] for server in self.h.servers)


class RebuildTests(MonitorTestCase):
    def test_replaced_supplier_gets_byte_identical_blocks_and_data_survives_two_more_losses(self):
        original = self.grid.blocks(1)
        new_store = self.replace(1, "s9@id.example.net_8084")
        figures = self.run_check("suppliers-changed")
        self.assertEqual((figures["blocks_missing"], figures["blocks_rebuilt"]), (4, 4))
        self.assertEqual(figures["unrecoverable_segments"], 0)
        self.assertEqual(new_store._spaces[CUSTOMER], original)
        holders = {(s, p): who for s, p, _, who in self.h.catalog.blocks(self.version)}
        self.assertEqual({holders[(s, 1)] for s in range(4)}, {"s9@id.example.net_8084"})
        self.assertEqual(self.h.catalog.missing_blocks(), [])
        self.assertEqual(self.changed, 1)
        self.assertEqual(self.deletes(), 0)
        self.h.servers[0].go_offline()
        self.h.servers[2].go_offline()
        target = self.mktemp()
        self.assertEqual(download(self.h, target).state, "DONE")
        self.assertEqual(read(target), self.data)

    def test_corrupted_block_is_detected_by_its_hash_and_rebuilt(self):
        path = block_path(self.version, 2, 3)
        good = self.grid.stores[3]._spaces[CUSTOMER][path]
        self.grid.stores[3]._spaces[CUSTOMER][path] = good[:-1] + bytes([good[-1] ^ 1])
        figures = self.run_check()
        self.assertEqual((figures["blocks_missing"], figures["blocks_rebuilt"]), (1, 1))
        self.assertEqual(self.grid.stores[3]._spaces[CUSTOMER][path], good)
        self.assertEqual(self.h.catalog.missing_blocks(), [])

    def test_block_corrupt_when_fetched_is_rebuilt_too(self):
        self.replace(4, "s9@id.example.net_8084")
        self.h.servers[0].corrupt(block_path(self.version, 0, 0))
        figures = self.run_check()
        self.assertEqual(figures["blocks_rebuilt"], 5)  # four on the new supplier, one over the bad copy
        self.assertEqual(figures["rebuild_failures"], 1)
        self.assertEqual(self.h.catalog.missing_blocks(), [])

    def test_fewer_than_k_survivors_is_reported_and_nothing_is_deleted(self):
        for position in (0, 1, 2):
            del self.grid.stores[position]._spaces[CUSTOMER][block_path(self.version, 1, position)]
        before = [self.grid.blocks(i) for i in range(5)]
        figures = self.run_check()
        self.assertEqual(figures["unrecoverable_segments"], 1)
        self.assertEqual(figures["unrecoverable"], [{"version_id": self.version, "segment": 1,
                                                     "available": 2, "needed": 3}])
        self.assertEqual(figures["blocks_rebuilt"], 0)
        self.assertEqual(self.deletes(), 0)
        self.assertEqual([self.grid.blocks(i) for i in range(5)], before)
        self.assertEqual(self.h.catalog.missing_blocks(), [(self.version, 1, 0), (self.version, 1, 1),
                                                           (self.version, 1, 2)])

    def test_offline_supplier_is_unknown_not_missing(self):
        self.h.servers[2].go_offline()
        figures = self.run_check()
        self.assertEqual(figures["suppliers_unreachable"], [self.grid.ids[2]])
        self.assertEqual((figures["blocks_unknown"], figures["blocks_missing"]), (4, 0))
        self.assertEqual(self.h.catalog.missing_blocks(), [])
        self.assertEqual(self.changed, 0)

    def test_block_the_catalog_thought_missing_but_held_is_recorded(self):
        self.h.catalog.set_block_holder(self.version, 0, 4, "")
        figures = self.run_check()
        self.assertEqual((figures["holders_corrected"], figures["blocks_rebuilt"]), (1, 0))
        self.assertEqual(self.h.catalog.missing_blocks(), [])

    def test_empty_position_marks_the_old_holders_blocks_missing(self):
        self.grid.ids[3] = ""
        figures = self.run_check()
        self.assertEqual(figures["blocks_rebuilt"], 0)
        self.assertEqual(len(self.h.catalog.missing_blocks()), 4)


class RetiringHolderTests(MonitorTestCase):
    """A replaced supplier stays a source until its blocks are on its successor; only then is it released."""

    OLD = "old@id.example.net_8084"
    NEW = "s9@id.example.net_8084"

    def retire(self, position: int) -> FaultyServer:
        """The supplier at ``position`` is replaced by an empty one and becomes a retiring holder."""
        old_server = self.h.servers[position]
        self.grid.ids[position] = self.OLD  # (the catalog names its old id as the holder)
        for seg in range(self.segments()):
            self.h.catalog.set_block_holder(self.version, seg, position, self.OLD)
        self.provider.former[self.OLD] = (position, old_server)
        self.replace(position, self.NEW)
        return old_server

    def segments(self) -> int:
        return len({seg for seg, _, _, _ in self.h.catalog.blocks(self.version)})

    def test_a_live_retiring_holder_is_copied_from_then_released(self):
        original = self.grid.blocks(1)
        old = self.retire(1)
        figures = self.run_check("suppliers-changed")
        self.assertEqual((figures["blocks_copied"], figures["blocks_rebuilt"]), (4, 0))  # no decoding needed
        self.assertEqual(self.grid.stores[1]._spaces[CUSTOMER], original)
        self.assertEqual(self.provider.reports[-1], {self.OLD: {"done": 4, "total": 4}})
        self.assertEqual(self.provider.released, [self.OLD])
        self.assertEqual(figures["holders_released"], 1)
        self.assertEqual(old.calls["delete"], 0)  # the monitor deletes nothing: the market's CancelService does
        holders = {(s, p): who for s, p, _, who in self.h.catalog.blocks(self.version)}
        self.assertEqual({holders[(s, 1)] for s in range(4)}, {self.NEW})

    def test_a_dead_retiring_holder_is_released_once_its_blocks_are_rebuilt_from_the_others(self):
        self.retire(2).go_offline()
        figures = self.run_check("suppliers-changed")
        self.assertEqual((figures["blocks_copied"], figures["blocks_rebuilt"]), (0, 4))
        self.assertEqual(self.provider.released, [self.OLD])
        for position in (0, 1):  # and the file survives two more losses
            self.h.servers[position].go_offline()
        target = self.mktemp()
        self.assertEqual(download(self.h, target).state, "DONE")
        self.assertEqual(read(target), self.data)

    def test_not_released_while_it_may_hold_the_only_copy(self):
        self.retire(3)
        self.h.servers[3].go_offline()  # the successor does not answer: nothing is on it yet
        figures = self.run_check("suppliers-changed")
        self.assertEqual(figures["blocks_on_retiring"], 4)
        self.assertEqual(self.provider.released, [])
        self.assertEqual(self.provider.reports[-1], {self.OLD: {"done": 0, "total": 4}})
        holders = {(s, p): who for s, p, _, who in self.h.catalog.blocks(self.version)}
        self.assertEqual({holders[(s, 3)] for s in range(4)}, {self.OLD})  # still recorded as the holder
        self.h.servers[3].go_online()
        self.run_check()
        self.assertEqual(self.provider.released, [self.OLD])

    def test_a_silent_retiring_holder_keeps_its_blocks_recorded(self):
        self.retire(0).go_offline()
        self.h.servers[0].go_offline()
        self.run_check("suppliers-changed")
        holders = {(s, p): who for s, p, _, who in self.h.catalog.blocks(self.version)}
        self.assertEqual({holders[(s, 0)] for s in range(4)}, {self.OLD})
        self.assertEqual(self.provider.released, [])

    def test_positions_that_went_away_keep_their_holders_until_their_versions_are_re_laid_out(self):
        ids, servers = list(self.grid.ids), list(self.h.servers)
        self.provider.former = {ids[3]: (3, servers[3]), ids[4]: (4, servers[4])}
        self.provider.positions = lambda: ids[:3]
        figures = self.run_check("suppliers-changed")
        self.assertEqual((figures["blocks_on_retiring"], figures["blocks_rebuilt"]), (8, 0))
        self.assertEqual(self.provider.released, [])
        self.assertEqual(self.provider.reports[-1], {ids[3]: {"done": 0, "total": 4},
                                                     ids[4]: {"done": 0, "total": 4}})
        self.assertEqual(self.h.catalog.missing_blocks(), [])  # still recorded on the retiring holders
        self.h.catalog.drop_version(self.version)  # (re-laid out: the old version is gone)
        self.run_check()
        self.assertEqual(sorted(self.provider.released), ids[3:])

    def test_released_only_once_the_catalog_backup_is_current(self):
        current = []
        self.monitor.destroy()
        self.monitor = BackupMonitor(self.h.clock, self.h.ctx.run_in_thread, self.h.catalog, CUSTOMER,
                                     lambda: self.provider, backup_current=lambda: bool(current),
                                     registry=self.h.registry)
        self.addCleanup(self.monitor.destroy)
        self.retire(1)
        figures = self.run_check("suppliers-changed")
        self.assertEqual((self.provider.released, figures["releasable"]), ([], [self.OLD]))
        self.assertEqual(self.monitor.release_ready(), [])
        current.append(True)  # the node backed the catalog up
        self.assertEqual(self.monitor.release_ready(), [self.OLD])
        self.assertEqual(self.provider.released, [self.OLD])

    def test_downloads_read_a_retiring_holder_while_the_successor_is_empty(self):
        self.retire(0)
        for position in (1, 2):
            self.h.servers[position].go_offline()
        # positions 0 (new, empty), 3 and 4 answer; the old holder of 0 fills the gap
        self.h.ctx.placement = lambda: Placement(tuple(self.grid.ids), tuple(self.h.servers),
                                                 ((0, self.OLD, self.provider.former[self.OLD][1]),))
        target = self.mktemp()
        self.assertEqual(download(self.h, target).state, "DONE")
        self.assertEqual(read(target), self.data)


class CountingThreads:
    """run_in_thread at once on this thread, counting calls per function name; ``fail`` names one that raises."""

    def __init__(self, fail: str = ""):
        self.calls: dict[str, int] = {}
        self.fail = fail

    def __call__(self, fn, *args):
        self.calls[fn.__name__] = self.calls.get(fn.__name__, 0) + 1
        if fn.__name__ == self.fail:
            return defer.fail(RuntimeError(f"{fn.__name__} broke"))
        return defer.maybeDeferred(fn, *args)


class RebuildWindowTests(RetiringHolderTests.__bases__[0]):
    """Several segments are rebuilt at once; acks are awaited in a window; the holder goes only after the last."""

    SIZE = 10 * SEG  # ten segments
    OLD, NEW = RetiringHolderTests.OLD, RetiringHolderTests.NEW
    retire = RetiringHolderTests.retire
    segments = RetiringHolderTests.segments

    def windowed(self, width: int, **options) -> BackupMonitor:
        self.monitor.destroy()
        self.monitor = self.make_monitor(segments_in_flight=lambda: width, **options)
        return self.monitor

    def test_stores_are_acknowledged_in_a_window_and_the_holder_is_released_after_the_last(self):
        original = self.grid.blocks(1)
        self.windowed(3)
        old = self.retire(1)
        new = self.h.servers[1]
        new.slow(1.0)  # each store is acknowledged a second after it was sent (its listing too)
        self.monitor.event("suppliers-changed")
        self.h.clock.advance(1.0)  # the listings
        stored = []
        for _ in range(4):
            stored.append(new.calls["store_block"])
            self.assertEqual(self.provider.released, [])  # never before its successor acknowledged every block
            self.h.clock.advance(1.0)
        self.assertEqual(stored, [3, 6, 9, 10])  # three in flight; a worker goes on as soon as its ack came
        self.assertEqual(self.monitor.state, "READY", self.monitor.last_error)
        figures = self.monitor.status()
        self.assertEqual((figures["blocks_copied"], figures["segments_in_flight_max"]), (10, 3))
        self.assertEqual(figures["rebuild_seconds"], 4.0)  # ten acks of one second each, three at a time
        self.assertEqual(self.provider.released, [self.OLD])
        self.assertEqual(self.grid.stores[1]._spaces[CUSTOMER], original)
        self.assertEqual(old.calls["fetch_block"], 10)  # copied as they are: one fetch per block, no decoding
        self.assertEqual(sum(s.calls["fetch_block"] for i, s in enumerate(self.h.servers) if i != 1), 0)

    def test_one_segment_in_flight_takes_one_round_trip_per_segment(self):
        self.windowed(1)
        self.retire(1)
        self.h.servers[1].slow(1.0)
        self.monitor.event("suppliers-changed")
        self.h.clock.pump([1.0] * 10)  # the listings, then nine of the ten stores
        self.assertEqual(self.monitor.state, "REBUILDING")
        self.h.clock.advance(1.0)
        self.assertEqual(self.monitor.state, "READY", self.monitor.last_error)
        self.assertEqual(self.monitor.status()["segments_in_flight_max"], 1)

    def test_without_the_retiring_holder_k_blocks_are_fetched_at_once_per_segment(self):
        self.windowed(2)
        self.retire(4).go_offline()
        for server in self.h.servers:
            server.slow(1.0)
        self.monitor.event("suppliers-changed")
        self.h.clock.advance(1.0)  # the listings
        self.h.clock.advance(0.5)
        self.assertEqual(sum(s.calls["fetch_block"] for s in self.h.servers), 2 * 3)  # k of each, both at once
        self.h.clock.pump([1.0] * 30)
        self.assertEqual(self.monitor.state, "READY", self.monitor.last_error)
        self.assertEqual(self.monitor.status()["blocks_rebuilt"], 10)
        self.assertEqual(sum(s.calls["fetch_block"] for s in self.h.servers), 10 * 3)  # never all n
        self.assertEqual([s.calls["fetch_block"] for s in self.h.servers[:3]], [10, 10, 10])  # data blocks
        self.assertEqual(self.provider.released, [self.OLD])

    def test_holders_are_recorded_in_batches_before_the_run_ends(self):
        threads = CountingThreads()
        self.monitor.destroy()
        self.monitor = BackupMonitor(self.h.clock, threads, self.h.catalog, CUSTOMER, lambda: self.provider,
                                     segments_in_flight=lambda: 1, registry=self.h.registry)
        self.addCleanup(self.monitor.destroy)
        self.retire(2)
        with patch.object(backup_monitor, "HOLDER_BATCH", 4):
            self.run_check("suppliers-changed")
        self.assertEqual(threads.calls.get("set_block_holder", 0), 0)
        self.assertEqual(threads.calls["set_block_holders"], 3)  # after 4 and 8 segments, then the last 2
        holders = {(s, p): who for s, p, _, who in self.h.catalog.blocks(self.version)}
        self.assertEqual({holders[(s, 2)] for s in range(10)}, {self.NEW})

    def test_a_run_left_waiting_for_the_catalog_backup_asks_for_it_at_once(self):
        asked, current = [], []
        self.windowed(4, backup_current=lambda: bool(current), backup_soon=lambda: asked.append(True))
        self.retire(0)
        self.run_check("suppliers-changed")
        self.assertEqual((asked, self.provider.released), ([True], []))
        current.append(True)
        self.assertEqual(self.monitor.release_ready(), [self.OLD])
        self.run_check()  # nothing waits any more: no backup asked for
        self.assertEqual(asked, [True])

    def test_a_silent_retiring_holder_holds_the_rebuild_back_only_its_short_timeout(self):
        self.windowed(8, retiring_list_timeout=lambda: 10.0)
        self.retire(2).hang()  # a replaced supplier that died: it never answers
        self.monitor.event("suppliers-changed")
        self.h.clock.advance(9.9)
        self.assertEqual(self.monitor.state, "LIST_BACKUPS")
        self.h.clock.advance(0.1)  # not the 60 s of a current supplier's request
        self.assertEqual(self.monitor.state, "READY", self.monitor.last_error)
        figures = self.monitor.status()
        self.assertEqual((figures["suppliers_unreachable"], figures["blocks_rebuilt"]), ([self.OLD], 10))
        self.assertEqual(self.provider.released, [self.OLD])  # every block of its position is on its successor

    def test_positions_changing_while_listing_start_a_new_run_at_once(self):
        self.h.slow(30.0)  # listings take long
        self.monitor.event("restart")
        self.assertEqual(self.monitor.state, "LIST_BACKUPS")
        self.monitor.event("suppliers-changed")  # (supplier_change: the old one retired, the new one is hired)
        self.assertEqual((self.monitor.state, self.monitor.runs), ("LIST_BACKUPS", 2))
        self.h.clock.advance(30.0)
        self.assertEqual(self.monitor.state, "READY", self.monitor.last_error)
        self.assertEqual(self.monitor.runs, 2)  # the abandoned listings did not end a run nor start a third
        self.assertEqual([s.calls["list_blocks"] for s in self.h.servers], [2] * 5)
        self.assertEqual(self.monitor.status()["suppliers_listed"], 5)
        self.assertEqual([(r.event, r.from_state, r.to_state) for r in self.monitor.history][-5:],
                         [("suppliers-changed", "LIST_BACKUPS", "FIRE_HIRE"), ("suppliers-ready", "FIRE_HIRE", "LIST_FILES"),
                          ("catalog-read", "LIST_FILES", "LIST_BACKUPS"), ("lists-received", "LIST_BACKUPS", "REBUILDING"),
                          ("rebuilt", "REBUILDING", "READY")])

    def test_a_crashing_segment_fails_the_run_and_no_worker_starts_another_segment(self):
        threads = CountingThreads(fail="regenerate_blocks")
        self.monitor.destroy()
        self.monitor = BackupMonitor(self.h.clock, threads, self.h.catalog, CUSTOMER, lambda: self.provider,
                                     segments_in_flight=lambda: 2, registry=self.h.registry)
        self.addCleanup(self.monitor.destroy)
        self.retire(3).go_offline()
        self.h.slow(1.0)
        self.monitor.event("suppliers-changed")
        self.h.clock.pump([1.0] * 5)
        self.assertEqual(self.monitor.state, "READY")
        self.assertIn("regenerate_blocks broke", self.monitor.last_error)
        self.assertEqual(threads.calls["regenerate_blocks"], 2)  # one per worker, then no third segment
        self.assertEqual(self.provider.released, [])
        self.assertEqual(self.h.servers[3].calls["store_block"], 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # logged with its traceback


class MachineTests(MonitorTestCase):
    def test_waits_for_fire_hire_to_settle(self):
        self.provider.settle = defer.Deferred()
        self.monitor.event("restart")
        self.assertEqual(self.monitor.state, "FIRE_HIRE")
        self.provider.settle.callback(None)
        self.assertEqual(self.monitor.state, "READY")
        self.assertEqual([r.to_state for r in self.monitor.history],
                         ["FIRE_HIRE", "LIST_FILES", "LIST_BACKUPS", "REBUILDING", "READY"])

    def test_stops_waiting_for_fire_hire_after_a_minute(self):
        self.provider.settle = defer.Deferred()
        self.monitor.event("restart")
        self.h.clock.advance(60.0)
        self.assertEqual(self.monitor.state, "READY")
        self.provider.settle.callback(None)  # late: harmless
        self.assertEqual(self.monitor.state, "READY")

    def test_restart_during_a_run_runs_again(self):
        self.h.slow(1.0)
        self.monitor.event("restart")
        self.assertEqual(self.monitor.state, "LIST_BACKUPS")
        self.monitor.event("suppliers-changed")
        self.h.clock.pump([1.0] * 3)
        self.assertEqual(self.monitor.state, "READY")
        self.assertEqual(self.monitor.runs, 2)

    def test_periodic_check(self):
        self.h.clock.advance(600.0)
        self.assertEqual(self.monitor.runs, 1)
        self.assertEqual(self.monitor.state, "READY")

    def test_without_suppliers_the_run_fails_and_says_why(self):
        def none():
            raise Unavailable("no suppliers hired: service_customer is off")

        monitor = self.make_monitor(none)
        monitor.event("restart")
        self.assertEqual(monitor.state, "READY")
        self.assertIn("service_customer is off", monitor.status()["last_error"])

    def test_shutdown_mid_run_cancels_and_forgets(self):
        self.h.slow(1.0)
        self.monitor.event("restart")
        done = self.monitor.shutdown()
        self.successResultOf(done)
        self.assertEqual(self.monitor.state, "CLOSED")
        self.assertEqual(self.monitor.active_timers(), [])
        self.assertNotIn(self.monitor, list(self.h.registry))
