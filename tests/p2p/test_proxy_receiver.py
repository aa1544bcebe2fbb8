"""Tests for bitnode.p2p.proxy_receiver: the machine alone, with fake neighbours and a Clock.

Each neighbour appends what it was asked to ``events`` and hands back a
Deferred the test fires; time moves only with ``clock.advance``.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import Timeout, Unavailable
from bitnode.p2p.proxy_receiver import SKIP_FAILED_FOR, ProxyReceiver

HOUR = 3600.0
DAY = 24 * HOUR


class Neighbours:
    """Fake neighbours: every question is recorded and waits for the test's answer."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.pending: dict[str, list[Deferred]] = {}
        self.announced: list[tuple[str, dict]] = []

    def _ask(self, *what) -> Deferred:
        self.events.append(what)
        d: Deferred = Deferred()
        self.pending.setdefault(what[0], []).append(d)
        return d

    def answer(self, what: str, result=None) -> None:
        self.pending[what].pop(0).callback(result)

    def refuse(self, what: str, error: Exception) -> None:
        self.pending[what].pop(0).errback(error)

    def check_reachable(self):
        return self._ask("check_reachable")

    def find_routers(self):
        return self._ask("find_routers")

    def request_route(self, router):
        return self._ask("request_route", router)

    def link(self, router, contact):
        return self._ask("link", router, contact)

    def unlink(self, leave):
        self.events.append(("unlink", leave))
        return None

    def keepalive(self, router):
        return self._ask("keepalive", router)

    def announce(self, event_id, data):
        self.announced.append((event_id, data))


class ProxyReceiverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.n = Neighbours()
        self.machine = ProxyReceiver(self.clock, self.n.check_reachable, self.n.find_routers, self.n.request_route,
                                     self.n.link, self.n.unlink, self.n.keepalive, self.n.announce)
        self.addCleanup(lambda: self.machine.destroyed or self.machine.event("stop"))

    def routed_through(self, router: str = "p1@id_1") -> None:
        """start -> unreachable -> one router found -> accepted -> linked."""
        self.machine.event("start")
        self.n.answer("check_reachable", (False, "no listening port"))
        self.n.answer("find_routers", [router])
        self.n.answer("request_route", f"tcp://127.0.0.1:{7000 + len(self.n.events)}")
        self.n.answer("link")
        self.assertEqual(self.machine.state, "ROUTED")

    def test_a_reachable_node_stays_direct_and_checks_again_every_recheck_interval(self):
        self.machine.event("start")
        self.assertEqual(self.machine.state, "REACHABLE?")
        self.n.answer("check_reachable", (True, "router p1 connected to us"))
        self.assertEqual(self.machine.state, "DIRECT")
        self.assertEqual(self.n.events, [("check_reachable",), ("unlink", True)])
        self.assertEqual(self.n.announced, [("proxy-direct", {"reason": "router p1 connected to us"})])
        for _day in range(3):  # three days of simulated time: one check an hour, nothing else
            for _ in range(24):
                self.clock.advance(HOUR)
                self.n.answer("check_reachable", (True, "still"))
        self.assertEqual(sum(1 for e in self.n.events if e == ("check_reachable",)), 1 + 72)
        self.assertEqual(self.machine.state, "DIRECT")

    def test_an_unreachable_node_is_routed_through_the_first_router_that_accepts(self):
        self.machine.event("start")
        self.n.answer("check_reachable", (False, "router p0 could not connect to us"))
        self.n.answer("find_routers", ["p1@id_1", "p2@id_1"])
        self.assertEqual(self.machine.state, "REQUEST")
        self.n.refuse("request_route", Unavailable("refused: this router routes 100 nodes, its limit"))
        self.assertEqual(self.machine.state, "REQUEST")
        self.n.answer("request_route", "tcp://127.0.0.1:7002")
        self.assertEqual(self.machine.state, "LINKING")
        self.n.answer("link")
        self.assertEqual(self.machine.state, "ROUTED")
        self.assertEqual([e for e in self.n.events if e[0] in ("request_route", "link")],
                         [("request_route", "p1@id_1"), ("request_route", "p2@id_1"),
                          ("link", "p2@id_1", "tcp://127.0.0.1:7002")])
        self.assertEqual(self.n.announced[-1], ("proxy-routed", {"router": "p2@id_1",
                                                                 "contact": "tcp://127.0.0.1:7002"}))
        self.assertEqual(self.machine.status()["skipped"], ["p1@id_1"])

    def test_a_routed_node_keeps_its_router_alive_for_days(self):
        self.routed_through()
        for _ in range(3 * 24 * 60):  # keep-alives every minute for three days
            self.clock.advance(60)
            self.n.answer("keepalive", None)
        self.assertEqual(self.machine.state, "ROUTED")
        self.assertEqual(sum(1 for e in self.n.events if e[0] == "keepalive"), 3 * 24 * 60)
        self.assertEqual(self.machine.last_keepalive, self.clock.seconds())

    def test_a_moved_identity_renews_its_route_at_once_and_only_when_routed(self):
        self.machine.event("renew")  # not routed yet: nothing to renew
        self.assertEqual(self.n.events, [])
        self.routed_through()
        self.clock.advance(10)
        self.machine.event("renew")
        self.assertEqual(self.n.events[-1], ("keepalive", "p1@id_1"))
        self.n.answer("keepalive", None)
        self.assertEqual((self.machine.state, self.machine.last_keepalive), ("ROUTED", 10.0))
        # and the keep-alives go on every minute as before
        self.clock.advance(60)
        self.assertEqual(sum(1 for e in self.n.events if e[0] == "keepalive"), 2)

    def test_a_lost_connection_finds_a_router_again_the_same_one_first(self):
        self.routed_through("p1@id_1")
        self.machine.event("router-lost", "the connection to router p1 closed")
        self.assertEqual(self.machine.state, "FIND_ROUTER")
        self.assertIn(("unlink", False), self.n.events)
        self.assertEqual(self.machine.last_router, "p1@id_1")
        self.assertEqual(self.n.announced[-1][0], "proxy-router-lost")
        self.n.answer("find_routers", ["p1@id_1", "p2@id_1"])
        self.assertEqual(self.n.events[-1], ("request_route", "p1@id_1"))  # it may only have reconnected
        self.n.refuse("request_route", Unavailable("cannot connect to 127.0.0.1:7001: refused"))
        self.n.answer("request_route", "tcp://127.0.0.1:7002")
        self.n.answer("link")
        self.assertEqual((self.machine.state, self.machine.router, self.machine.reroutes), ("ROUTED", "p2@id_1", 1))

    def test_a_silent_router_is_skipped_after_a_failed_keepalive(self):
        self.routed_through("p1@id_1")
        self.clock.advance(60)
        self.n.refuse("keepalive", Timeout("no answer in 15s"))
        self.assertEqual(self.machine.state, "FIND_ROUTER")
        self.n.answer("find_routers", ["p1@id_1", "p2@id_1"])
        self.assertEqual(self.n.events[-1], ("request_route", "p2@id_1"))

    def test_no_router_found_retries_every_15_seconds(self):
        self.machine.event("start")
        self.n.answer("check_reachable", (False, "no listening port"))
        self.n.answer("find_routers", [])
        self.assertEqual(self.machine.state, "OFFLINE")
        self.assertEqual(self.machine.reason, "no router found")
        self.clock.advance(15)
        self.assertEqual(self.machine.state, "REACHABLE?")
        self.n.answer("check_reachable", (False, "no listening port"))
        self.n.refuse("find_routers", Unavailable("DHT has no peers"))
        self.assertEqual((self.machine.state, self.machine.reason), ("OFFLINE", "DHT has no peers"))

    def test_every_router_refusing_goes_offline_and_the_others_are_preferred_for_ten_minutes(self):
        self.machine.event("start")
        self.n.answer("check_reachable", (False, "forced"))
        self.n.answer("find_routers", ["p1@id_1"])
        self.n.refuse("request_route", Unavailable("refused: full"))
        self.assertEqual(self.machine.state, "OFFLINE")
        self.clock.advance(15)
        self.n.answer("check_reachable", (False, "forced"))
        self.n.answer("find_routers", ["p1@id_1", "p2@id_1"])
        self.assertEqual(self.n.events[-1], ("request_route", "p2@id_1"))  # p1 failed lately: p2 first
        self.n.refuse("request_route", Unavailable("refused: full"))
        self.assertEqual(self.machine.state, "OFFLINE")  # p1 is not asked twice within 15 s
        self.assertEqual(sum(1 for e in self.n.events if e[0] == "request_route"), 2)
        self.clock.advance(SKIP_FAILED_FOR)
        self.n.answer("check_reachable", (False, "forced"))
        self.n.answer("find_routers", ["p1@id_1"])
        self.assertEqual(self.machine.state, "REQUEST")

    def test_when_every_router_failed_lately_they_are_asked_again_at_each_retry_the_longest_failed_first(self):
        # both routers were killed one after the other; then they come back: found at the next retry
        self.machine.event("start")
        self.n.answer("check_reachable", (False, "forced"))
        self.n.answer("find_routers", ["p1@id_1", "p2@id_1"])
        self.n.refuse("request_route", Unavailable("connection refused"))
        self.clock.advance(1)
        self.n.refuse("request_route", Unavailable("connection refused"))
        self.assertEqual(self.machine.state, "OFFLINE")
        self.clock.advance(15)
        self.n.answer("check_reachable", (False, "forced"))
        self.n.answer("find_routers", ["p2@id_1", "p1@id_1"])
        self.assertEqual(self.n.events[-1], ("request_route", "p1@id_1"))
        self.n.refuse("request_route", Unavailable("still down"))
        self.assertEqual(self.n.events[-1], ("request_route", "p2@id_1"))  # the rest of this pass
        self.n.answer("request_route", "tcp://127.0.0.1:7002")
        self.n.answer("link")
        self.assertEqual((self.machine.state, self.machine.router), ("ROUTED", "p2@id_1"))

    def test_a_router_that_never_answers_is_given_up_after_30_seconds(self):
        self.machine.event("start")
        self.n.answer("check_reachable", (False, "forced"))
        self.n.answer("find_routers", ["p1@id_1", "p2@id_1"])
        self.clock.advance(30)
        self.assertEqual(self.n.events[-1], ("request_route", "p2@id_1"))
        self.n.answer("request_route", "tcp://127.0.0.1:7001")  # p1's late answer: dropped
        self.assertEqual(self.machine.state, "REQUEST")
        self.assertEqual(self.machine.asking, "p2@id_1")

    def test_a_stuck_reachability_check_does_not_block_the_machine(self):
        self.machine.event("start")
        self.clock.advance(30)
        self.assertEqual(self.machine.state, "OFFLINE")
        self.n.answer("check_reachable", (True, "too late"))  # dropped
        self.assertEqual(self.machine.state, "OFFLINE")

    def test_a_recheck_while_routed_keeps_the_router_when_still_unreachable(self):
        self.routed_through("p1@id_1")
        self.machine.event("recheck", "services/proxy-transport/reachable is now auto")
        self.assertEqual(self.machine.state, "REACHABLE?")
        self.n.answer("check_reachable", (False, "router p1 could not connect to us"))
        self.assertEqual((self.machine.state, self.machine.router), ("ROUTED", "p1@id_1"))
        self.assertNotIn(("unlink", False), self.n.events)

    def test_a_recheck_that_finds_us_reachable_leaves_the_router(self):
        self.routed_through("p1@id_1")
        self.machine.event("recheck")
        self.n.answer("check_reachable", (True, "services/proxy-transport/reachable is yes"))
        self.assertEqual((self.machine.state, self.machine.router), ("DIRECT", None))
        self.assertEqual(self.n.events[-1], ("unlink", True))

    def test_a_failed_link_goes_offline_and_undoes_it(self):
        self.machine.event("start")
        self.n.answer("check_reachable", (False, "forced"))
        self.n.answer("find_routers", ["p1@id_1"])
        self.n.answer("request_route", "tcp://127.0.0.1:7001")
        self.n.refuse("link", Unavailable("cannot save the identity"))
        self.assertEqual(self.machine.state, "OFFLINE")
        self.assertEqual(self.n.events[-1], ("unlink", False))

    def test_stop_leaves_the_router(self):
        self.routed_through("p1@id_1")
        self.machine.event("stop")
        self.assertTrue(self.machine.destroyed)
        self.assertEqual(self.n.events[-1], ("unlink", True))

    def test_events_that_mean_nothing_now_are_kept_in_place(self):
        self.machine.event("start")
        self.machine.event("router-lost", "an old connection")
        self.machine.event("keepalive-ok")
        self.machine.event("recheck")
        self.assertEqual(self.machine.state, "REACHABLE?")
        self.assertEqual(self.machine.unexpected, [])
