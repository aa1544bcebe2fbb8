"""pause_watch: notice that this process did not run for a while, so nobody is judged on stale facts.

A laptop lid closed (system suspend) stops the monotonic clock but not the
wall clock: the two jump apart. A SIGSTOP, a debugger or a starved machine
stops the process while both clocks go on: the next tick comes late. Either
way, what we believed about our peers ("silent for 5 minutes") is no
evidence: for the time we were away, *we* were the silent one.

:class:`PauseWatch` is passive: its owner calls :meth:`PauseWatch.observe` on
every tick (and before it judges anyone); it answers ``""`` or why this was a
pause. The rule, in one expression: a pause is a wall-clock step that differs
from the monotonic step by more than ``tolerance``, or a step longer than the
tick plus ``tolerance``. Both clocks are injected (``clock.seconds()`` is
the reactor's wall clock; ``monotonic()`` defaults to :func:`time.monotonic`).
"""

from __future__ import annotations

import time
from typing import Callable

from twisted.internet.interfaces import IReactorTime


class PauseWatch:
    """Compares consecutive observations of the wall and the monotonic clock."""

    def __init__(self, clock: IReactorTime, tick: Callable[[], float], tolerance: Callable[[], float],
                 monotonic: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.tick = tick
        self.tolerance = tolerance
        self.monotonic = monotonic
        self.pauses = 0
        self.last_pause = ""
        self.last_pause_at: float | None = None
        self._wall: float | None = None
        self._mono: float | None = None

    def reset(self) -> None:
        """Start afresh (the next observation only records the clocks)."""
        self._wall = self._mono = None

    def observe(self) -> str:
        """Record the clocks now; ``""``, or why the time since the last observation was a pause."""
        wall, mono = self.clock.seconds(), self.monotonic()
        last_wall, last_mono = self._wall, self._mono
        self._wall, self._mono = wall, mono
        if last_wall is None or last_mono is None:
            return ""
        wall_step, mono_step = wall - last_wall, mono - last_mono
        tolerance = self.tolerance()
        if abs(wall_step - mono_step) > tolerance:
            reason = (f"the wall clock moved {wall_step:.0f}s while the monotonic clock moved {mono_step:.0f}s "
                      f"(suspended, or the clock was set)")
        elif wall_step > self.tick() + tolerance:
            reason = f"nothing ran for {wall_step:.0f}s (the process was stopped or starved)"
        else:
            return ""
        self.pauses += 1
        self.last_pause, self.last_pause_at = reason, wall
        return reason

    def status(self) -> dict:
        """Counters for the API."""
        return {"pauses": self.pauses, "last_pause": self.last_pause, "last_pause_at": self.last_pause_at}
