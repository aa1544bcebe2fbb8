"""PauseWatch: a late tick or a wall-clock jump against the monotonic clock is a pause; steady ticks are not."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.customer.pause_watch import PauseWatch


class PauseWatchTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.mono = 1000.0
        self.watch = PauseWatch(self.clock, lambda: 60.0, lambda: 30.0, monotonic=lambda: self.mono)

    def step(self, wall: float, mono: float | None = None) -> str:
        self.clock.advance(wall)
        self.mono += wall if mono is None else mono
        return self.watch.observe()

    def test_steady_ticks_for_a_week_are_no_pause(self):
        self.assertEqual(self.watch.observe(), "")
        for _ in range(7 * 24 * 60):
            self.assertEqual(self.step(60.0), "")
        self.assertEqual(self.watch.status()["pauses"], 0)

    def test_a_tick_late_by_less_than_the_tolerance_is_no_pause(self):
        self.watch.observe()
        self.assertEqual(self.step(89.0), "")

    def test_a_stopped_process_is_seen_by_a_late_tick(self):
        self.watch.observe()
        reason = self.step(600.0)
        self.assertIn("nothing ran for 600s", reason)
        self.assertEqual(self.watch.status(), {"pauses": 1, "last_pause": reason, "last_pause_at": 600.0})
        self.assertEqual(self.step(60.0), "")  # the next tick is normal again

    def test_a_suspend_is_seen_by_the_clocks_moving_apart_even_on_time(self):
        self.watch.observe()
        reason = self.step(60.0, mono=0.0)  # woke up right when a tick was due
        self.assertIn("the wall clock moved 60s while the monotonic clock moved 0s", reason)
        self.assertEqual(self.step(60.0, mono=35.0), "")  # apart by less than the tolerance

    def test_a_clock_set_backwards_is_a_pause(self):
        self.watch.observe()
        self.clock.rightNow -= 3600
        self.mono += 60
        self.assertIn("the wall clock moved -3600s", self.watch.observe())

    def test_reset_forgets_the_last_observation(self):
        self.watch.observe()
        self.clock.advance(10_000)
        self.watch.reset()
        self.assertEqual(self.watch.observe(), "")
