"""Tests for bitnode.main.ratelimit: keyed token buckets on a Clock, bounded memory."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.main.ratelimit import KeyedRateLimiter


class KeyedRateLimiterTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.limiter = KeyedRateLimiter(self.clock, rate=2.0, burst=4, max_keys=100)

    def test_a_burst_then_the_rate(self):
        self.assertEqual([self.limiter.allow("a") for _ in range(5)], [True] * 4 + [False])
        self.assertEqual(self.limiter.retry_after("a"), 0.5)
        self.assertTrue(self.limiter.allow("b"))  # keys are apart
        self.clock.advance(0.5)
        self.assertEqual([self.limiter.allow("a") for _ in range(2)], [True, False])
        self.clock.advance(3600)
        self.assertEqual([self.limiter.allow("a") for _ in range(5)], [True] * 4 + [False])  # never above burst

    def test_costs_and_a_zero_rate(self):
        self.assertTrue(self.limiter.allow("a", cost=3))
        self.assertFalse(self.limiter.allow("a", cost=3))
        self.limiter.configure(0, 1)
        self.assertTrue(all(self.limiter.allow("a") for _ in range(1000)))
        self.assertEqual(self.limiter.retry_after("a"), 0.0)

    def test_memory_stays_bounded_under_a_flood_of_keys(self):
        for i in range(10_000):
            self.limiter.allow(f"peer-{i}")
            self.clock.advance(0.001)
        self.assertLessEqual(len(self.limiter), 100)
        # a key that keeps sending is remembered (least recently used ones go first)
        self.assertEqual([self.limiter.allow("peer-9999") for _ in range(4)], [True, True, True, False])
