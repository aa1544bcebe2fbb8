"""Tests for scripts/bench.py and its bench_report / bench_transfer modules.

No timing is asserted anywhere: only that figures exist, are positive and are
reported with their targets and verdicts. The localnet transfers are covered
by tests/system/test_bench.py (real node processes).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os

from twisted.trial import unittest

from tests.scripts import load_script

bench = load_script("bench.py", "bitnode_bench_under_test")
report = load_script("bench_report.py", "bitnode_bench_report_under_test")
transfer = load_script("bench_transfer.py", "bitnode_bench_transfer_under_test")
MiB = 1024 * 1024

API = {"node_rate": 5000.0, "bare_rate": 6000.0, "ratio": 5000 / 6000, "node_cpu_us": 200.0, "bare_cpu_us": 160.0,
       "pinned": True}


def direction(mib_s: float, rss: float = 100.0) -> dict:
    """The figures of one upload or download as BenchNet reports them."""
    return {"seconds": 1.0, "mib_s": mib_s, "customer_rss_mib": rss, "suppliers_rss_mib": 60.0,
            "customer_cpu_s": 1.0, "suppliers_cpu_s": 2.0}


def size_result(size: int, up: float, down: float, limit_up: float = 200.0, limit_down: float = 400.0,
                rss: float = 100.0, ok: bool = True) -> dict:
    """One size's result: in-process limits and both directions."""
    return {"size": size, "limit": {"up": limit_up, "down": limit_down}, "upload": direction(up, rss),
            "download": direction(down, rss), "sha256_ok": ok}


def verdicts(checks: list[dict]) -> dict:
    return {check["name"]: check["verdict"] for check in checks}


class QuickRunTests(unittest.TestCase):
    """The script in quick mode without a localnet, in this process (the API servers are child processes)."""

    def test_quick_run_reports_every_figure_and_target(self):
        args = bench.parse_args(["--quick", "--skip-transfer", "--sizes", "1MB", "--requests", "100"])
        out = io.StringIO()
        figures = bench.run(args, out)
        api = figures["api"]
        for key in ("node_rate", "bare_rate", "ratio", "node_cpu_us", "bare_cpu_us"):
            self.assertGreater(api[key], 0, key)
        [one] = figures["transfers"]
        self.assertEqual(one["size"], MiB)
        self.assertGreater(one["limit"]["up"], 0)
        self.assertGreater(one["limit"]["down"], 0)
        self.assertIsNone(one["upload"])
        self.assertFalse(figures["broken"])
        text = out.getvalue()
        self.assertIn("== results", text)
        ratio_row = next(line for line in text.splitlines() if line.startswith("API process_health node / bare"))
        self.assertTrue(ratio_row.endswith(("PASS", "FAIL")), ratio_row)
        upload_row = next(line for line in text.splitlines() if line.startswith("upload at 512 MiB"))
        self.assertTrue(upload_row.endswith("NOT MEASURED"), upload_row)

    def test_a_server_that_cannot_start_is_reported(self):
        workdir = self.mktemp()
        os.makedirs(workdir)
        with open(os.path.join(workdir, "node"), "w") as handle:
            handle.write("a file where the node's basedir should be")
        with self.assertRaises(RuntimeError) as caught:
            bench.ServerProcess("node", workdir)
        self.assertIn("node server did not start", str(caught.exception))


class PipelineTests(unittest.TestCase):
    """The in-process limits and the test data."""

    def test_limits_of_both_directions_with_one_and_two_threads(self):
        workdir = self.mktemp()
        os.makedirs(workdir)
        path = os.path.join(workdir, "in.bin")
        transfer.write_test_file(path, 3 * MiB + 5)
        limits = transfer.pipeline_limits(path, workdir, 3, 5, segment_size=MiB, threads=2)
        self.assertEqual(sorted(limits["up_by_threads"]), [1, 2])
        self.assertEqual(sorted(limits["down_by_threads"]), [1, 2])
        self.assertGreater(limits["up"], 0)
        self.assertGreater(limits["down"], 0)
        self.assertEqual(sorted(os.listdir(workdir)), ["in.bin"])  # blocks and output cleaned up

    def test_test_file_is_random_and_its_hash_is_returned(self):
        workdir = self.mktemp()
        os.makedirs(workdir)
        path = os.path.join(workdir, "in.bin")
        digest = transfer.write_test_file(path, 2 * MiB + 1, chunk=MiB)
        with open(path, "rb") as handle:
            data = handle.read()
        self.assertEqual(len(data), 2 * MiB + 1)
        self.assertEqual(hashlib.sha256(data).hexdigest(), digest)
        self.assertEqual(transfer.file_sha256(path), digest)

    def test_rss_sampler_keeps_a_peak_per_process(self):
        with transfer.RssSampler({"me": 0}, interval=0.001) as rss:
            pass
        self.assertGreater(rss.peak["me"], 0)
        self.assertGreaterEqual(rss.peak["me"], rss.baseline["me"])
        self.assertEqual(rss.peak_mib(["nobody"]), 0)

    def test_py_spy_is_looked_for(self):
        self.assertIsNone(transfer.find_py_spy(os.path.join(self.mktemp(), "no-py-spy")))


