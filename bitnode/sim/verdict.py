"""One PASS/FAIL verdict per simulated target, in the shape ``make bench`` prints its own in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """A target (its bench name and wording), the measured figure in words, and whether it was met."""

    name: str
    target: str
    measured: str
    passed: bool

    def line(self) -> str:
        """``PASS sim_dht_hops: median 3 hops, ... (target: ...)``."""
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.measured} (target: {self.target})"

    def to_check(self) -> dict[str, Any]:
        """The dict ``make bench`` reports (scripts/bench_report.py)."""
        return {"name": self.name, "target": self.target, "measured": self.measured,
                "verdict": "PASS" if self.passed else "FAIL"}
