"""supplier_finder: find one new supplier that agrees to serve us.

Asked by fire_hire with the suppliers to skip (already hired), it picks random
nodes from the suppliers' DHT layer, drops the skipped ones and those that
refused us recently, and asks the first ``choices`` candidates at once for
service, each through a new
:class:`~bitnode.customer.supplier_connector.SupplierConnector`. Once all of
them answered (or 30 s passed and at least one accepted) it keeps the one that
said it serves the fewest customers (the ``customers`` figure of its answer;
one without it counts as the busiest), ends the other accepted contracts
(CancelService), and answers with the kept connector. This is the "power of
d choices": a uniformly random pick leaves some suppliers with several times
the mean load, the least loaded of two or three keeps every supplier near the
mean (see ``make sim``, docs/performance.md). When nobody accepted it looks
again, and gives up after :attr:`SupplierFinder.max_attempts` lookups.

Neighbours: ``random_suppliers(count) -> Deferred[list[str]]`` (the DHT
layer lookup) and ``make_connector(supplier_id) -> SupplierConnector``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer

from automats import Automat
from bitnode.errors import BadRequest, Unavailable

REFUSAL_MEMORY = 600.0  # seconds a supplier that refused us is not asked again
#: suppliers asked at once by default (setting services/customer/hire-choices). make sim at the issue's size
#: (1,000 customers x 5 of 2,000 suppliers): 3 left one supplier with 6 customers (2.4x the mean of 2.5),
#: 4 keeps every supplier at 5 or fewer (2.0x), for one more RequestService and CancelService per hire
DEFAULT_HIRE_CHOICES = 4


class SupplierFinder(Automat):
    """Finds and connects one new supplier at a time."""

    name = "supplier_finder"
    initial = "READY"
    timers = {"timer-30sec": (30.0, {"SERVICE_REQUEST"})}
    transitions = [
        # state             event              guard               next               actions
        ("READY",           "start",           None,               "RANDOM_USER",     ["begin", "lookup"]),
        ("RANDOM_USER",     "users-found",     "has_candidate",    "SERVICE_REQUEST", ["ask_candidates"]),
        ("RANDOM_USER",     "users-found",     "may_try_again",    "RANDOM_USER",     ["lookup"]),
        ("RANDOM_USER",     "users-found",     None,               "READY",           ["give_up"]),
        ("RANDOM_USER",     "lookup-failed",   "may_try_again",    "RANDOM_USER",     ["lookup"]),
        ("RANDOM_USER",     "lookup-failed",   None,               "READY",           ["give_up"]),
        # One answer of several: wait for the others (or the timer).
        ("SERVICE_REQUEST", "answered",        "awaiting_answers", "*",               []),
        ("SERVICE_REQUEST", "answered",        "has_accepted",     "READY",           ["report_found"]),
        ("SERVICE_REQUEST", "answered",        "may_try_again",    "RANDOM_USER",     ["forget_candidates", "lookup"]),
        ("SERVICE_REQUEST", "answered",        None,               "READY",           ["forget_candidates", "give_up"]),
        ("SERVICE_REQUEST", "timer-30sec",     "has_accepted",     "READY",           ["report_found"]),
        ("SERVICE_REQUEST", "timer-30sec",     "may_try_again",    "RANDOM_USER",     ["forget_candidates", "lookup"]),
        ("SERVICE_REQUEST", "timer-30sec",     None,               "READY",           ["forget_candidates", "give_up"]),
        # A connector that answers after we moved on is not ours to report any more.
        ("*",               "answered",        None,               "*",               []),
        ("*",               "shutdown",        None,               "CLOSED",          ["stop", "destroy"]),
    ]

    max_attempts = 5

    def __init__(self, clock, random_suppliers: Callable[[int], defer.Deferred],
                 make_connector: Callable[[str], Any], choices: int = 1, **kwargs: Any):
        super().__init__(clock, **kwargs)
        if type(choices) is not int or choices < 1:
            raise BadRequest("choices must be an int >= 1")
        self.random_suppliers = random_suppliers
        self.make_connector = make_connector
        self.choices = choices
        self.refused_at: dict[str, float] = {}
        self._skip: set[str] = set()
        self._candidates: list[str] = []
        self._attempts = 0
        self._asked: list[Any] = []
        self._result: defer.Deferred | None = None

    def find(self, skip: set[str] | frozenset[str]) -> defer.Deferred:
        """Fires with a CONNECTED SupplierConnector, or fails with Unavailable."""
        if self.state != "READY":
            return defer.fail(Unavailable("supplier_finder is already looking"))
        d = defer.Deferred()
        self.event("start", set(skip), d)
        return d

    # --- guards --------------------------------------------------------------------

    def has_candidate(self, users: list[str] | None = None) -> bool:
        """Is there a user we may ask?"""
        now = self.clock.seconds()
        self._candidates = [u for u in (users or []) if u not in self._skip
                            and now - self.refused_at.get(u, -REFUSAL_MEMORY) >= REFUSAL_MEMORY]
        return bool(self._candidates)

    def may_try_again(self, *_: Any) -> bool:
        """Attempts left?"""
        return self._attempts < self.max_attempts

    def awaiting_answers(self, *_: Any) -> bool:
        """Is a candidate we asked still to answer?"""
        return any(c.state in ("NO_SERVICE", "REQUEST") for c in self._asked)

    def has_accepted(self, *_: Any) -> bool:
        """Did a candidate accept us?"""
        return any(c.state == "CONNECTED" for c in self._asked)

    # --- actions --------------------------------------------------------------------

    def begin(self, skip: set[str], result: defer.Deferred) -> None:
        """Remember what to skip and whom to answer."""
        self._skip, self._result, self._attempts = skip, result, 0

    def lookup(self, *_: Any) -> None:
        """Ask the DHT for random members of the suppliers' layer."""
        self._attempts += 1
        d = defer.maybeDeferred(self.random_suppliers, max(8, 2 * self.choices))
        d.addCallbacks(lambda users: self.event("users-found", list(users or [])),
                       lambda f: self.event("lookup-failed", f.getErrorMessage()))

    def ask_candidates(self, *_: Any) -> None:
        """Ask the first ``choices`` candidates for service at once; their connectors tell us how it went."""
        asked = self._candidates[: self.choices]
        self._skip.update(asked)
        self._asked = [self.make_connector(supplier_id) for supplier_id in asked]

        def watch(machine, old, new, event):
            if machine in self._asked and new in ("CONNECTED", "REFUSE", "DISCONNECTED", "CLOSED"):
                self.event("answered", machine)

        for connector in list(self._asked):
            connector.add_state_listener(watch)
            connector.event("connect")

    def forget_candidates(self, *_: Any) -> None:
        """Nobody we asked accepted (or some stayed silent): remember them as refusing, drop their connectors."""
        asked, self._asked = self._asked, []
        now = self.clock.seconds()
        for connector in asked:
            self.refused_at[connector.supplier_id] = now
            if not connector.destroyed:
                connector.event("shutdown")

    def report_found(self, *_: Any) -> None:
        """Keep the accepted candidate with the fewest customers; end the others; hand it to whoever asked."""
        asked, self._asked = self._asked, []
        accepted = [c for c in asked if c.state == "CONNECTED"]
        best = min(accepted, key=_load)
        now = self.clock.seconds()
        for connector in asked:
            if connector is best:
                continue
            if connector.state == "CONNECTED":
                connector.event("close")  # accepted but busier: CancelService ends that contract
            else:
                self.refused_at[connector.supplier_id] = now
                if not connector.destroyed:
                    connector.event("shutdown")
        result, self._result = self._result, None
        if result is not None:
            result.callback(best)

    def give_up(self, *_: Any) -> None:
        """No supplier this time."""
        result, self._result = self._result, None
        if result is not None:
            result.errback(Unavailable(f"no new supplier found after {self._attempts} attempt(s)"))

    def stop(self, *_: Any) -> None:
        """Node stopping: abandon the search."""
        self.forget_candidates()
        self.give_up()


def _load(connector: Any) -> float:
    """The customers a supplier said it serves (one that did not say counts as the busiest)."""
    customers = (connector.answer or {}).get("customers")
    return float(customers) if type(customers) is int and customers >= 0 else float("inf")