class ParseResponseTests(unittest.TestCase):
    """The API client's minimal HTTP/1.1 response reader."""

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


class TableTests(unittest.TestCase):
    """The plain-text table and the per-size rows."""

    def test_columns_are_as_wide_as_their_widest_cell(self):
        lines = report.format_table(["size", "MiB/s"], [["16 MiB", "5.0"], ["512 MiB", "123.4"]])
        self.assertEqual(lines, ["size     MiB/s", "-------  -----", "16 MiB     5.0", "512 MiB  123.4"])

    def test_alignment_per_column(self):
        lines = report.format_table(["a", "b"], [["x", "y"], ["xx", "yy"]], align="rl")
        self.assertEqual(lines[2:], [" x  y", "xx  yy"])

    def test_rows_must_fit_the_header(self):
        self.assertRaises(ValueError, report.format_table, ["a", "b"], [["only one"]])
        self.assertRaises(ValueError, report.format_table, ["a", "b"], [], align="l")

    def test_sizes_are_named_in_mib(self):
        self.assertEqual(report.fmt_size(512 * MiB), "512 MiB")
        self.assertEqual(report.fmt_size(4096), "4 KiB")
        self.assertEqual(report.fmt_size(100), "100 B")

    def test_a_size_row_has_speeds_ratios_memory_cpu_and_the_hash_check(self):
        row = report.transfer_row(size_result(128 * MiB, up=50.0, down=100.0, rss=120.0))
        self.assertEqual(row, ["128 MiB", "50.0", "100.0", "200.0", "400.0", "0.25", "0.25", "120", "60",
                               "8 / 8", "16 / 16", "OK"])
        self.assertEqual(len(row), len(report.TRANSFER_HEADER))

    def test_failed_and_unmeasured_rows(self):
        broken = {"size": MiB, "limit": {"up": 10.0, "down": 20.0}, "upload": None, "download": None,
                  "sha256_ok": False, "error": "localnet did not come up"}
        self.assertEqual(report.transfer_row(broken)[-1], "ERROR")
        limits_only = dict(broken, error=None)
        self.assertEqual(report.transfer_row(limits_only)[1:5], ["-", "-", "10.0", "20.0"])
        mismatch = size_result(MiB, 1.0, 1.0, ok=False)
        self.assertEqual(report.transfer_row(mismatch)[-1], "MISMATCH")

    def test_report_has_the_table_the_api_line_and_the_targets(self):
        transfers = [size_result(512 * MiB, 120.0, 130.0)]
        checks = report.evaluate(API, transfers)
        lines = report.report_lines(API, transfers, checks, context="machine: test")
        text = "\n".join(lines)
        self.assertIn("machine: test", text)
        self.assertIn("512 MiB", text)
        self.assertIn("node/bare 0.83", text)
        self.assertTrue(any(line.startswith("customer peak RSS <= 150 MiB") and line.endswith("PASS")
                            for line in lines))


