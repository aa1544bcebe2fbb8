"""Tests for bitnode.transport.limits: per-IP rate limit, connection counts, the shared buffer budget."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.transport.limits import BufferBudget, ConnectionLimits, PeerLimits, RateLimit


class RateLimitTests(unittest.TestCase):
    def test_a_burst_then_the_rate_per_key(self) -> None:
        clock = Clock()
        limit = RateLimit(clock, per_minute=6)
        self.assertEqual([limit.allow("10.0.0.1") for _ in range(8)], [True] * 6 + [False] * 2)
        self.assertTrue(limit.allow("10.0.0.2"))  # another IP has its own bucket
        clock.advance(10)
        self.assertTrue(limit.allow("10.0.0.1"))
        self.assertFalse(limit.allow("10.0.0.1"))
        self.assertEqual((limit.stats()["allowed"], limit.stats()["rate_limited"]), (8, 3))

    def test_over_a_day_a_steady_source_gets_exactly_the_rate(self) -> None:
        clock = Clock()
        limit = RateLimit(clock, per_minute=60, burst=10)
        allowed = 0
        for _ in range(24 * 3600):  # one attempt a second... and a second one every second
            allowed += limit.allow("10.0.0.1") + limit.allow("10.0.0.1")
            clock.advance(1)
        self.assertLessEqual(abs(allowed - (24 * 3600 + 10)), 2)

    def test_zero_means_no_limit_and_memory_is_bounded(self) -> None:
        clock = Clock()
        self.assertTrue(all(RateLimit(clock, per_minute=0).allow("x") for _ in range(1000)))
        limit = RateLimit(clock, per_minute=1, max_keys=100)
        for n in range(10_000):
            limit.allow(f"10.0.{n // 256}.{n % 256}")
        self.assertLessEqual(limit.stats()["sources"], 100)
        self.assertRaises(ValueError, RateLimit, clock, -1)


class ConnectionLimitsTests(unittest.TestCase):
    def test_per_ip_and_total(self) -> None:
        limits = ConnectionLimits(per_ip=2, total=3)
        self.assertEqual([limits.admit("a"), limits.admit("a"), limits.admit("a")], [True, True, False])
        self.assertTrue(limits.admit("b"))
        self.assertFalse(limits.admit("c"))
        limits.release("a")
        self.assertTrue(limits.admit("c"))
        self.assertEqual(limits.stats(), {"incoming": 3, "max_per_ip": 2, "max_total": 3, "refused_per_ip": 1,
                                          "refused_total": 1})

    def test_zero_means_no_limit(self) -> None:
        limits = ConnectionLimits(per_ip=0, total=0)
        self.assertTrue(all(limits.admit("a") for _ in range(10_000)))


class BufferBudgetTests(unittest.TestCase):
    def test_reservations_waiters_and_the_per_key_share(self) -> None:
        budget = BufferBudget(1000, per_key_share=0.5)
        self.assertTrue(budget.try_reserve("a", 400))
        self.assertFalse(budget.try_reserve("a", 200))  # a would hold 600 > its 500
        self.assertTrue(budget.try_reserve("b", 500))
        self.assertFalse(budget.try_reserve("c", 200))  # 1100 > 1000
        woken = []
        budget.wait("c-conn", lambda: woken.append("c"))
        budget.release("b", 500)
        self.assertEqual(woken, ["c"])
        self.assertTrue(budget.try_reserve("c", 200))
        self.assertEqual(budget.stats()["bytes_buffered"], 600)
        self.assertEqual(budget.stats()["peak_bytes_buffered"], 900)

    def test_a_frame_bigger_than_the_budget_fits_alone(self) -> None:
        budget = BufferBudget(100)
        self.assertTrue(budget.try_reserve("a", 5000))
        self.assertFalse(budget.try_reserve("b", 1))
        budget.release("a", 5000)
        self.assertEqual(budget.reserved, 0)

    def test_cancelled_waiters_are_not_woken(self) -> None:
        budget = BufferBudget(10)
        budget.try_reserve("a", 10)
        woken = []
        budget.wait("x", lambda: woken.append("x"))
        budget.cancel("x")
        budget.release("a", 10)
        self.assertEqual(woken, [])
        self.assertRaises(ValueError, BufferBudget, 0)


class PeerLimitsTests(unittest.TestCase):
    def test_defaults_are_the_documented_ones(self) -> None:
        limits = PeerLimits()
        self.assertEqual((limits.replay_future, limits.replay_min_window, limits.introductions_per_minute,
                          limits.max_stranger_body, limits.connections_per_ip, limits.connections,
                          limits.max_buffered, limits.challenge_ttl),
                         (60.0, 30.0, 60, 16 * 1024, 64, 512, 64 * 1024 * 1024, 300.0))
