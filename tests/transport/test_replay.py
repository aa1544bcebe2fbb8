"""Tests for bitnode.transport.replay."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.transport.packet import BadPacket
from bitnode.transport.replay import BeforeStart, ReplayCache, Replayed, ReplayFull, TooNew, TooOld
from tests.support import clock_at


class ReplayCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = clock_at(1000.0)
        self.cache = ReplayCache(self.clock, window_seconds=60, max_entries=100, max_future_seconds=10)

    def assert_refused(self, error: type[BadPacket], reason: str, *packet) -> None:
        """``packet`` (creator, packet id, date) is refused with ``error``, counted under ``reason``."""
        refused = self.assertRaises(error, self.cache.check, *packet)
        self.assertEqual(refused.reason, reason)

    def test_first_packet_is_accepted(self) -> None:
        self.cache.check("alice", "p1", 1000.0)
        self.assertEqual(len(self.cache), 1)

    def test_duplicate_is_rejected(self) -> None:
        self.cache.check("alice", "p1", 1000.0)
        self.assert_refused(Replayed, "replay", "alice", "p1", 1000.0)

    def test_same_id_from_another_creator_is_fine(self) -> None:
        self.cache.check("alice", "p1", 1000.0)
        self.cache.check("bob", "p1", 1000.0)

    def test_too_old_is_rejected(self) -> None:
        self.cache.check("alice", "edge", 940.0)  # exactly at the window's edge
        self.assert_refused(TooOld, "too_old", "alice", "p1", 939.9)

    def test_too_far_in_future_is_rejected(self) -> None:
        self.cache.check("alice", "edge", 1010.0)
        self.assert_refused(TooNew, "too_new", "alice", "p1", 1010.1)

    def test_future_is_a_minute_by_default_whatever_the_window(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=900, max_entries=10)
        cache.check("a", "1", 1060.0)
        self.assertRaises(TooNew, cache.check, "a", "2", 1060.5)

    def test_rejected_packet_is_not_remembered(self) -> None:
        self.assertRaises(TooOld, self.cache.check, "alice", "p1", 1.0)
        self.assertEqual(len(self.cache), 0)

    def test_replay_after_window_is_rejected_as_too_old_and_entry_forgotten(self) -> None:
        self.cache.check("alice", "p1", 1000.0)
        self.clock.advance(61)
        self.assertRaises(TooOld, self.cache.check, "alice", "p1", 1000.0)
        self.assertEqual(len(self.cache), 0)

    def test_entries_expire_with_time(self) -> None:
        for i in range(50):
            self.cache.check("alice", str(i), 1000.0 + i * 0.1)
        self.clock.advance(30)
        self.cache.check("alice", "late", 1030.0)
        self.assertEqual(len(self.cache), 51)
        self.clock.advance(100)
        self.cache.check("alice", "later", 1130.0)
        self.assertEqual(len(self.cache), 1)

    def test_memory_is_bounded(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=60, max_entries=10)
        for i in range(1000):
            cache.check("alice", str(i), 950.0 + i * 0.01)
        self.assertEqual(len(cache), 10)

    def test_eviction_never_allows_a_replay(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=60, max_entries=3)
        dates = [950.0, 960.0, 970.0, 980.0]
        for i, date in enumerate(dates):
            cache.check("alice", f"p{i}", date)
        # p0 (oldest date) was evicted; its replay is refused by alice's floor
        self.assertEqual(cache.floor_of("alice"), 950.0)
        self.assertRaises(TooOld, cache.check, "alice", "p0", 950.0)
        for i, date in enumerate(dates[1:], start=1):
            self.assertRaises(Replayed, cache.check, "alice", f"p{i}", date)
        # a new packet newer than the floor is still fine
        cache.check("bob", "fresh", 1000.0)

    def test_invalid_parameters(self) -> None:
        self.assertRaises(ValueError, ReplayCache, self.clock, 0, 10)
        self.assertRaises(ValueError, ReplayCache, self.clock, 10, 0)
        self.assertRaises(ValueError, ReplayCache, self.clock, 10, 10, -1)
        self.assertRaises(ValueError, ReplayCache, self.clock, 10, 10, 1, -1)
        self.assertRaises(ValueError, ReplayCache, self.clock, 10, 10, max_per_sender=0)


class PoisoningTests(unittest.TestCase):
    """Issue 14.1: a stranger's packets dated just under now + window pushed the floor there, blocking everyone."""

    def setUp(self) -> None:
        self.clock = clock_at(1_000_000.0)
        self.now = self.clock.seconds()

    def test_far_future_dates_are_refused_so_they_cannot_raise_any_floor(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=900, max_entries=100)
        for i in range(500):
            self.assertRaises(TooNew, cache.check, f"mallory{i}", "p", self.now + 899)
        self.assertEqual(len(cache), 0)
        cache.check("alice", "p", self.now)

    def test_a_flood_dated_near_the_future_limit_never_blocks_a_packet_dated_now(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=900, max_entries=100, min_window_seconds=30)
        for i in range(1000):
            try:
                cache.check(f"mallory{i}", "p", self.now + 59)
            except ReplayFull:
                pass
        self.assertEqual(len(cache), 100)
        self.assertLessEqual(cache.floor, self.now - 30)
        # the flood is refused, but it raised no floor: once its keys may be forgotten alice gets through
        self.clock.advance(90)
        cache.check("alice", "p", self.clock.seconds())
        self.assertLessEqual(cache.floor, self.clock.seconds() - 30)

    def test_eviction_never_raises_a_floor_above_now_minus_the_shortest_window(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=900, max_entries=50, min_window_seconds=30)
        for step in range(2000):
            self.clock.advance(0.5)
            now = self.clock.seconds()
            try:
                cache.check(f"peer{step % 7}", f"p{step}", now - (step * 7919 % 600))
            except (TooOld, ReplayFull):
                pass
            for n in range(7):
                self.assertLessEqual(cache.floor_of(f"peer{n}"), now - 30)
            self.assertLessEqual(len(cache), 50)

    def test_a_flooding_sender_fills_only_its_own_share(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=900, max_entries=100, max_per_sender=10)
        for i in range(50):
            try:
                cache.check("mallory", f"p{i}", self.now)
            except ReplayFull as err:
                self.assertEqual(err.reason, "replay_full")
        self.assertEqual(len(cache), 10)
        for i in range(90):
            cache.check(f"peer{i}", "p", self.now)
        self.assertEqual(len(cache), 100)

    def test_a_busy_sender_keeps_going_once_its_oldest_keys_are_old_enough(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=900, max_entries=1000, max_per_sender=500,
                            min_window_seconds=30)
        for i in range(5000):  # 10 packets a second from one sender, for 500 seconds
            self.clock.advance(0.1)
            cache.check("alice", f"p{i}", self.clock.seconds())
        self.assertEqual(len(cache), 500)
        self.assertRaises(TooOld, cache.check, "alice", "p0", self.now + 0.1)
        self.assertRaises(Replayed, cache.check, "alice", "p4999", self.clock.seconds())
        self.assertEqual(cache.evictions["per_sender"], 4500)
        cache.check("bob", "p0", self.clock.seconds() - 400)  # other senders keep the whole window