class TargetTests(unittest.TestCase):
    """PASS / FAIL / NOT MEASURED for every target of DESIGN.md."""

    def test_all_targets_pass(self):
        transfers = [size_result(16 * MiB, 20.0, 30.0), size_result(512 * MiB, 110.0, 120.0, 200.0, 220.0)]
        checks = report.evaluate(dict(API, ratio=0.9), transfers)
        self.assertEqual(set(verdicts(checks).values()), {"PASS"})
        self.assertEqual(report.failed_targets(checks), [])
        speed = next(c for c in checks if c["name"] == "upload_speed")
        self.assertEqual(speed["target"], "upload at 512 MiB >= 100 MiB/s")  # judged at the design size

    def test_each_target_can_fail(self):
        transfers = [size_result(512 * MiB, 60.0, 90.0, 200.0, 400.0, rss=180.0, ok=False)]
        checks = report.evaluate(dict(API, ratio=0.5), transfers)
        self.assertEqual(report.failed_targets(checks),
                         ["upload_speed", "download_speed", "upload_vs_limit", "download_vs_limit", "customer_rss",
                          "api_overhead", "round_trip"])

    def test_rss_is_judged_at_every_size(self):
        transfers = [size_result(16 * MiB, 200.0, 200.0, rss=151.0), size_result(512 * MiB, 200.0, 200.0)]
        rss = next(c for c in report.evaluate(API, transfers) if c["name"] == "customer_rss")
        self.assertEqual((rss["verdict"], rss["measured"]), ("FAIL", "151 MiB (at 16 MiB)"))

    def test_without_the_design_size_the_largest_size_is_judged_and_named(self):
        checks = report.evaluate(API, [size_result(16 * MiB, 200.0, 200.0), size_result(128 * MiB, 50.0, 50.0)])
        speed = next(c for c in checks if c["name"] == "upload_speed")
        self.assertIn("at 128 MiB (design size 512 MiB not run)", speed["target"])
        self.assertEqual(speed["verdict"], "FAIL")

    def test_skipped_parts_are_not_measured(self):
        self.assertEqual(set(verdicts(report.evaluate(None, None)).values()), {"NOT MEASURED"})
        limits_only = [{"size": MiB, "limit": {"up": 1.0, "down": 1.0}, "upload": None, "download": None,
                        "sha256_ok": False}]
        self.assertEqual(set(verdicts(report.evaluate(None, limits_only)).values()), {"NOT MEASURED"})

    def test_a_size_that_failed_fails_the_round_trip(self):
        broken = {"size": MiB, "limit": None, "upload": None, "download": None, "sha256_ok": False,
                  "error": "localnet did not come up"}
        checks = report.evaluate(None, [broken])
        self.assertEqual(verdicts(checks)["round_trip"], "FAIL")
        self.assertEqual(verdicts(checks)["upload_speed"], "NOT MEASURED")


class ProfileSummaryTests(unittest.TestCase):
    """Reading py-spy's collapsed stacks."""

    def test_self_time_per_function(self):
        lines = [
            "thread (1): MainThread;run (app.py:1);encode (erasure.py:69) 30\n",
            "thread (1): MainThread;run (app.py:1);pack (blockformat.py:84) 10\n",
            "thread (2): Pool;work (pool.py:9);encode (erasure.py:69) 20\n",
            "thread (3): Idle 5\n",
            "not a sample line\n",
        ]
        total, ranked = report.summarize_stacks(lines, top=2)
        self.assertEqual(total, 65)
        self.assertEqual(ranked, [(50, "encode (erasure.py:69)"), (10, "pack (blockformat.py:84)")])

    def test_site_packages_are_trimmed(self):
        lines = ["thread (1): Main;doWrite (/v/lib/python3.11/site-packages/twisted/internet/abstract.py:295) 3\n"]
        self.assertEqual(report.summarize_stacks(lines)[1], [(3, "doWrite (twisted/internet/abstract.py:295)")])

    def test_profile_lines_read_a_directory(self):
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "16MiB-upload-customer-1.txt"), "w") as handle:
            handle.write("thread (1): Main;f (a.py:1) 4\n")
        lines = bench.profile_lines(directory)
        self.assertIn("profile 16MiB-upload-customer-1.txt: 4 samples (self time, top 12)", lines)
        self.assertIn("  100.0%  f (a.py:1)", lines)
        self.assertEqual(bench.profile_lines(os.path.join(directory, "missing")), [])


class OptionTests(unittest.TestCase):
    """Command line options."""

    def test_defaults_are_the_design_sizes(self):
        args = bench.parse_args([])
        self.assertEqual((args.sizes, args.rounds), ([16 * MiB, 128 * MiB, 512 * MiB], 3))

    def test_quick_shrinks_the_defaults(self):
        args = bench.parse_args(["--quick"])
        self.assertEqual(args.sizes, [8 * MiB])
        self.assertEqual(args.rounds, 1)

    def test_sizes_are_mib_or_take_units(self):
        self.assertEqual(bench.parse_sizes("16,128"), [16 * MiB, 128 * MiB])
        self.assertEqual(bench.parse_sizes("512KB, 2MB"), [512 * 1024, 2 * MiB])
        self.assertEqual(bench.parse_args(["--sizes", "16"]).sizes, [16 * MiB])
        for bad in ("", "lots", "16,0MB", ","):
            self.assertRaises(argparse.ArgumentTypeError, bench.parse_sizes, bad)

    def test_one_size_takes_units_or_bytes(self):
        self.assertEqual(bench.parse_size("64MB"), 64 * MiB)
        self.assertEqual(bench.parse_size("4096"), 4096)
        for bad in ("lots", "0"):
            self.assertRaises(argparse.ArgumentTypeError, bench.parse_size, bad)
