"""Neighbours' answers as a machine's events, dropping the ones a newer question overtook.

A machine that asks its neighbours slow questions (is the network up? will
this router take us?) must not act on an answer that comes after it moved
on: after a timeout, a restart, or a newer question.  :class:`LatestAnswers`
numbers the questions; an answer becomes an event only while its question is
still the latest one.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from bitnode.errors import BitnodeError


class LatestAnswers:
    """The questions of one machine (``machine.event``, ``.destroyed``, ``.log``, ``.id`` are used)."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.latest = 0

    def forget(self) -> None:
        """Drop the answer of the question in flight, whenever it comes."""
        self.latest += 1

    def ask(self, ask: Callable[[], Deferred], answered: Callable[[Any], None], failed_event: str,
            new: bool = True) -> None:
        """Run ``ask()``: its result goes to ``answered``, its failure becomes ``failed_event`` (with the error text).

        ``new=False``: a side question that does not overtake the one in flight
        (it is dropped too if a newer question comes first).
        """
        if new:
            self.latest += 1
        number = self.latest
        machine = self.machine
        try:
            d = ask()
        except Exception:
            d = Deferred()
            d.errback(Failure())

        def ok(result: Any) -> None:
            if number == self.latest and not machine.destroyed:
                answered(result)

        def bad(failure: Failure) -> None:
            if not failure.check(BitnodeError):
                machine.log.failure("{machine_id}: a neighbour failed unexpectedly", failure, machine_id=machine.id)
            if number == self.latest and not machine.destroyed:
                machine.event(failed_event, failure.getErrorMessage())

        d.addCallbacks(ok, bad)