class RestartTests(unittest.TestCase):
    """Issue 14.7: a packet captured before a restart cannot be played again after it."""

    def setUp(self) -> None:
        self.clock = clock_at(5000.0)

    def test_a_packet_dated_before_the_cache_was_made_is_refused(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=900, max_entries=10, refuse_before_start=True)
        self.clock.advance(5)
        with self.assertRaises(BeforeStart) as caught:
            cache.check("alice", "captured", 4990.0)
        self.assertEqual(caught.exception.reason, "before_start")
        cache.check("alice", "new", 5000.0)
        self.assertEqual(cache.not_before, 5000.0)

    def test_without_the_option_the_whole_window_is_accepted(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=900, max_entries=10)
        cache.check("alice", "p", 4200.0)


class PeekAndForgetTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = clock_at(5000.0)
        self.cache = ReplayCache(self.clock, window_seconds=900, max_entries=10)

    def test_peek_raises_like_check_but_remembers_nothing(self) -> None:
        self.cache.peek("alice", "p", 5000.0)
        self.cache.peek("alice", "p", 5000.0)
        self.assertEqual(len(self.cache), 0)
        self.cache.check("alice", "p", 5000.0)
        self.assertRaises(Replayed, self.cache.peek, "alice", "p", 5000.0)
        self.assertRaises(TooNew, self.cache.peek, "alice", "q", 6000.0)

    def test_a_forgotten_key_may_come_again_once(self) -> None:
        self.cache.check("alice", "p", 5000.0)
        self.cache.forget("alice", "p")
        self.assertEqual(len(self.cache), 0)
        self.cache.check("alice", "p", 5000.0)
        self.assertRaises(Replayed, self.cache.check, "alice", "p", 5000.0)
        self.clock.advance(901)
        self.cache.check("bob", "q", self.clock.seconds())
        self.assertEqual(len(self.cache), 1)

    def test_stats_say_how_full_the_cache_is(self) -> None:
        self.cache.check("alice", "p", 5000.0)
        stats = self.cache.stats()
        self.assertEqual((stats["entries"], stats["senders"], stats["max_entries"]), (1, 1, 10))


class LongRunTests(unittest.TestCase):
    """Two days of simulated traffic: memory stays bounded, fresh packets always pass, replays never do."""

    def test_two_days_of_traffic_from_many_peers(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        cache = ReplayCache(clock, window_seconds=900, max_entries=2000, max_per_sender=500, min_window_seconds=30,
                            refuse_before_start=True)
        sent: list[tuple[str, str, float]] = []
        for step in range(2 * 24 * 360):  # every 10 s for two days
            clock.advance(10)
            now = clock.seconds()
            for peer in range(5):
                packet = (f"peer{peer}", f"p{step}-{peer}", now - (step * 7 + peer) % 20)
                cache.check(*packet)  # never refused: traffic well inside the limits
                sent.append(packet)
            if step % 100 == 0 and len(sent) > 50:
                creator, packet_id, date = sent[-50]
                self.assertRaises(BadPacket, cache.check, creator, packet_id, date)
            self.assertLessEqual(len(cache), 2000)
        self.assertLessEqual(len(cache), 5 * 91)  # only the last 900 s are held
