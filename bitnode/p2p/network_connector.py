"""network_connector: is this node connected to the network, and getting it there.

"Connected" means two things at once:

1. our transports are ready: the gateway listens and our identity carries
   the ``tcp://`` contact it listens on (the ``transports_ready`` neighbour);
2. the network answers us: one of our identity servers serves our identity
   with that contact, so peers can find us (a stale copy is re-published),
   or, failing that, a peer we talked to recently acks a ping (the
   ``probe`` neighbour; see :mod:`bitnode.p2p.network_service`).

The machine only sequences those checks; the neighbours are passed in, so a
test drives it with fakes and a ``Clock``.  Every check is numbered: the
answer of a check that was overtaken (a ``reconnect`` meanwhile, or its own
timeout) is dropped before it becomes an event, so ``network-up`` and
``network-down`` always describe the latest check.

Events: ``init`` (the service started), ``reconnect`` (``network_reconnect``:
close connections, re-check everything), ``check-reconnect`` (re-check now if
down, verify in the background if up), ``all-network-transports-ready``,
``network-up`` / ``network-down`` (the neighbours' answers), and the timers.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from automats import Automat
from bitnode.errors import Timeout, Unavailable
from bitnode.p2p.answers import LatestAnswers

CONNECTED = "CONNECTED"
DISCONNECTED = "DISCONNECTED"


class NetworkConnector(Automat):
    """Decides and announces whether the node is connected.

    :param clock: time source for timers.
    :param transports_ready: ``() -> Deferred[str]``: fires when our
        transports listen (and our contacts are right), fails otherwise.
    :param restart_transports: ``() -> Deferred[str]``: close connections,
        then like ``transports_ready``.
    :param probe: ``() -> Deferred[str]``: fires with what answered us, fails
        with the reason nothing did.
    :param announce: ``announce(connected, reason)`` on entering CONNECTED or
        DISCONNECTED (the service publishes events when it changes).
    """

    name = "network_connector"
    initial = "AT_STARTUP"
    timers = {
        "timer-10sec": (10.0, {"TRANSPORTS?"}),   # transports that take this long are not coming
        "timer-30sec": (30.0, {"CONNECTED?"}),    # a check that takes this long has failed
        "timer-1min": (60.0, {"DISCONNECTED"}),   # while down, try again
        "timer-5min": (300.0, {"CONNECTED"}),     # while up, verify now and then
    }
    transitions = [
        # state           event                           guard  next            actions
        ("AT_STARTUP",   "init",                          None,  "TRANSPORTS?",  ["wait_transports"]),
        ("AT_STARTUP",   "reconnect",                     None,  "*",            []),  # init checks anyway
        ("AT_STARTUP",   "check-reconnect",               None,  "*",            []),  # init checks anyway
        ("TRANSPORTS?",  "all-network-transports-ready",  None,  "CONNECTED?",   ["check_network"]),
        ("TRANSPORTS?",  "network-down",                  None,  "DISCONNECTED", ["announce_down"]),
        ("TRANSPORTS?",  "timer-10sec",                   None,  "DISCONNECTED", ["forget_transports",
                                                                                  "announce_down"]),
        ("TRANSPORTS?",  "reconnect",                     None,  "*",            []),  # already restarting
        ("TRANSPORTS?",  "check-reconnect",               None,  "*",            []),  # a check follows
        ("CONNECTED?",   "network-up",                    None,  "CONNECTED",    ["announce_up"]),
        ("CONNECTED?",   "network-down",                  None,  "DISCONNECTED", ["announce_down"]),
        ("CONNECTED?",   "timer-30sec",                   None,  "DISCONNECTED", ["forget_check",
                                                                                  "announce_down"]),
        ("CONNECTED?",   "reconnect",                     None,  "TRANSPORTS?",  ["restart_transports"]),
        ("CONNECTED?",   "check-reconnect",               None,  "*",            []),  # a check is running
        ("CONNECTED",    "timer-5min",                    None,  "*",            ["check_network"]),
        ("CONNECTED",    "check-reconnect",               None,  "*",            ["check_network"]),
        ("CONNECTED",    "network-up",                    None,  "*",            ["note_confirmed"]),
        ("CONNECTED",    "network-down",                  None,  "DISCONNECTED", ["announce_down"]),
        ("CONNECTED",    "reconnect",                     None,  "TRANSPORTS?",  ["restart_transports"]),
        ("DISCONNECTED", "timer-1min",                    None,  "CONNECTED?",   ["check_network"]),
        ("DISCONNECTED", "check-reconnect",               None,  "CONNECTED?",   ["check_network"]),
        ("DISCONNECTED", "reconnect",                     None,  "TRANSPORTS?",  ["restart_transports"]),
    ]

    def __init__(
        self,
        clock: IReactorTime,
        transports_ready: Callable[[], Deferred],
        restart_transports: Callable[[], Deferred],
        probe: Callable[[], Deferred],
        announce: Callable[[bool, str], Any],
        registry: Any = None,
        log: Any = None,
    ) -> None:
        self._transports_ready = transports_ready
        self._restart_transports = restart_transports
        self._probe = probe
        self._announce = announce
        self._answers = LatestAnswers(self)  # older checks' answers are dropped
        self._waiters: list[_Waiter] = []
        self.reason = "not started"
        self.since: float = clock.seconds()
        self.last_answer: float | None = None
        self.checks = 0
        super().__init__(clock, registry=registry, log=log)
        self.add_state_listener(self._state_changed)

    # -- public ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the state is CONNECTED."""
        return self.state == CONNECTED

    def status(self) -> dict:
        """A JSON-safe summary for the API."""
        return {
            "state": self.state,
            "connected": self.connected,
            "reason": self.reason,
            "since": self.since,
            "last_answer": self.last_answer,
            "checks": self.checks,
        }

    def when_connected(self, timeout: float) -> Deferred:
        """Fires with :meth:`status` once CONNECTED (at once if it is).

        Fails with ``Unavailable`` as soon as a check ends DISCONNECTED, and
        with ``Timeout`` after ``timeout`` seconds of neither.
        """
        if self.connected:
            return succeed(self.status())
        waiter = _Waiter()
        waiter.timer = self.clock.callLater(timeout, self._waiter_timed_out, waiter, timeout)
        self._waiters.append(waiter)
        return waiter.result

    def shutdown(self) -> None:
        """Fail waiters, drop checks in flight, stop the machine."""
        self._answers.forget()
        self._settle_waiters(Unavailable("the network service stopped"))
        self.destroy()

    # -- actions ----------------------------------------------------------------

    def wait_transports(self, *args: Any) -> None:
        """Ask whether our transports are listening."""
        self._expect(self._transports_ready, "all-network-transports-ready", "network-down")

    def restart_transports(self, *args: Any) -> None:
        """Close connections and ask again whether our transports are ready."""
        self.reason = "reconnecting"
        self._expect(self._restart_transports, "all-network-transports-ready", "network-down")

    def check_network(self, *args: Any) -> None:
        """Ask the network whether it answers us."""
        self.checks += 1
        self._expect(self._probe, "network-up", "network-down")

    def forget_transports(self, *args: Any) -> None:
        """Transports did not get ready in time: drop that answer if it comes later."""
        self._answers.forget()
        self.reason = "transports were not ready within 10 seconds"

    def forget_check(self, *args: Any) -> None:
        """The check took too long: drop its answer if it comes later."""
        self._answers.forget()
        self.reason = "nothing answered within 30 seconds"

    def note_confirmed(self, reason: str = "", *args: Any) -> None:
        """A background check confirmed we are still connected."""
        self.reason = reason or self.reason
        self.last_answer = self.clock.seconds()

    def announce_up(self, reason: str = "", *args: Any) -> None:
        """Tell the node, wake ``network_connected`` callers."""
        self.reason = reason or "connected"
        self.last_answer = self.clock.seconds()
        self._announce(True, self.reason)
        self._settle_waiters(None)

    def announce_down(self, reason: str | None = None, *args: Any) -> None:
        """Tell the node, fail ``network_connected`` callers with the reason."""
        if reason:
            self.reason = reason
        self._announce(False, self.reason)
        self._settle_waiters(Unavailable(f"not connected: {self.reason}"))

    # -- internals ----------------------------------------------------------------

    def _expect(self, ask: Callable[[], Deferred], ok_event: str, bad_event: str) -> None:
        """Run a neighbour's check; its answer becomes an event unless overtaken by a newer check."""
        self._answers.ask(ask, lambda result: self.event(ok_event, str(result) if result else ""), bad_event)

    def _state_changed(self, machine: Automat, old: str, new: str, event: str) -> None:
        self.since = self.clock.seconds()

    def _waiter_timed_out(self, waiter: _Waiter, timeout: float) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not waiter.result.called:
            waiter.result.errback(Timeout(f"not connected within {timeout:g}s: state {self.state}, {self.reason}"))

    def _settle_waiters(self, error: Exception | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            if waiter.result.called:
                continue
            if error is None:
                waiter.result.callback(self.status())
            else:
                waiter.result.errback(error)


class _Waiter:
    """A ``network_connected`` caller waiting for CONNECTED, with its timeout."""

    def __init__(self) -> None:
        self.result: Deferred = Deferred()
        self.timer: Any = None
