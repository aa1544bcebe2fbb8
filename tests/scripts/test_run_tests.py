"""Tests for scripts/run_tests.py (loaded by path: scripts/ is not a package)."""

from __future__ import annotations

import importlib.util
import io
import os
import sys

from twisted.trial import unittest

import bitnode

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(bitnode.__file__))), "scripts", "run_tests.py")


def load_script():
    spec = importlib.util.spec_from_file_location("bitnode_run_tests_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_tests = load_script()


class FakeProcess:
    def __init__(self, lines: list[str], code: int):
        self.stdout = iter(lines)
        self._code = code

    def wait(self) -> int:
        return self._code


class FakeSubprocess:
    """Stands in for the subprocess module: replays canned trial output."""

    PIPE = STDOUT = object()

    def __init__(self, lines: list[str], code: int):
        self.lines = lines
        self.code = code
        self.commands: list[list[str]] = []

    def Popen(self, command, **kwargs):  # noqa: N802 - mirrors subprocess.Popen
        self.commands.append(command)
        return FakeProcess(self.lines, self.code)


ZERO = {"successes": 0, "failures": 0, "errors": 0, "skips": 0, "expectedFailures": 0, "unexpectedSuccesses": 0}


class ParseSummaryTests(unittest.TestCase):
    def test_passed(self) -> None:
        self.assertEqual(run_tests.parse_summary("PASSED (successes=12)\n"), dict(ZERO, successes=12))

    def test_passed_with_skips(self) -> None:
        self.assertEqual(run_tests.parse_summary("PASSED (skips=2, expectedFailures=1, successes=40)"),
                         dict(ZERO, skips=2, expectedFailures=1, successes=40))

    def test_failed(self) -> None:
        line = "FAILED (skips=1, failures=2, errors=3, unexpectedSuccesses=1, successes=10)"
        self.assertEqual(run_tests.parse_summary(line),
                         dict(ZERO, skips=1, failures=2, errors=3, unexpectedSuccesses=1, successes=10))

    def test_errors_only(self) -> None:
        self.assertEqual(run_tests.parse_summary("FAILED (errors=1)"), dict(ZERO, errors=1))

    def test_no_tests_at_all(self) -> None:
        # trial prints a bare status when every count is zero.
        self.assertEqual(run_tests.parse_summary("PASSED\n"), ZERO)

    def test_other_lines(self) -> None:
        for line in ("", "Ran 5 tests in 0.1s", "tests.x.test_y ... [OK]", "PASSED tests", "  [FAIL]",
                     "FAILED: something"):
            self.assertIsNone(run_tests.parse_summary(line), line)


class SummaryLineTests(unittest.TestCase):
    def test_passed(self) -> None:
        self.assertEqual(run_tests.summary_line(dict(ZERO, successes=12, skips=2, expectedFailures=1)),
                         ("13 passed, 0 failed, 2 skipped", 0))

    def test_failed(self) -> None:
        counts = dict(ZERO, successes=10, failures=2, errors=3, unexpectedSuccesses=1)
        self.assertEqual(run_tests.summary_line(counts), ("10 passed, 6 failed, 0 skipped", 6))

    def test_missing_summary_is_a_failure(self) -> None:
        self.assertEqual(run_tests.summary_line(None), ("0 passed, 1 failed", 1))


class MainTests(unittest.TestCase):
    def run_main(self, lines: list[str], code: int) -> tuple[int, str, FakeSubprocess]:
        fake = FakeSubprocess(lines, code)
        self.patch(run_tests, "subprocess", fake)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        result = run_tests.main(["--temp-directory=/nowhere", "tests.x"])
        return result, out.getvalue(), fake

    def test_passing_run(self) -> None:
        code, out, fake = self.run_main(["tests.x ... [OK]\n", "PASSED (successes=1)\n"], 0)
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("tests.x ... [OK]\nPASSED (successes=1)\n"))
        self.assertTrue(out.endswith("1 passed, 0 failed, 0 skipped\n"))
        self.assertEqual(fake.commands, [[sys.executable, "-m", "twisted.trial", "--temp-directory=/nowhere",
                                          "tests.x"]])

    def test_failing_run_keeps_trial_code(self) -> None:
        code, out, _ = self.run_main(["FAILED (failures=1, successes=2)\n"], 1)
        self.assertEqual(code, 1)
        self.assertTrue(out.endswith("2 passed, 1 failed, 0 skipped\n"))

    def test_failures_with_exit_zero_still_fail(self) -> None:
        code, _, _ = self.run_main(["FAILED (errors=1)\n"], 0)
        self.assertEqual(code, 1)

    def test_missing_summary_counts_as_failed(self) -> None:
        code, out, _ = self.run_main(["Traceback (most recent call last):\n", "Killed\n"], 0)
        self.assertEqual(code, 1)
        self.assertTrue(out.endswith("0 passed, 1 failed\n"))
        code, _, _ = self.run_main([], -9)
        self.assertEqual(code, -9)
