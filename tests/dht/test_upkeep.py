"""Tests for bitnode.dht.upkeep: expiry, republish and replication in bounded batches."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.dht.limits import DHTLimits
from bitnode.dht.storage import RecordStore, StoredRecord
from bitnode.dht.upkeep import StoreKeeper
from bitnode.errors import Timeout

REC = {"key": "app:x", "value": {"n": 1}}


class StoreKeeperTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = RecordStore(":memory:", self.clock)
        self.addCleanup(self.store.close)
        self.pushed: list[tuple[float, str]] = []
        self.started: list[tuple[float, str]] = []
        self.pushed_keys: list[str] = []
        self.outcome = succeed
        self.keeper = StoreKeeper(self.store, self.clock, self.publish, republish_interval=3600,
                                  replicate_interval=3600, expire_interval=60, limits=DHTLimits(replicate_tick=60))
        self.addCleanup(self.keeper.stop)

    def publish(self, row: StoredRecord) -> Deferred:
        self.pushed.append((self.clock.seconds(), row.key))
        return self.outcome(1)

    def test_timers_expire_republish_and_replicate(self) -> None:
        self.store.put(0, "app:mine", REC, expires=10_000, own=True)
        self.store.put(0, "app:theirs", REC, expires=10_000)
        self.store.put(0, "app:short", REC, expires=30)
        self.keeper.start()
        self.clock.advance(60)
        self.assertEqual(self.store.count(), 2)  # app:short expired and was deleted
        self.assertEqual(self.pushed, [])
        for _ in range(60):
            self.clock.advance(60)
        self.assertEqual(sorted(k for _, k in self.pushed), ["app:mine", "app:theirs"])
        self.assertTrue(all(t == 3600 for t, _ in self.pushed))

    def test_replication_skips_records_someone_replicated_to_us(self) -> None:
        self.store.put(0, "app:theirs", REC, expires=100_000)
        self.keeper.start()
        self.clock.advance(1800)
        self.store.mark_replicated(0, "app:theirs")  # an identical STORE arrived
        self.clock.advance(1800)
        self.assertEqual(self.pushed, [])
        self.clock.advance(3600)
        self.assertEqual([k for _, k in self.pushed], ["app:theirs"])

    def test_push_failures_are_swallowed_and_loops_keep_running(self) -> None:
        self.outcome = lambda _: fail(Timeout("nobody answered"))
        self.store.put(0, "app:mine", REC, expires=100_000, own=True)
        self.keeper.start()
        self.clock.advance(3600)
        self.clock.advance(3600)
        self.assertEqual(len(self.pushed), 2)

    def test_stop_cancels_every_timer(self) -> None:
        self.keeper.start()
        self.keeper.start()  # idempotent
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.keeper.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_push_due_reports_how_many_were_pushed(self) -> None:
        self.assertEqual(self.successResultOf(self.keeper.push_due()), 0)
        self.store.put(0, "app:mine", REC, expires=100_000, own=True)
        self.clock.advance(3600)
        self.assertEqual(self.successResultOf(self.keeper.push_due()), 1)
        self.assertEqual(self.keeper.stats()["replicate_pushed"], 1)

    def test_a_full_store_is_pushed_in_bounded_batches_spread_over_ticks(self) -> None:
        keeper = StoreKeeper(self.store, self.clock, self.slow_publish, limits=DHTLimits(
            replicate_tick=60, replicate_batch=10, replicate_concurrency=3))
        self.addCleanup(keeper.stop)
        self.in_flight, self.most_in_flight, self.waiting = 0, 0, []
        for i in range(45):
            self.store.put(0, f"app:{i:02}", REC, expires=100_000, own=i < 5)
        keeper.start()
        self.clock.advance(3600)  # first tick at which they are due
        self.assertEqual(self.most_in_flight, 3)
        self.assertEqual(keeper.stats()["replicate_backlog"], 35)
        for _ in range(4):
            self.finish_pushes()
            self.clock.advance(60)
        self.finish_pushes()
        self.assertEqual(sorted(self.pushed_keys), [f"app:{i:02}" for i in range(45)])
        self.assertEqual(self.pushed_keys[:5], [f"app:{i:02}" for i in range(5)])  # our own come first
        times = sorted({t for t, _ in self.started})
        self.assertEqual(times, [3600 + 60 * i for i in range(5)])  # 10 per tick, one tick after another
        self.assertEqual(keeper.stats()["replicate_pushed"], 45)

    def test_a_tick_during_a_running_batch_does_nothing(self) -> None:
        keeper = StoreKeeper(self.store, self.clock, self.slow_publish, limits=DHTLimits(replicate_tick=60))
        self.addCleanup(keeper.stop)
        self.in_flight, self.most_in_flight, self.waiting = 0, 0, []
        self.store.put(0, "app:x", REC, expires=100_000)
        self.clock.advance(3600)
        keeper.push_due()
        self.assertEqual(self.successResultOf(keeper.push_due()), 0)
        self.assertEqual(keeper.stats()["replicate_ticks_busy"], 1)

    def slow_publish(self, row: StoredRecord) -> Deferred:
        """A push that stays in flight until finish_pushes()."""
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.started.append((self.clock.seconds(), row.key))
        d: Deferred = Deferred()
        self.waiting.append((d, row.key))
        return d

    def finish_pushes(self) -> None:
        while self.waiting:
            d, key = self.waiting.pop(0)
            self.in_flight -= 1
            self.pushed_keys.append(key)
            d.callback(1)


class EmptyStoreTests(unittest.TestCase):
    """A node that holds no record (most nodes of a large network) costs its store no query per tick."""

    def test_a_day_of_ticks_on_an_empty_store_queries_nothing_until_a_record_arrives(self) -> None:
        clock = Clock()
        store = RecordStore(":memory:", clock)
        self.addCleanup(store.close)
        queries: list[str] = []
        store._db.set_trace_callback(queries.append)
        pushed: list[str] = []
        keeper = StoreKeeper(store, clock, lambda row: succeed(pushed.append(row.key)), republish_interval=3600,
                             replicate_interval=3600, expire_interval=60, limits=DHTLimits(replicate_tick=60))
        self.addCleanup(keeper.stop)
        keeper.start()
        for _ in range(24 * 60):
            clock.advance(60)
        self.assertEqual(queries, [])
        self.assertEqual(keeper.stats()["replicate_backlog"], 0)
        store.put(0, "app:mine", REC, expires=10 * 86400, own=True)
        queries.clear()
        for _ in range(2 * 60):
            clock.advance(60)
        self.assertEqual(pushed, ["app:mine"] * 2)  # republished once per interval
        self.assertTrue(any("DELETE FROM records" in q for q in queries))  # expiry runs again

