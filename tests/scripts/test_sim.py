"""Tests for scripts/sim.py: the page section and charts made from a run's results."""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from bitnode.sim import report
from tests.scripts import load_script

sim = load_script("sim.py", "sim_script_under_test")

DHT = {"settings": {"nodes": 300, "k": 20, "alpha": 3, "rpc_timeout": 5.0, "latency": 0.05, "jitter": 0.03,
                    "churn_per_hour": 0.2, "hours": 0.5, "lookups_per_hour": 600, "records": 30},
       "success": 1.0, "exact": 0.99, "median_hops": 2, "hops": {"1": 10, "2": 20}, "state_max": 190,
       "state_bound": 360, "joins_failed": 0, "datagrams": 1000, "wall_seconds": 10, "setup_seconds": 2,
       "samples": [{"minute": 10, "values_found": 9, "value_lookups": 9, "nodes_exact": 8, "node_lookups": 9,
                    "hops_median": 2, "contacts_median": 100, "contacts_max": 120, "state_max": 190}],
       "verdicts": ["PASS sim_dht_success: 100% (target: x)"], "checks": []}
MARKET = {"settings": {"hire_choices": 3, "customers": 10, "per_customer": 5, "suppliers": 20, "start_window": 600},
          "histogram": {"1": 5, "2": 10, "3": 5}, "max": 3, "ratio": 1.2, "mean": 2.5,
          "verdicts": ["PASS sim_market_spread: 1.2x (target: y)"], "checks": []}
BASELINE = {k: v for k, v in MARKET.items() if k not in ("verdicts", "checks")} | {"max": 6, "ratio": 2.4}
REBUILD = {"settings": {"victim_customers": 10, "max_share_per_minute": 0.15, "ping_interval": 60,
                        "dead_after": 600, "dead_spread": 1.0},
           "per_minute": {"10": 3, "12": 7}, "replaced": 10, "busiest_share": 0.7, "positions_replaced": {"1": 10},
           "verdicts": ["FAIL sim_rebuild_spread: 70% (target: z)"], "checks": []}
REBUILD_BASELINE = {k: v for k, v in REBUILD.items() if k not in ("verdicts", "checks")} | {"per_minute": {"11": 10}}


class SimScriptTests(unittest.TestCase):
    def test_from_results_redraws_every_chart_and_the_page_section(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        page = os.path.join(folder, "performance.md")
        with open(page, "w") as f:
            f.write("# Performance\n\npipe's figures\n")
        with open(os.path.join(folder, report.RESULTS), "w") as f:
            json.dump({"dht": DHT, "market": MARKET, "market_baseline": BASELINE,
                       "rebuild": REBUILD, "rebuild_baseline": REBUILD_BASELINE}, f)
        self.assertEqual(sim.main(["--from-results", "--out", folder, "--page", page]), 0)
        self.assertEqual(sim.main(["--from-results", "--out", folder, "--page", page, "--strict"]), 1)
        for name in ("dht-success.svg", "dht-hops.svg", "dht-state.svg", "market-load.svg", "rebuild-spread.svg"):
            self.assertTrue(os.path.exists(os.path.join(folder, name)), name)
        with open(page) as f:
            text = f.read()
        self.assertTrue(text.startswith("# Performance\n\npipe's figures\n"))
        for words in ("### DHT under churn", "### Load spread of the market", "(**2.40x** the mean)",
                      "### Death of a supplier of many customers", "FAIL sim_rebuild_spread",
                      "Without the spread (`dead-after-spread` 0"):
            self.assertIn(words, text)
        self.assertEqual(text.count(report.BEGIN), 1)

    def test_a_run_of_some_parts_keeps_the_saved_results_of_the_others(self) -> None:
        saved = {"dht": DHT, "market": MARKET, "market_baseline": BASELINE, "rebuild": REBUILD}
        fresh_market = MARKET | {"max": 4}
        merged = sim.merged(saved, {"market": fresh_market}, {"market"})
        # The old baseline belonged to the old market run: it goes with it.
        self.assertEqual(merged, {"dht": DHT, "market": fresh_market, "rebuild": REBUILD})
        self.assertEqual(sim.merged(saved, {"dht": DHT | {"success": 0.5}}, {"dht"})["market_baseline"], BASELINE)

