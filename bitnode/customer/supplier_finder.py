"""supplier_finder: find one new supplier that agrees to serve us.

Asked by fire_hire with the suppliers to skip (already hired), it picks random
nodes from the suppliers' DHT layer, drops the skipped ones and those that
refused us recently, and asks the first candidate for service through a new
:class:`~bitnode.customer.supplier_connector.SupplierConnector`. It answers
with that connector once it is CONNECTED, tries the next candidate after a
refusal or silence, and gives up after :attr:`SupplierFinder.max_attempts`.

Neighbours: ``random_suppliers(count) -> Deferred[list[str]]`` (the DHT
layer lookup) and ``make_connector(supplier_id) -> SupplierConnector``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer

from automats import Automat
from bitnode.errors import Unavailable

REFUSAL_MEMORY = 600.0  # seconds a supplier that refused us is not asked again


class SupplierFinder(Automat):
    """Finds and connects one new supplier at a time."""

    name = "supplier_finder"
    initial = "READY"
    timers = {"timer-30sec": (30.0, {"SERVICE_REQUEST"})}
    transitions = [
        # state             event              guard               next               actions
        ("READY",           "start",           None,               "RANDOM_USER",     ["begin", "lookup"]),
        ("RANDOM_USER",     "users-found",     "has_candidate",    "SERVICE_REQUEST", ["ask_candidate"]),
        ("RANDOM_USER",     "users-found",     "may_try_again",    "RANDOM_USER",     ["lookup"]),
        ("RANDOM_USER",     "users-found",     None,               "READY",           ["give_up"]),
        ("RANDOM_USER",     "lookup-failed",   "may_try_again",    "RANDOM_USER",     ["lookup"]),
        ("RANDOM_USER",     "lookup-failed",   None,               "READY",           ["give_up"]),
        ("SERVICE_REQUEST", "connected",       None,               "READY",           ["report_found"]),
        ("SERVICE_REQUEST", "refused",         "may_try_again",    "RANDOM_USER",     ["forget_candidate", "lookup"]),
        ("SERVICE_REQUEST", "timer-30sec",     "may_try_again",    "RANDOM_USER",     ["forget_candidate", "lookup"]),
        ("SERVICE_REQUEST", "refused",         None,               "READY",           ["forget_candidate", "give_up"]),
        ("SERVICE_REQUEST", "timer-30sec",     None,               "READY",           ["forget_candidate", "give_up"]),
        # A connector that answers after we moved on is not ours to report any more.
        ("*",               "connected",       None,               "*",               []),
        ("*",               "refused",         None,               "*",               []),
        ("*",               "shutdown",        None,               "CLOSED",          ["stop", "destroy"]),
    ]

    max_attempts = 5

    def __init__(self, clock, random_suppliers: Callable[[int], defer.Deferred],
                 make_connector: Callable[[str], Any], **kwargs: Any):
        super().__init__(clock, **kwargs)
        self.random_suppliers = random_suppliers
        self.make_connector = make_connector
        self.refused_at: dict[str, float] = {}
        self._skip: set[str] = set()
        self._candidates: list[str] = []
        self._attempts = 0
        self._connector = None
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

    # --- actions --------------------------------------------------------------------

    def begin(self, skip: set[str], result: defer.Deferred) -> None:
        """Remember what to skip and whom to answer."""
        self._skip, self._result, self._attempts = skip, result, 0

    def lookup(self, *_: Any) -> None:
        """Ask the DHT for random members of the suppliers' layer."""
        self._attempts += 1
        d = defer.maybeDeferred(self.random_suppliers, 8)
        d.addCallbacks(lambda users: self.event("users-found", list(users or [])),
                       lambda f: self.event("lookup-failed", f.getErrorMessage()))

    def ask_candidate(self, *_: Any) -> None:
        """Ask the first candidate for service; its connector tells us how it went."""
        supplier_id = self._candidates[0]
        self._skip.add(supplier_id)
        connector = self.make_connector(supplier_id)
        self._connector = connector

        def watch(machine, old, new, event):
            if machine is not self._connector:
                return
            if new == "CONNECTED":
                self.event("connected", machine)
            elif new in ("REFUSE", "DISCONNECTED", "CLOSED"):
                self.event("refused", machine)

        connector.add_state_listener(watch)
        connector.event("connect")

    def forget_candidate(self, *_: Any) -> None:
        """Drop the candidate that said no (or nothing), and remember it refused."""
        connector, self._connector = self._connector, None
        if connector is not None:
            self.refused_at[connector.supplier_id] = self.clock.seconds()
            connector.event("shutdown")

    def report_found(self, connector) -> None:
        """Hand the connected supplier to whoever asked."""
        self._connector = None
        result, self._result = self._result, None
        if result is not None:
            result.callback(connector)

    def give_up(self, *_: Any) -> None:
        """No supplier this time."""
        result, self._result = self._result, None
        if result is not None:
            result.errback(Unavailable(f"no new supplier found after {self._attempts} attempt(s)"))

    def stop(self, *_: Any) -> None:
        """Node stopping: abandon the search."""
        self.forget_candidate()
        self.give_up()
