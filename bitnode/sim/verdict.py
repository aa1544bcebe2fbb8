"""One PASS/FAIL line per simulated target (``make bench`` can print them among its own verdicts)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """A target's name, whether it was met, and the measured figure in words."""

    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        """``PASS sim.dht.median_hops: median 3 hops (target <= 4)``."""
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.detail}"
