"""Tests for scripts/bench_sim.py: the simulation's verdicts in `make bench`."""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from tests.scripts import load_script

bench_sim = load_script("bench_sim.py", "bench_sim_under_test")


class BenchSimTests(unittest.TestCase):
    def test_quick_runs_a_small_simulation_and_answers_in_the_bench_shape(self) -> None:
        said: list[str] = []
        checks = bench_sim.verdicts(True, self.mktemp(), said.append)
        self.assertEqual([c["name"] for c in checks], ["sim_dht_success", "sim_dht_hops"])
        self.assertEqual({c["verdict"] for c in checks}, {"PASS"})
        self.assertTrue(all(c["measured"].endswith("(quick: 100 nodes)") for c in checks))
        self.assertIn("quick simulation", said[0])

    def test_full_bench_reports_the_last_make_sim_run_or_nothing(self) -> None:
        folder = self.mktemp()
        self.patch(bench_sim, "SIM_FOLDER", folder)
        said: list[str] = []
        self.assertEqual(bench_sim.verdicts(False, folder, said.append), [])
        self.assertIn("run `make sim` first", said[-1])
        os.makedirs(folder)
        check = {"name": "sim_dht_success", "target": "t", "measured": "99.9%", "verdict": "PASS"}
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump({"dht": {"checks": [check], "settings": {"nodes": 10_000, "hours": 1, "churn_per_hour": 0.2}},
                       "market": {"checks": [check | {"name": "sim_market_spread"}],
                                  "settings": {"suppliers": 200, "customers": 100, "per_customer": 5}}}, f)
        full, small = bench_sim.verdicts(False, folder, said.append)
        self.assertEqual((full["name"], full["verdict"]), ("sim_dht_success", "PASS"))
        self.assertTrue(full["measured"].startswith("99.9% (make sim "))
        # A run smaller than the size does not measure its target, whatever it found.
        self.assertEqual((small["name"], small["verdict"]), ("sim_market_spread", "NOT MEASURED"))
        self.assertTrue(small["measured"].startswith(
            "PASS at a smaller size (suppliers 200 of 2000, customers 100 of 1000): 99.9% (make sim "))
