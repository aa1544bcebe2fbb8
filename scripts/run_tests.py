"""Run the trial suite and end with the plain line 'N passed, N failed'.

trial prints its own summary ("PASSED (successes=N)" / "FAILED (failures=..,
errors=.., successes=..)"); this script streams trial's output, reads that
summary and adds the line CI looks for. The exit code is trial's, and a run
whose summary cannot be found counts as failed.
"""

from __future__ import annotations

import re
import subprocess
import sys

# trial leaves the parentheses out when every count is zero (a run that found no tests).
SUMMARY = re.compile(r"^(PASSED|FAILED)(?: \((.*)\))?\s*$")


def parse_summary(line: str) -> dict | None:
    """Counts from a trial summary line, or None if ``line`` is not one."""
    match = SUMMARY.match(line.strip())
    if not match:
        return None
    counts = {"successes": 0, "failures": 0, "errors": 0, "skips": 0, "expectedFailures": 0,
              "unexpectedSuccesses": 0}
    for part in (match.group(2) or "").split(","):
        if "=" in part:
            key, value = part.strip().split("=", 1)
            counts[key] = int(value)
    return counts


def main(argv: list[str]) -> int:
    """Run ``python -m twisted.trial ARGS`` and print the closing count line."""
    command = [sys.executable, "-m", "twisted.trial", *argv]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    counts = None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        counts = parse_summary(line) or counts
    code = proc.wait()
    line, failed = summary_line(counts)
    print(line)
    return code if code else (1 if failed else 0)


def summary_line(counts: dict | None) -> tuple[str, int]:
    """The closing line and the number of failures; no summary at all counts as one failure."""
    if counts is None:
        return "0 passed, 1 failed", 1
    passed = counts["successes"] + counts["expectedFailures"]
    failed = counts["failures"] + counts["errors"] + counts["unexpectedSuccesses"]
    return f"{passed} passed, {failed} failed, {counts['skips']} skipped", failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
