"""supplier_connector: one customer's contract with one supplier, as a state machine.

It asks the supplier for service (``RequestService``), then keeps checking the
supplier is alive with pings while connected; fire_hire reads
:attr:`SupplierConnector.offline_since` to decide when a supplier is dead.

The neighbour it talks through (``contracts``) has three methods, each
returning a Deferred: ``request_service(supplier_id, needed_bytes)`` (fires
with the supplier's answer dict, fails with the refusal),
``ping(supplier_id)``, and ``cancel_service(supplier_id)``.

States: NO_SERVICE (new), REQUEST (asked, waiting), CONNECTED (accepted and
answering), REFUSE (said no: no space, rejected...), DISCONNECTED (did not
answer; retried on a timer), CLOSED (contract ended or node stopping).
A supplier that stops serving us on its own (``customer_reject``) sends a
notice; the node turns it into the event ``rejected`` (any state -> REFUSE).

Timer intervals are the table's unless ``intervals`` overrides some by timer
name (the node takes them from settings; passed to the Automat base as ``timer_intervals``).
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet import defer

from automats import Automat
from bitnode.errors import BadRequest, Forbidden, InsufficientStorage


class SupplierConnector(Automat):
    """The contract between this customer and ``supplier_id``."""

    name = "supplier_connector"
    initial = "NO_SERVICE"
    timers = {
        "timer-ping": (60.0, {"CONNECTED"}),
        "timer-retry": (30.0, {"DISCONNECTED"}),
    }
    transitions = [
        # state           event               guard  next            actions
        ("NO_SERVICE",   "connect",          None,  "REQUEST",      ["request_service"]),
        ("REQUEST",      "service-accepted", None,  "CONNECTED",    ["note_accepted"]),
        ("REQUEST",      "service-refused",  None,  "REFUSE",       ["note_refused"]),
        ("REQUEST",      "request-failed",   None,  "DISCONNECTED", ["note_offline"]),
        ("CONNECTED",    "timer-ping",       None,  "*",            ["ping"]),
        ("CONNECTED",    "ping-ok",          None,  "*",            ["note_online"]),
        ("CONNECTED",    "ping-failed",      None,  "DISCONNECTED", ["note_offline"]),
        ("CONNECTED",    "connect",          None,  "REQUEST",      ["request_service"]),
        ("DISCONNECTED", "timer-retry",      None,  "REQUEST",      ["request_service"]),
        ("DISCONNECTED", "connect",          None,  "REQUEST",      ["request_service"]),
        ("REFUSE",       "connect",          None,  "REQUEST",      ["request_service"]),
        ("*",            "rejected",         None,  "REFUSE",       ["note_refused"]),
        ("*",            "close",            None,  "CLOSED",       ["cancel_service", "destroy"]),
        ("*",            "shutdown",         None,  "CLOSED",       ["destroy"]),
        # Answers that arrive after the machine moved on change nothing.
        ("*",            "ping-ok",          None,  "*",            []),
        ("*",            "ping-failed",      None,  "*",            []),
    ]

    def __init__(self, clock, supplier_id: str, contracts: Any, needed_bytes: int,
                 intervals: Mapping[str, float] | None = None, **kwargs: Any):
        super().__init__(clock, timer_intervals=intervals, **kwargs)
        self.supplier_id = supplier_id
        self.contracts = contracts
        self.needed_bytes = needed_bytes
        self.offline_since: float | None = None
        self.last_seen: float | None = None
        self.refusal: str = ""
        self.failures = 0
        self.answer: dict = {}

    # --- actions -------------------------------------------------------------------

    def request_service(self, *_: Any) -> None:
        """Ask the supplier to serve us ``needed_bytes``."""
        d = defer.maybeDeferred(self.contracts.request_service, self.supplier_id, self.needed_bytes)
        d.addCallbacks(lambda answer: self._answered("service-accepted", answer), self._request_failed)

    def reprobe(self) -> None:
        """Ask again now, and let the silence so far count for nothing (we were away, or could not see)."""
        if self.destroyed:
            return
        self.offline_since = None  # a failing answer starts it again
        if self.state != "REQUEST":
            self.event("connect")

    def rejected(self, reason: str) -> None:
        """The supplier told us it stopped serving us (its customer_reject notice)."""
        self.refusal = reason  # before the event: state listeners (fire_hire) read it on the transition
        self.event("rejected", reason)

    def _answered(self, event: str, *args: Any) -> None:
        # An answer to a machine closed meanwhile (fired, node stopping) changes nothing: not even a warning.
        if not self.destroyed:
            self.event(event, *args)

    def _request_failed(self, failure) -> None:
        if self.destroyed:
            return
        # A supplier that answered "no" is a refusal; silence or a broken link is being offline.
        if failure.check(InsufficientStorage, BadRequest, Forbidden):
            self.refusal = failure.getErrorMessage()  # listeners of the REFUSE transition read it
            self.event("service-refused", failure.getErrorMessage())
        else:
            self.event("request-failed", failure.getErrorMessage())

    def note_accepted(self, answer: dict) -> None:
        """Remember the supplier's terms and that it is online."""
        self.answer = dict(answer or {})
        self.refusal = ""
        self.note_online()

    def note_online(self, *_: Any) -> None:
        """The supplier answered just now."""
        self.offline_since = None
        self.last_seen = self.clock.seconds()
        self.failures = 0

    def note_offline(self, reason: str = "") -> None:
        """The supplier did not answer; keep when that started."""
        self.failures += 1
        if self.offline_since is None:
            self.offline_since = self.clock.seconds()
        self.log.info("{id}: supplier offline ({reason})", id=self.id, reason=reason)

    def note_refused(self, reason: str) -> None:
        """The supplier said no."""
        self.refusal = reason
        self.failures += 1

    def ping(self, *_: Any) -> None:
        """Check the supplier still answers."""
        d = defer.maybeDeferred(self.contracts.ping, self.supplier_id)
        d.addCallbacks(lambda _: self._answered("ping-ok"),
                       lambda f: self._answered("ping-failed", f.getErrorMessage()))

    def cancel_service(self, *_: Any) -> None:
        """End the contract; the supplier deletes our data (best effort: it may be gone)."""
        d = defer.maybeDeferred(self.contracts.cancel_service, self.supplier_id)
        d.addErrback(lambda f: self.log.info("{id}: cancel not delivered: {err}", id=self.id,
                                             err=f.getErrorMessage()))

    # --- facts for fire_hire and the API ------------------------------------------------

    def offline_for(self) -> float:
        """Seconds this supplier has been offline (0 while it answers)."""
        if self.offline_since is None:
            return 0.0
        return self.clock.seconds() - self.offline_since

    def info(self) -> dict:
        """What suppliers_list shows about this contract."""
        return {
            "supplier_id": self.supplier_id, "state": self.state, "online": self.state == "CONNECTED",
            "offline_for": self.offline_for(), "last_seen": self.last_seen, "failures": self.failures,
            "refusal": self.refusal, "quota_bytes": self.answer.get("quota_bytes"),
        }
