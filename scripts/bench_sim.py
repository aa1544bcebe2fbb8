"""The simulation's part of `make bench`: one verdict per "internet scale" target of the performance issue.

``make bench`` reports the last ``make sim`` run (``docs/sim/results.json``: the full run takes many minutes,
so it is not repeated); ``make bench-quick`` runs a small simulation live (about 10 s) as a smoke test.
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bitnode.sim.dht_churn import ChurnSettings, run_churn  # noqa: E402
from bitnode.sim.report import RESULTS, saved_checks  # noqa: E402

SIM_FOLDER = os.path.join(os.path.dirname(HERE), "docs", "sim")


def verdicts(quick: bool, workdir: str, say) -> list[dict]:
    """``make bench``'s hook: the checks ({name, target, measured, verdict}) of the simulated targets."""
    if quick:
        started = time.perf_counter()
        result = run_churn(ChurnSettings(nodes=100, hours=0.25, lookups_per_hour=800, records=20))
        say(f"   quick simulation: 100 DHT nodes, 15 simulated minutes, {time.perf_counter() - started:.0f} s")
        checks = [v.to_check() for v in result.verdicts()]
        for check in checks:
            check["measured"] += " (quick: 100 nodes)"
        return checks
    checks = saved_checks(SIM_FOLDER)
    if checks:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(os.path.getmtime(os.path.join(SIM_FOLDER, RESULTS))))
        say(f"   simulation figures from the last `make sim` ({when} UTC, docs/sim/results.json)")
        for check in checks:
            check["measured"] += f" (make sim {when} UTC)"
    else:
        say("   no docs/sim/results.json: run `make sim` first")
    return checks
