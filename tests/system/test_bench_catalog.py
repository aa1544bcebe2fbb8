"""System test: scripts/bench_catalog.py on a small catalog, through a real node process.

Only the shape of what it reports is checked (every call answered and
checked, a start-up time, a peak RSS, one verdict per target), never a speed.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.scripts import load_script

bench_catalog = load_script("bench_catalog.py", "bench_catalog_system_test")


class BenchCatalogTests(SynchronousTestCase):
    def test_a_node_on_a_small_catalog_answers_every_listing_and_info(self) -> None:
        workdir = self.mktemp()
        os.makedirs(workdir)
        said: list[str] = []
        figures = bench_catalog.measure(workdir, files=45, per_folder=20, calls=6, say=said.append)
        self.assertEqual((figures["files_list"]["calls"], figures["file_info"]["calls"]), (6, 6))
        self.assertGreater(figures["start"]["ready_s"], 0)
        self.assertLessEqual(figures["start"]["api_s"], figures["start"]["ready_s"])
        self.assertGreater(figures["rss_mib"], 10)
        self.assertGreaterEqual(figures["files_list"]["cpu_ms"], 0)
        checks = bench_catalog.judge(figures, quick=True)
        self.assertEqual(len(checks), 4)
        self.assertTrue(all(c["verdict"] in ("PASS", "FAIL") for c in checks), checks)
        self.assertTrue(any("catalog of 45 files in 3 folders" in line for line in said), said)
        with open(os.path.join(workdir, "catalog-node.log"), encoding="utf-8", errors="replace") as handle:
            self.assertIn("SIGTERM received", handle.read())  # stopped, not left running
