"""The simulation's report: SVG charts, saved verdicts, the generated section of a page."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from twisted.trial import unittest

from bitnode.sim import report
from bitnode.sim.svg import Series, chart
from bitnode.sim.verdict import Verdict


class ChartTests(unittest.TestCase):
    def test_line_chart_is_well_formed_svg_with_one_point_per_value_and_a_guide(self) -> None:
        svg = chart("t <&>", "x", "y", [Series("a", ((0, 1), (1, 2), (2, 3)))], guide=(2.5, "target"))
        root = ET.fromstring(svg)
        ns = "{http://www.w3.org/2000/svg}"
        self.assertEqual(len(root.findall(f"{ns}circle")), 3)
        self.assertEqual(len(root.findall(f"{ns}polyline")), 1)
        self.assertIn("t <&>", [t.text for t in root.findall(f"{ns}text")])
        self.assertTrue(any(line.get("stroke-dasharray") for line in root.findall(f"{ns}line")))

    def test_bar_chart_draws_one_bar_per_point_of_each_series(self) -> None:
        svg = chart("bars", "x", "y", [Series("a", ((1, 5), (2, 7))), Series("b", ((1, 1), (2, 0)))], bars=True)
        root = ET.fromstring(svg)
        bars = [r for r in root.findall("{http://www.w3.org/2000/svg}rect") if r.get("width") != "10"]
        self.assertEqual(len(bars), 1 + 4)  # the white background, then the bars

    def test_empty_series_still_draws_axes(self) -> None:
        ET.fromstring(chart("nothing", "x", "y", [Series("a", ())]))


class ReportTests(unittest.TestCase):
    def test_section_is_replaced_in_place_and_the_rest_of_the_page_kept(self) -> None:
        page = "# Performance\n\nintro\n"
        once = report.replace_section(page, "first")
        self.assertTrue(once.startswith("# Performance\n\nintro\n\n" + report.BEGIN))
        twice = report.replace_section(once + "\n## after\n", "second")
        self.assertNotIn("first", twice)
        self.assertIn("second", twice)
        self.assertTrue(twice.endswith("## after\n"))
        self.assertEqual(twice.count(report.BEGIN), 1)

    def test_saved_verdicts_come_back_from_the_results_file(self) -> None:
        folder = self.mktemp()
        self.assertEqual((report.saved_verdicts(folder), report.saved_checks(folder)), ([], []))
        verdicts = [Verdict("sim_x", "x >= 1", "2", True), Verdict("sim_y", "y <= 1", "3", False)]
        report.write(folder, {"dht": {"verdicts": [v.line() for v in verdicts],
                                      "checks": [v.to_check() for v in verdicts],
                                      "settings": dict(report.FULL_SIZE["dht"])}}, {"a.svg": "<svg/>"})
        self.assertEqual(report.saved_verdicts(folder), ["PASS sim_x: 2 (target: x >= 1)",
                                                         "FAIL sim_y: 3 (target: y <= 1)"])
        self.assertEqual([c["verdict"] for c in report.saved_checks(folder)], ["PASS", "FAIL"])
        self.assertTrue(os.path.exists(os.path.join(folder, "a.svg")))

    def test_a_run_smaller_than_the_issue_size_is_not_measured(self) -> None:
        self.assertEqual(report.short_of_full_size("dht", {"nodes": 3000, "hours": 1, "churn_per_hour": 0.2}),
                         ["nodes 3000 of 10000"])
        self.assertEqual(report.short_of_full_size("rebuild", {"victim_customers": 500}), [])



class PartChartTests(unittest.TestCase):
    def test_market_and_rebuild_results_become_charts(self) -> None:
        market = {"settings": {"hire_choices": 3, "customers": 10, "per_customer": 5, "suppliers": 20},
                  "histogram": {"1": 5, "2": 10, "3": 5}, "max": 3, "ratio": 1.2}
        baseline = dict(market, histogram={"0": 4, "2": 8, "6": 8}, max=6, ratio=2.4)
        rebuild = {"settings": {"victim_customers": 10, "max_share_per_minute": 0.15, "dead_spread": 1.0},
                   "per_minute": {"10": 3, "12": 7}}
        charts = report.market_charts(market, baseline) | report.rebuild_charts(rebuild)
        self.assertEqual(sorted(charts), ["market-load.svg", "rebuild-spread.svg"])
        for svg in charts.values():
            ET.fromstring(svg)
        self.assertIn("first random that accepts (max 6, 2.40x mean)", charts["market-load.svg"])
