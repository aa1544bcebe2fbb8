"""proxy_receiver: is this node reachable, and if not, keep it routed through a router.

::

    AT_STARTUP --start--> REACHABLE? --reachable--> DIRECT --timer-recheck / recheck--> REACHABLE?
                              |  (already routed: stay ROUTED)
                              +--unreachable--> FIND_ROUTER --routers-found--> REQUEST --accepted--> LINKING
                                                  |   (none)                    | refused/timeout:      |
                                                  v                             | next candidate        | linked
                                                OFFLINE <---(none left)---------+                       v
                                                  |  timer-retry / recheck --> REACHABLE?             ROUTED
                                                                                        router-lost --> FIND_ROUTER

- REACHABLE? asks ``check_reachable`` (the setting, whether we listen, then a
  router's attempt to connect to us): ``(True|False, reason)``.
- FIND_ROUTER asks ``find_routers`` for candidates (the last router first,
  then routers from the DHT); each is asked in turn (``request_route``) until
  one accepts; a router that refused, failed or went silent is skipped for
  :data:`SKIP_FAILED_FOR` seconds (unless every candidate was: then they
  are all asked again, the longest-failed first).
- LINKING: ``link(router)`` sends our packets through it and publishes it as
  our contact; then ROUTED, where ``keepalive(router)`` runs every
  ``timer-keepalive`` (a route request again: it keeps NAT mappings and the
  router's route alive and proves the router still answers; ``renew``, when
  my identity moved to a new global id, asks at once: the router then
  routes the new name too).  A lost
  connection to the router (``router-lost``: it is asked first again, it may
  only have dropped the connection) or a failed keep-alive
  (``keepalive-failed``: it is skipped) sends our packets direct
  (``unlink``) while a router is found.

Every answer of a neighbour is numbered: one that arrives after the machine
moved on (a newer check, a timeout) is dropped, never turned into an event.
The neighbours are passed in, so a test drives the machine with fakes and a
``Clock``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from automats import Automat
from bitnode.p2p.answers import LatestAnswers

#: Seconds a router that refused us, failed or went silent is not asked again.
SKIP_FAILED_FOR = 600.0
#: States in which we are not routed and do not look for a router.
ROUTED = "ROUTED"
DIRECT = "DIRECT"


class ProxyReceiver(Automat):
    """Keeps this node reachable: direct, or through one router at a time.

    :param clock: time source for timers.
    :param check_reachable: ``() -> Deferred[(bool, str)]``: whether peers can connect to us, and why.
    :param find_routers: ``() -> Deferred[list[str]]``: router candidates (global ids), best first.
    :param request_route: ``(router) -> Deferred[str]``: ask a router to route us; fires with its
        ``tcp://`` contact, fails with why it will not.
    :param link: ``(router, contact) -> Deferred``: route our packets through it and publish it.
    :param unlink: ``(leave) -> Deferred``: packets go direct again (``leave``: tell the router, and
        publish our own contact).
    :param keepalive: ``(router) -> Deferred``: fires when the router still routes us.
    :param announce: ``(event_id, data)``: tell the node (``proxy-routed``, ``proxy-router-lost``,
        ``proxy-direct``).
    """

    name = "proxy_receiver"
    initial = "AT_STARTUP"
    timers = {
        "timer-30sec": (30.0, {"REACHABLE?", "FIND_ROUTER", "REQUEST", "LINKING"}),  # a stuck step has failed
        "timer-keepalive": (60.0, {"ROUTED"}),
        "timer-retry": (15.0, {"OFFLINE"}),
        "timer-recheck": (3600.0, {"DIRECT"}),
    }
    transitions = [
        # state          event              guard            next           actions
        ("AT_STARTUP",  "start",           None,            "REACHABLE?",  ["check_reachable"]),
        ("REACHABLE?",  "reachable",       None,            "DIRECT",      ["go_direct"]),
        ("REACHABLE?",  "unreachable",     "is_linked",     "ROUTED",      ["note_reason"]),
        ("REACHABLE?",  "unreachable",     None,            "FIND_ROUTER", ["note_reason", "find_routers"]),
        ("REACHABLE?",  "timer-30sec",     "is_linked",     "ROUTED",      ["forget_answer"]),
        ("REACHABLE?",  "timer-30sec",     None,            "OFFLINE",     ["forget_answer", "note_stuck"]),
        ("DIRECT",      "timer-recheck",   None,            "REACHABLE?",  ["check_reachable"]),
        ("FIND_ROUTER", "routers-found",   "has_candidate", "REQUEST",     ["request_route"]),
        ("FIND_ROUTER", "routers-found",   None,            "OFFLINE",     ["note_no_router"]),
        ("FIND_ROUTER", "lookup-failed",   None,            "OFFLINE",     ["note_reason"]),
        ("FIND_ROUTER", "timer-30sec",     None,            "OFFLINE",     ["forget_answer", "note_stuck"]),
        ("REQUEST",     "accepted",        None,            "LINKING",     ["link"]),
        ("REQUEST",     "refused",         "has_candidate", "REQUEST",     ["skip_router", "request_route"]),
        ("REQUEST",     "refused",         None,            "OFFLINE",     ["skip_router", "note_no_router"]),
        ("REQUEST",     "timer-30sec",     "has_candidate", "REQUEST",     ["skip_router", "request_route"]),
        ("REQUEST",     "timer-30sec",     None,            "OFFLINE",     ["skip_router", "note_no_router"]),
        ("LINKING",     "linked",          None,            "ROUTED",      ["announce_routed"]),
        ("LINKING",     "link-failed",     None,            "OFFLINE",     ["skip_router", "unlink", "note_reason"]),
        ("LINKING",     "timer-30sec",     None,            "OFFLINE",     ["forget_answer", "skip_router",
                                                                            "unlink", "note_stuck"]),
        ("ROUTED",      "timer-keepalive", None,            "*",           ["keepalive"]),
        ("ROUTED",      "keepalive-ok",    None,            "*",           ["note_alive"]),
        ("ROUTED",      "router-lost",     None,            "FIND_ROUTER", ["note_reason", "unlink",
                                                                            "announce_lost", "find_routers"]),
        ("ROUTED",      "keepalive-failed", None,           "FIND_ROUTER", ["note_reason", "skip_current",
                                                                            "unlink", "announce_lost",
                                                                            "find_routers"]),
        ("OFFLINE",     "timer-retry",     None,            "REACHABLE?",  ["check_reachable"]),
        # the setting changed, or the network did: decide again (a check or a search in flight goes on)
        ("DIRECT",      "recheck",         None,            "REACHABLE?",  ["check_reachable"]),
        ("ROUTED",      "recheck",         None,            "REACHABLE?",  ["check_reachable"]),
        ("OFFLINE",     "recheck",         None,            "REACHABLE?",  ["check_reachable"]),
        ("*",           "recheck",         None,            "*",           []),
        # my identity moved (a new global id): the router must route the new name now, not at the next keep-alive
        ("ROUTED",      "renew",           None,            "*",           ["keepalive"]),
        ("*",           "renew",           None,            "*",           []),
        # losing a router we are not routed through (any more) changes nothing
        ("*",           "router-lost",     None,            "*",           []),
        ("*",           "keepalive-ok",    None,            "*",           []),
        ("*",           "keepalive-failed", None,           "*",           []),
        ("*",           "stop",            None,            "CLOSED",      ["forget_answer", "unlink_quietly",
                                                                            "destroy"]),
    ]

    def __init__(
        self,
        clock: IReactorTime,
        check_reachable: Callable[[], Deferred],
        find_routers: Callable[[], Deferred],
        request_route: Callable[[str], Deferred],
        link: Callable[[str, str], Deferred],
        unlink: Callable[[bool], Deferred],
        keepalive: Callable[[str], Deferred],
        announce: Callable[[str, dict], Any],
        **kwargs: Any,
    ) -> None:
        self._check_reachable = check_reachable
        self._find_routers = find_routers
        self._request_route = request_route
        self._link = link
        self._unlink = unlink
        self._keepalive = keepalive
        self._announce = announce
        self._answers = LatestAnswers(self)  # older questions' answers are dropped
        self.candidates: list[str] = []
        self._pass_started = float("-inf")  # when the current pass over candidates began
        self.asking: Optional[str] = None  # the router being asked
        self.router: Optional[str] = None  # the router we are routed through
        self.last_router: Optional[str] = None  # the one before (asked first again: it may only have reconnected)
        self.router_contact: Optional[str] = None
        self.skipped: dict[str, float] = {}
        self.reason = "not started"
        self.reachable: Optional[bool] = None
        self.reroutes = 0
        self.routed_since: Optional[float] = None
        self.last_keepalive: Optional[float] = None
        super().__init__(clock, **kwargs)

    # -- public -----------------------------------------------------------------

    def status(self) -> dict:
        """JSON-safe summary for ``network_status(proxy=True)``."""
        return {
            "state": self.state, "reachable": self.reachable, "reason": self.reason, "router": self.router,
            "router_contact": self.router_contact, "routed_since": self.routed_since, "reroutes": self.reroutes,
            "last_keepalive": self.last_keepalive, "asking": self.asking,
            "skipped": sorted(r for r, at in self.skipped.items() if self._skipping(r, at)),
        }

    # -- guards -------------------------------------------------------------------

    def is_linked(self, *args: Any) -> bool:
        """Are we routed through a router now?"""
        return self.router is not None

    def has_candidate(self, routers: Any = None, *args: Any) -> bool:
        """Is there a router left to ask?  ``routers``: a fresh list of candidates (a new pass).

        A pass asks the routers not skipped after a failure; when every one
        was skipped, it asks them all again, the one that failed longest ago
        first (the OFFLINE retry timer paces this): a router that came back
        is found within a retry, not after :data:`SKIP_FAILED_FOR`.  Within a
        pass, a router that failed is not asked again.
        """
        now = self.clock.seconds()
        if isinstance(routers, list):
            self._pass_started = now
            fresh = list(dict.fromkeys(routers))
            usable = [r for r in fresh if not self._skipping(r, self.skipped.get(r), now)]
            self.candidates = usable or sorted(fresh, key=lambda r: self.skipped.get(r, 0.0))
        self.candidates = [r for r in self.candidates if self.skipped.get(r, float("-inf")) < self._pass_started]
        return bool(self.candidates)

    # -- actions --------------------------------------------------------------------

    def check_reachable(self, *args: Any) -> None:
        """Ask whether peers can connect to us."""
        self._expect(self._check_reachable, self._reachability, "unreachable")

    def _reachability(self, answer: Any) -> None:
        reachable, reason = answer
        self.reachable = bool(reachable)
        self.event("reachable" if reachable else "unreachable", reason)

    def find_routers(self, *args: Any) -> None:
        """Ask for router candidates."""
        self.asking = None
        self._expect(self._find_routers, lambda routers: self.event("routers-found", list(routers)),
                     "lookup-failed")

    def request_route(self, *args: Any) -> None:
        """Ask the next candidate (``has_candidate`` kept them) to route us."""
        self.asking = self.candidates.pop(0)
        router = self.asking
        self._expect(lambda: self._request_route(router), lambda contact: self.event("accepted", router, contact),
                     "refused")

    def skip_router(self, *args: Any) -> None:
        """The router being asked refused, failed or went silent: not again for a while."""
        if self.asking is not None:
            self.skipped[self.asking] = self.clock.seconds()
            self.reason = f"router {self.asking}: {args[0] if args and isinstance(args[0], str) else 'no answer'}"
        self.asking = None

    def link(self, router: str, contact: str, *args: Any) -> None:
        """Route our packets through ``router`` and publish it as our contact."""
        self.router, self.router_contact = router, contact
        self.asking = None
        self._expect(lambda: self._link(router, contact), lambda _: self.event("linked"), "link-failed")

    def skip_current(self, *args: Any) -> None:
        """Our router stopped answering: not asked again for a while."""
        if self.router is not None:
            self.skipped[self.router] = self.clock.seconds()

    def unlink(self, *args: Any) -> None:
        """Our packets go direct while we have no router (our published contact stays until the next one)."""
        self.last_router = self.router
        self.router = self.router_contact = self.routed_since = None
        self._fire(self._unlink(False))

    def unlink_quietly(self, *args: Any) -> None:
        """Stopping: tell the router we leave, and go direct."""
        if self.router is not None:
            self.router = self.router_contact = None
            self._fire(self._unlink(True))

    def go_direct(self, reason: str = "", *args: Any) -> None:
        """Reachable: leave the router if we had one, and publish our own contact."""
        self.reason = reason or "reachable"
        self.router = self.router_contact = self.routed_since = None
        self._fire(self._unlink(True))
        self._announce("proxy-direct", {"reason": self.reason})

    def keepalive(self, *args: Any) -> None:
        """Ask our router whether it still routes us."""
        router = self.router
        if router is None:
            return
        self._expect(lambda: self._keepalive(router), lambda _: self.event("keepalive-ok"), "keepalive-failed",
                     numbered=False)

    def note_alive(self, *args: Any) -> None:
        """The router answered a keep-alive."""
        self.last_keepalive = self.clock.seconds()

    def announce_routed(self, *args: Any) -> None:
        """Tell the node which router carries our packets now."""
        self.routed_since = self.last_keepalive = self.clock.seconds()
        self.reason = f"routed through {self.router}"
        self._announce("proxy-routed", {"router": self.router, "contact": self.router_contact})

    def announce_lost(self, *args: Any) -> None:
        """Tell the node our router is gone (a new one is being found)."""
        self.reroutes += 1
        self._announce("proxy-router-lost", {"reason": self.reason})

    def note_reason(self, reason: Any = "", *args: Any) -> None:
        """Remember why (shown in the status)."""
        if isinstance(reason, str) and reason:
            self.reason = reason

    def note_no_router(self, *args: Any) -> None:
        """Nobody to route us now; try again later."""
        self.reason = f"no router accepted us ({self.reason})" if self.skipped else "no router found"

    def note_stuck(self, *args: Any) -> None:
        """A step took too long."""
        self.reason = f"no answer within 30 seconds while {self.state.lower()}"

    def forget_answer(self, *args: Any) -> None:
        """Drop the answer of the question in flight, if it still comes."""
        self._answers.forget()

    # -- internals -------------------------------------------------------------------

    def _skipping(self, router: str, at: Optional[float], now: Optional[float] = None) -> bool:
        now = self.clock.seconds() if now is None else now
        return at is not None and now - at < SKIP_FAILED_FOR

    def _expect(self, ask: Callable[[], Deferred], answered: Callable[[Any], None], failed_event: str,
                numbered: bool = True) -> None:
        """Ask a neighbour; its answer becomes an event unless a newer question overtook it."""
        self._answers.ask(ask, answered, failed_event, new=numbered)

    def _fire(self, d: Optional[Deferred]) -> None:
        """Run a neighbour whose answer changes nothing; only log its failure."""
        if d is not None:
            d.addErrback(lambda f: self.log.info("{machine_id}: {err}", machine_id=self.id, err=f.getErrorMessage()))
