"""Tests for bitnode.storage.patience: the wait a slow supplier gets, and giving up stragglers."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.storage.patience import GraceWait, Patience


class PatienceTests(unittest.TestCase):
    def test_the_floor_holds_until_answers_are_slow(self):
        patience = Patience(floor=2.0, ceiling=60.0)
        self.assertEqual(patience.delay(), 2.0)
        patience.record(0.1)
        self.assertEqual(patience.delay(), 2.0)
        patience.record(3.0)
        self.assertEqual(patience.delay(), 12.0)

    def test_the_ceiling_caps_the_wait(self):
        patience = Patience(floor=2.0, ceiling=10.0)
        patience.record(30.0)
        self.assertEqual(patience.delay(), 10.0)

    def test_old_answers_are_forgotten(self):
        patience = Patience(floor=1.0, ceiling=100.0, window=3)
        patience.record(10.0)
        for _ in range(3):
            patience.record(0.5)
        self.assertEqual(patience.delay(), 2.0)

    def test_a_floor_above_the_ceiling_gives_the_ceiling(self):
        self.assertEqual(Patience(floor=10.0, ceiling=5.0).delay(), 5.0)

    def test_bad_parameters_are_refused(self):
        self.assertRaises(ValueError, Patience, 0, 10)
        self.assertRaises(ValueError, Patience, 1, 0)
        self.assertRaises(ValueError, Patience, 1, 10, factor=0.5)


class GraceWaitTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.patience = Patience(floor=5.0, ceiling=60.0)

    def test_all_answers_end_the_wait_without_a_timer(self):
        calls = {"a": defer.Deferred(), "b": defer.Deferred()}
        wait = GraceWait(self.clock, self.patience, calls, enough=1)
        calls["a"].callback(1)
        self.assertNoResult(wait.done)
        calls["b"].errback(ValueError("refused"))
        outcomes = self.successResultOf(wait.done)
        self.assertEqual(outcomes["a"], (True, 1))
        self.assertFalse(outcomes["b"][0])
        outcomes["b"][1].trap(ValueError)
        self.assertEqual(wait.given_up, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stragglers_after_enough_answers_get_the_grace_then_are_cancelled(self):
        silent = defer.Deferred()
        calls = {"a": defer.succeed("x"), "b": defer.succeed("y"), "c": silent}
        wait = GraceWait(self.clock, self.patience, calls, enough=2)
        self.clock.advance(4.9)
        self.assertNoResult(wait.done)
        self.clock.advance(0.1)
        outcomes = self.successResultOf(wait.done)
        self.assertEqual(wait.given_up, {"c"})
        self.assertFalse(outcomes["c"][0])
        outcomes["c"][1].trap(defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_without_enough_answers_everyone_is_waited_for(self):
        slow = defer.Deferred()
        wait = GraceWait(self.clock, self.patience, {"a": defer.fail(OSError("down")), "b": slow}, enough=1)
        self.clock.advance(1000)
        self.assertNoResult(wait.done)
        slow.callback("late")
        self.assertEqual(self.successResultOf(wait.done)["b"], (True, "late"))

    def test_the_grace_follows_the_answer_times(self):
        first, second = defer.Deferred(), defer.Deferred()
        wait = GraceWait(self.clock, self.patience, {"a": first, "b": second, "c": defer.Deferred()}, enough=2)
        self.clock.advance(3.0)
        first.callback(None)
        second.callback(None)  # both took 3 s: the grace is 4 x 3 s
        self.clock.advance(11.9)
        self.assertNoResult(wait.done)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(wait.done)["a"], (True, None))
        self.assertEqual(wait.given_up, {"c"})

    def test_no_calls_is_done_at_once(self):
        self.assertEqual(self.successResultOf(GraceWait(self.clock, self.patience, {}, enough=1).done), {})
