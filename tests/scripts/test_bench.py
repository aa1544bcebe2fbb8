"""Tests for scripts/bench.py: it runs end to end in quick mode and reports every figure.

No timing is asserted anywhere: only that figures exist, are positive and are
reported with their targets.
"""

from __future__ import annotations

import argparse
import io
import os

from twisted.trial import unittest

from tests.scripts import load_script

bench = load_script("bench.py", "bitnode_bench_under_test")

API_FIGURES = {"node_rate": 5000.0, "bare_rate": 6000.0, "ratio": 5000 / 6000, "node_cpu_us": 200.0,
               "bare_cpu_us": 160.0, "pinned": True}
PIPELINE_FIGURES = {"size": 8 * bench.MiB, "k": 3, "n": 5, "threads": 2, "single_mib_s": 100.0,
                    "multi_mib_s": 150.0, "limit_mib_s": 150.0, "rss_peak_mib": 60.0, "rss_baseline_mib": 30.0}


class QuickRunTests(unittest.TestCase):
    """The whole script in quick mode, in this process (servers are child processes)."""

    def test_quick_run_reports_every_figure_and_target(self):
        args = bench.parse_args(["--quick", "--size", "2MB", "--requests", "100"])
        out = io.StringIO()
        figures = bench.run(args, out)
        api, pipeline = figures["api"], figures["pipeline"]
        for key in ("node_rate", "bare_rate", "ratio", "node_cpu_us", "bare_cpu_us"):
            self.assertGreater(api[key], 0, key)
        self.assertEqual(pipeline["size"], 2 * bench.MiB)
        for key in ("single_mib_s", "multi_mib_s", "rss_peak_mib"):
            self.assertGreater(pipeline[key], 0, key)
        self.assertIsNone(figures["transfer"])
        text = out.getvalue()
        self.assertIn("upload/download on localnet: not yet (needs the storage issue)", text)
        self.assertIn("== summary", text)
        ratio_row = next(line for line in text.splitlines() if line.startswith("API overhead: node / bare"))
        self.assertTrue(ratio_row.endswith(("PASS", "FAIL")), ratio_row)
        self.assertIn(">= 0.80", ratio_row)

    def test_a_server_that_cannot_start_is_reported(self):
        workdir = self.mktemp()
        os.makedirs(workdir)
        with open(os.path.join(workdir, "node"), "w") as handle:
            handle.write("a file where the node's basedir should be")
        with self.assertRaises(RuntimeError) as caught:
            bench.ServerProcess("node", workdir)
        self.assertIn("node server did not start", str(caught.exception))


class ParseResponseTests(unittest.TestCase):
    """The client's minimal HTTP/1.1 response reader."""

    def test_content_length_body(self):
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1"
        self.assertEqual(bench.parse_response(raw), (200, b"{}", len(raw) - len(b"HTTP/1.1")))

    def test_chunked_body(self):
        raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        self.assertEqual(bench.parse_response(raw), (404, b"abcde", len(raw)))

    def test_incomplete_responses_wait_for_more(self):
        self.assertIsNone(bench.parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"))
        self.assertIsNone(bench.parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab"))
        self.assertIsNone(bench.parse_response(b"HTTP/1.1 200 OK\r\nContent-"))

    def test_a_body_without_length_is_refused(self):
        self.assertRaises(ValueError, bench.parse_response, b"HTTP/1.1 200 OK\r\n\r\nabc")


class SummaryTests(unittest.TestCase):
    """The final block: figures, targets, verdicts."""

    def _row(self, lines, start):
        return next(line for line in lines if line.startswith(start))

    def test_targets_pass_and_fail(self):
        lines = bench.summary_lines(dict(API_FIGURES), dict(PIPELINE_FIGURES))
        self.assertTrue(self._row(lines, "API overhead").endswith("PASS"))
        self.assertTrue(self._row(lines, "pipeline process peak RSS").endswith("PASS"))
        slow = dict(API_FIGURES, ratio=0.5)
        fat = dict(PIPELINE_FIGURES, rss_peak_mib=400.0)
        lines = bench.summary_lines(slow, fat)
        self.assertTrue(self._row(lines, "API overhead").endswith("FAIL"))
        self.assertTrue(self._row(lines, "pipeline process peak RSS").endswith("FAIL"))
        self.assertEqual(bench.failed_targets(slow, fat), ["api_overhead", "pipeline_rss"])
        self.assertEqual(bench.failed_targets(API_FIGURES, PIPELINE_FIGURES), [])

    def test_transfers_are_never_given_a_number(self):
        lines = bench.summary_lines(API_FIGURES, PIPELINE_FIGURES)
        for start in ("upload on localnet", "download on localnet"):
            row = self._row(lines, start)
            self.assertIn("not yet", row)
            self.assertTrue(row.endswith("NOT MEASURED"))
            self.assertIn("= 75 MiB/s", row)  # half of the 150 MiB/s pipeline limit

    def test_skipped_parts_are_named(self):
        lines = bench.summary_lines(None, None)
        self.assertTrue(self._row(lines, "API overhead").endswith("NOT MEASURED"))
        self.assertTrue(self._row(lines, "pipeline limit").endswith("NOT MEASURED"))
        self.assertEqual(bench.failed_targets(None, None), [])


class OptionTests(unittest.TestCase):
    """Command line options."""

    def test_defaults_are_the_design_sizes(self):
        args = bench.parse_args([])
        self.assertEqual((args.size, args.rounds), (512 * bench.MiB, 3))

    def test_quick_shrinks_the_defaults(self):
        args = bench.parse_args(["--quick"])
        self.assertLess(args.size, 512 * bench.MiB)
        self.assertEqual(args.rounds, 1)

    def test_sizes_take_units_or_bytes(self):
        self.assertEqual(bench.parse_size("64MB"), 64 * bench.MiB)
        self.assertEqual(bench.parse_size("4096"), 4096)
        for bad in ("lots", "0"):
            self.assertRaises(argparse.ArgumentTypeError, bench.parse_size, bad)

    def test_pipeline_alone(self):
        args = bench.parse_args(["--quick", "--skip-api", "--size", "1MB"])
        figures = bench.run(args, io.StringIO())
        self.assertIsNone(figures["api"])
        self.assertGreater(figures["pipeline"]["single_mib_s"], 0)
