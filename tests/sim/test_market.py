"""Small versions of `make sim`'s market runs: real fire_hire + supplier_finder over a simulated DHT."""

from __future__ import annotations

import statistics

from twisted.trial import unittest

from bitnode.sim.market import MarketSettings, run_market, run_rebuild


def spread(loads: dict[str, int]) -> float:
    return statistics.pstdev(loads.values())


class MarketTests(unittest.TestCase):
    def test_least_loaded_of_three_keeps_every_supplier_within_twice_the_mean_unlike_one_random_pick(self) -> None:
        settings = MarketSettings(suppliers=60, customers=30, start_window=600, seed=4)
        result = run_market(settings)
        self.assertEqual(result.complete, 30)
        self.assertEqual(sum(result.loads.values()), 150)  # 30 customers x 5, nobody counted twice
        self.assertLessEqual(result.ratio, 2.0, result.histogram())
        self.assertEqual([v.passed for v in result.verdicts()], [True])
        # the old choice, the first random supplier that accepts: a Poisson spread, twice as wide or more
        random_pick = run_market(MarketSettings(**{**settings.__dict__, "hire_choices": 1}))
        self.assertEqual(random_pick.complete, 30)
        self.assertGreater(spread(random_pick.loads), 1.5 * spread(result.loads),
                           (random_pick.histogram(), result.histogram()))


class RebuildTests(unittest.TestCase):
    def test_customers_of_a_dead_supplier_each_replace_one_position_spread_over_minutes(self) -> None:
        result = run_rebuild(MarketSettings(suppliers=40, customers=30, victim_customers=30, start_window=600,
                                            seed=5))
        self.assertEqual(len(result.replaced_at), 30)
        self.assertEqual(dict(result.positions_replaced), {1: 30})
        dead_after = result.settings.dead_after
        self.assertGreaterEqual(min(result.replaced_at), dead_after)  # nobody fires early
        self.assertLessEqual(max(result.replaced_at), 2 * dead_after + 300)  # share <= dead_after, + pings/ticks
        self.assertGreater(max(result.replaced_at) - min(result.replaced_at), dead_after / 2)

    def test_without_a_spread_they_all_replace_it_within_a_few_minutes(self) -> None:
        result = run_rebuild(MarketSettings(suppliers=40, customers=30, victim_customers=30, start_window=600,
                                            seed=5, dead_spread=0.0))
        self.assertEqual(len(result.replaced_at), 30)
        self.assertLess(max(result.replaced_at) - min(result.replaced_at), 180)
        self.assertEqual([v.passed for v in result.verdicts()], [False])
