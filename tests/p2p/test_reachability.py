"""Tests for bitnode.p2p.reachability: STUN's hint and a router's dial-back decide, time is a Clock.

The decision is tested alone (fake witnesses), then wired to the
proxy_receiver machine the way service_proxy_transport wires it: a node
behind NAT decides within the dial-back timeout and goes looking for a
router; a reachable one stays direct for days, checking every hour; a network
change seen by STUN makes it decide again at once.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import Unavailable
from bitnode.p2p.proxy_receiver import ProxyReceiver
from bitnode.p2p.reachability import (
    NAT,
    PUBLIC,
    REACHABLE,
    UNKNOWN,
    UNREACHABLE,
    Reachability,
    decide,
    local_ip_addresses,
    normalised,
    stun_says,
)

HOUR = 3600.0
DAY = 24 * HOUR
LOCAL = {"127.0.0.1", "192.168.1.20", "fe80::1"}


class Witnesses:
    """A STUN server and a router whose answers the test sets (or holds back)."""

    def __init__(self, external: str | None = "192.168.1.20", dial_back: tuple | None = (REACHABLE, "it got in")):
        self.external = external
        self.dial_back_answer = dial_back  # None: never answers
        self.asked: list[str] = []

    def stun(self) -> Deferred:
        self.asked.append("stun")
        if self.external is None:
            return defer.fail(Unavailable("no STUN server answered"))
        return defer.succeed({"ip": self.external, "port": 4000, "server": "stun:3478"})

    def dial_back(self) -> Deferred:
        self.asked.append("dial_back")
        if self.dial_back_answer is None:
            return Deferred()  # a router that never answers
        return defer.succeed(self.dial_back_answer)


def reachability(clock: Clock, witnesses: Witnesses, timeout: float = 10.0) -> Reachability:
    return Reachability(clock, witnesses.stun, lambda: set(LOCAL), witnesses.dial_back, lambda: timeout)


class DecisionTests(unittest.TestCase):
    def test_the_rule(self):
        self.assertEqual(decide(NAT, REACHABLE), (True, "stun+dial-back"))  # a forwarded port
        self.assertEqual(decide(PUBLIC, UNREACHABLE), (False, "stun+dial-back"))  # a firewall
        self.assertEqual(decide(UNKNOWN, UNREACHABLE), (False, "dial-back"))
        self.assertEqual(decide(NAT, UNKNOWN), (False, "stun"))
        self.assertEqual(decide(PUBLIC, UNKNOWN), (True, "stun"))
        self.assertEqual(decide(UNKNOWN, UNKNOWN), (True, "assumed"))

    def test_stun_compares_with_every_local_address(self):
        self.assertEqual(stun_says("192.168.1.20", LOCAL), PUBLIC)
        self.assertEqual(stun_says("::ffff:192.168.1.20", LOCAL), PUBLIC)
        self.assertEqual(stun_says("fe80::1%eth0", LOCAL), PUBLIC)
        self.assertEqual(stun_says("203.0.113.7", LOCAL), NAT)
        self.assertEqual(stun_says(None, LOCAL), UNKNOWN)
        self.assertEqual(normalised("not an address"), "not an address")

    def test_this_machine_has_a_loopback_address(self):
        self.assertIn("127.0.0.1", local_ip_addresses())

    def test_behind_nat_and_refuted_by_the_router(self):
        clock = Clock()
        check = reachability(clock, Witnesses("203.0.113.7", (UNREACHABLE, "router r could not connect")))
        reachable, reason = self.successResultOf(check.check())
        self.assertFalse(reachable)
        self.assertIn("203.0.113.7", reason)
        self.assertEqual((check.last.decided_by, check.last.stun, check.last.dial_back),
                         ("stun+dial-back", NAT, UNREACHABLE))
        self.assertEqual(check.status()["stun_nat"], 1)

    def test_behind_nat_with_a_forwarded_port_is_reachable(self):
        check = reachability(Clock(), Witnesses("203.0.113.7", (REACHABLE, "router r connected to us")))
        self.assertTrue(self.successResultOf(check.check())[0])
        self.assertEqual(check.last.decided_by, "stun+dial-back")

    def test_behind_nat_with_a_silent_router_decides_from_stun_at_the_timeout(self):
        clock = Clock()
        check = reachability(clock, Witnesses("203.0.113.7", None), timeout=10.0)
        d = check.check()
        self.assertNoResult(d)
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        reachable, reason = self.successResultOf(d)
        self.assertFalse(reachable)
        self.assertIn("no dial-back answer within 10s", reason)
        self.assertEqual((check.last.decided_by, check.status()["dialback_unknown"]), ("stun", 1))

    def test_a_public_address_without_any_router_is_reachable(self):
        check = reachability(Clock(), Witnesses("192.168.1.20", (UNKNOWN, "no router found")))
        self.assertTrue(self.successResultOf(check.check())[0])
        self.assertEqual(check.last.decided_by, "stun")

    def test_without_stun_the_dial_back_decides_and_without_both_we_assume(self):
        check = reachability(Clock(), Witnesses(None, (UNREACHABLE, "router r could not connect")))
        self.assertFalse(self.successResultOf(check.check())[0])
        self.assertEqual(check.last.decided_by, "dial-back")
        check = reachability(Clock(), Witnesses(None, (UNKNOWN, "no router found")))
        self.assertTrue(self.successResultOf(check.check())[0])
        self.assertEqual(check.last.decided_by, "assumed")

    def test_a_failing_dial_back_counts_as_no_answer(self):
        witnesses = Witnesses("203.0.113.7")
        witnesses.dial_back = lambda: defer.fail(Unavailable("no DHT"))
        check = reachability(Clock(), witnesses)
        self.assertFalse(self.successResultOf(check.check())[0])
        self.assertIn("no dial-back: no DHT", check.last.reason)

    def test_a_new_external_address_is_news_only_for_a_decision_from_the_network(self):
        check = reachability(Clock(), Witnesses("192.168.1.20"))
        self.assertFalse(check.external_seen("203.0.113.7"))  # nothing decided yet
        self.successResultOf(check.check())
        self.assertFalse(check.external_seen("192.168.1.20"))
        self.assertTrue(check.external_seen("203.0.113.7"))
        check.record(False, "services/proxy-transport/reachable is no", "setting")
        self.assertFalse(check.external_seen("198.51.100.1"))
        self.assertEqual(check.status()["network_changes"], 1)
        self.assertEqual(check.status()["changes"], 1)


class Receiver:
    """A proxy_receiver whose reachability check is a :class:`Reachability`; routers answer at once."""

    def __init__(self, clock: Clock, witnesses: Witnesses):
        self.events: list = []
        self.check = reachability(clock, witnesses)
        self.machine = ProxyReceiver(clock, self.check.check, self.find_routers, self.request_route, self.link,
                                     self.unlink, self.keepalive, lambda event, data: self.events.append(event))

    def find_routers(self):
        self.events.append("find_routers")
        return defer.succeed(["router-1@h_1"])

    def request_route(self, router):
        return defer.succeed("tcp://127.0.0.1:1")

    def link(self, router, contact):
        return defer.succeed(None)

    def unlink(self, leave):
        return None

    def keepalive(self, router):
        return defer.succeed(None)

    def network_changed(self, ip: str) -> None:
        """What service_proxy_transport does on ``external-address-changed``."""
        if self.check.external_seen(ip):
            self.machine.event("recheck", f"the network changed: STUN sees us at {ip}")


class ReceiverTests(unittest.TestCase):
    def test_behind_nat_a_node_is_routed_within_the_dial_back_timeout(self):
        clock = Clock()
        node = Receiver(clock, Witnesses("203.0.113.7", None))
        node.machine.event("start")
        self.assertEqual(node.machine.state, "REACHABLE?")
        clock.advance(10.0)
        self.assertEqual(node.machine.state, "ROUTED")
        self.assertEqual(node.events, ["find_routers", "proxy-routed"])
        self.assertIs(node.machine.reachable, False)

    def test_a_reachable_node_checks_every_hour_for_days_and_stays_direct(self):
        clock = Clock()
        witnesses = Witnesses("192.168.1.20", (REACHABLE, "router connected"))
        node = Receiver(clock, witnesses)
        node.machine.event("start")
        self.assertEqual(node.machine.state, "DIRECT")
        for _ in range(int(3 * DAY / 60)):
            clock.advance(60)
        self.assertEqual(node.machine.state, "DIRECT")
        self.assertEqual(node.check.status()["checks"], 1 + 72)
        self.assertEqual(node.check.status()["changes"], 0)

    def test_a_network_change_seen_by_stun_decides_again_at_once(self):
        clock = Clock()
        witnesses = Witnesses("192.168.1.20", (REACHABLE, "router connected"))
        node = Receiver(clock, witnesses)
        node.machine.event("start")
        clock.advance(5 * HOUR + 10)
        checks = node.check.status()["checks"]
        # the laptop moves behind a home router: STUN (the network connector's) now sees another address
        witnesses.external, witnesses.dial_back_answer = "203.0.113.7", (UNREACHABLE, "router could not connect")
        node.network_changed("203.0.113.7")
        self.assertEqual(node.machine.state, "ROUTED")
        self.assertEqual(node.check.status()["checks"], checks + 1)
        self.assertEqual((node.check.last.stun, node.check.status()["changes"]), (NAT, 1))
        # the same address again is no news
        node.network_changed("203.0.113.7")
        self.assertEqual(node.check.status()["checks"], checks + 1)
        # and back on a public address: direct again, the router left
        witnesses.external, witnesses.dial_back_answer = "192.168.1.20", (REACHABLE, "router connected")
        node.network_changed("192.168.1.20")
        self.assertEqual(node.machine.state, "DIRECT")
        self.assertEqual(node.events[-1], "proxy-direct")
