"""How long a transfer waits for a slow supplier before working around it.

A supplier that is silent (its process stopped, its network dropping
packets) does not fail a call: the call just never answers until its
timeout. A transfer that waited for every such call would crawl, one full
timeout per segment. Instead a transfer measures how fast its suppliers
answer and, once a call has waited a few times the slowest recent answer
(never less than a floor, never more than the call's own timeout), works
around it: the downloader asks one more supplier for another block of the
segment, the uploader leaves the block to the rebuilder. A supplier that kept
a transfer waiting is asked last (downloads) or no more (uploads) for the rest
of that transfer.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

# Times the slowest recent answer a call may take before it counts as slow.
SLOW_FACTOR = 4.0
# Answers remembered: enough to ride out one fast burst, few enough to follow a change of pace.
WINDOW = 16


class Patience:
    """Answer times of one transfer's suppliers, and the wait they justify.

    The wait is never under ``floor`` nor over ``ceiling`` (the call's own
    timeout); when the floor is above the ceiling, the ceiling wins.
    """

    def __init__(self, floor: float, ceiling: float, factor: float = SLOW_FACTOR, window: int = WINDOW):
        if floor <= 0 or ceiling <= 0 or factor < 1:
            raise ValueError("floor and ceiling must be positive, factor at least 1")
        self.floor = min(floor, ceiling)
        self.ceiling = ceiling
        self.factor = factor
        self._recent: deque[float] = deque(maxlen=window)

    def record(self, seconds: float) -> None:
        """Remember how long one successful call took."""
        self._recent.append(max(0.0, seconds))

    def delay(self) -> float:
        """Seconds a call may wait before it counts as slow."""
        slowest = max(self._recent, default=0.0)
        return min(self.ceiling, max(self.floor, self.factor * slowest))


class GraceWait:
    """Waits for a set of calls; once ``enough`` of them succeeded, gives the rest a grace, then cancels them.

    ``calls`` maps a key (a block position, a supplier id) to the call's
    Deferred. ``done`` fires with ``{key: (succeeded, result or Failure)}``
    once every call has answered or been given up; the keys given up are in
    ``given_up`` (their Failure is a CancelledError). Every success is
    recorded in ``patience``, whose delay is the grace.
    """

    def __init__(self, clock: IReactorTime, patience: Patience, calls: dict, enough: int):
        self.clock = clock
        self.patience = patience
        self.enough = enough
        self.waiting = dict(calls)
        self.succeeded = 0
        self.given_up: set = set()
        self.outcomes: dict = {}
        self._timer: IDelayedCall | None = None
        self.done: defer.Deferred = defer.Deferred()
        started = clock.seconds()
        for key, d in calls.items():
            d.addBoth(self._answered, key, started)
        self._check()

    def _answered(self, result, key, started: float) -> None:
        del self.waiting[key]
        ok = not isinstance(result, Failure)
        self.outcomes[key] = (ok, result)
        if ok:
            self.succeeded += 1
            self.patience.record(self.clock.seconds() - started)
        self._check()
        return None  # the outcome is kept here: nothing unhandled is left on the call

    def _check(self) -> None:
        if not self.waiting:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            if not self.done.called:
                self.done.callback(self.outcomes)
        elif self.succeeded >= self.enough and self._timer is None:
            self._timer = self.clock.callLater(self.patience.delay(), self._give_up)

    def _give_up(self) -> None:
        for key, d in list(self.waiting.items()):
            self.given_up.add(key)
            d.cancel()
