"""Tests for bitnode.transport.replay."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.transport.replay import ReplayCache, Replayed, TooNew, TooOld


class ReplayCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.cache = ReplayCache(self.clock, window_seconds=60, max_entries=100, max_future_seconds=10)

    def test_first_packet_is_accepted(self) -> None:
        self.cache.check("alice", "p1", 1000.0)
        self.assertEqual(len(self.cache), 1)

    def test_duplicate_is_rejected(self) -> None:
        self.cache.check("alice", "p1", 1000.0)
        with self.assertRaises(Replayed) as caught:
            self.cache.check("alice", "p1", 1000.0)
        self.assertEqual(caught.exception.reason, "replay")

    def test_same_id_from_another_creator_is_fine(self) -> None:
        self.cache.check("alice", "p1", 1000.0)
        self.cache.check("bob", "p1", 1000.0)

    def test_too_old_is_rejected(self) -> None:
        self.cache.check("alice", "edge", 940.0)  # exactly at the window's edge
        with self.assertRaises(TooOld) as caught:
            self.cache.check("alice", "p1", 939.9)
        self.assertEqual(caught.exception.reason, "too_old")

    def test_too_far_in_future_is_rejected(self) -> None:
        self.cache.check("alice", "edge", 1010.0)
        with self.assertRaises(TooNew) as caught:
            self.cache.check("alice", "p1", 1010.1)
        self.assertEqual(caught.exception.reason, "too_new")

    def test_future_defaults_to_window(self) -> None:
        cache = ReplayCache(self.clock, window_seconds=30, max_entries=10)
        cache.check("a", "1", 1030.0)
        self.assertRaises(TooNew, cache.check, "a", "2", 1030.5)

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
        # p0 (oldest date) was evicted; its replay is refused by the floor
        self.assertEqual(cache.floor, 950.0)
        self.assertRaises(TooOld, cache.check, "alice", "p0", 950.0)
        for i, date in enumerate(dates[1:], start=1):
            self.assertRaises(Replayed, cache.check, "alice", f"p{i}", date)
        # a new packet newer than the floor is still fine
        cache.check("bob", "fresh", 1000.0)

    def test_invalid_parameters(self) -> None:
        self.assertRaises(ValueError, ReplayCache, self.clock, 0, 10)
        self.assertRaises(ValueError, ReplayCache, self.clock, 10, 0)
        self.assertRaises(ValueError, ReplayCache, self.clock, 10, 10, -1)
