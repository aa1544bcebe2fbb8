"""A small version of `make sim`'s DHT run: the same targets on a few hundred real nodes under churn."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.sim.dht_churn import ChurnNetwork, ChurnSettings, run_churn


class WarmStartTests(unittest.TestCase):
    def test_warm_tables_hold_up_to_k_per_bucket_and_find_the_true_closest(self) -> None:
        sim = ChurnNetwork(ChurnSettings(nodes=120, k=8, seed=3))
        self.addCleanup(sim.stop)
        sim.warm_start()
        for node in sim.nodes.values():
            state = node.routing_state()
            self.assertGreaterEqual(state["contacts"], 8)
            self.assertEqual(state["replacements"], 0)  # every bucket range got at most k: nobody waits
        asker = sim.asker()
        target = sim.rng.getrandbits(256)
        found = sim.net.run_until(asker.find_node(target))
        truth = sorted((i for i in sim.ids if i != asker.node_id), key=lambda i: i ^ target)[:8]
        self.assertEqual([int(c["id"], 16) for c in found], truth)


class ChurnTests(unittest.TestCase):
    def test_small_network_under_churn_meets_the_targets(self) -> None:
        settings = ChurnSettings(nodes=150, hours=0.5, lookups_per_hour=480, records=30, seed=2)
        result = run_churn(settings)
        summary = result.to_dict()
        self.assertGreater(summary["counters"]["left"], 5)
        self.assertGreater(summary["counters"]["joined"], 5)
        self.assertEqual(result.joins_failed, 0)
        self.assertGreaterEqual(result.value_lookups, 100)
        self.assertEqual([v.line() for v in result.verdicts() if not v.passed], [])
        self.assertGreaterEqual(result.success, 0.99)
        self.assertLessEqual(result.median_hops, 4)
        self.assertLessEqual(result.state_max, result.state_bound)
        self.assertEqual(len(summary["samples"]), 3)


class ShortcutTests(unittest.TestCase):
    def test_carrying_parsed_messages_changes_nothing_that_is_simulated(self) -> None:
        # The same seeded run with every datagram parsed and with one in five: identical figures.
        runs = [run_churn(ChurnSettings(nodes=80, hours=0.25, lookups_per_hour=400, records=10, seed=4,
                                        parse_every=every)).to_dict() for every in (1, 5)]
        for run in runs:
            for key in ("wall_seconds", "setup_seconds"):
                run.pop(key)
            run["settings"].pop("parse_every")
        checks = [run["counters"].pop("parse_checks") for run in runs]
        self.assertEqual([run["counters"].pop("parse_mismatches") for run in runs], [0, 0])
        self.assertEqual(checks[0], 0)
        self.assertGreater(checks[1], 100)
        self.maxDiff = None
        self.assertEqual(runs[0], runs[1])
        self.assertGreater(runs[0]["datagrams"], 5000)

