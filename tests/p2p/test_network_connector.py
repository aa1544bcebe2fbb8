"""Tests for bitnode.p2p.network_connector: each row of the table, with fake neighbours and a Clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from automats import Registry
from bitnode.errors import Timeout, Unavailable
from bitnode.p2p.network_connector import NetworkConnector
from tests.support import clock_at

START = 1700000000.0


class Neighbours:
    """The connector's neighbours; each call is recorded and answered by the test."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answers: dict[str, list[Deferred]] = {"ready": [], "restart": [], "probe": []}
        self.announced: list[tuple[bool, str]] = []

    def _ask(self, kind: str) -> Deferred:
        self.calls.append(kind)
        d: Deferred = Deferred()
        self.answers[kind].append(d)
        return d

    def transports_ready(self) -> Deferred:
        return self._ask("ready")

    def restart_transports(self) -> Deferred:
        return self._ask("restart")

    def probe(self) -> Deferred:
        return self._ask("probe")

    def announce(self, connected: bool, reason: str) -> None:
        self.announced.append((connected, reason))

    def answer(self, kind: str, result: str = "ok") -> None:
        self.answers[kind].pop(0).callback(result)

    def refuse(self, kind: str, reason: str = "nobody answered") -> None:
        self.answers[kind].pop(0).errback(Unavailable(reason))


class NetworkConnectorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = clock_at(START)
        self.registry = Registry()
        self.n = Neighbours()
        self.machine = NetworkConnector(self.clock, self.n.transports_ready, self.n.restart_transports,
                                        self.n.probe, self.n.announce, registry=self.registry)
        self.addCleanup(self.machine.shutdown)

    def path(self) -> list[tuple[str, str, str]]:
        return [(r.from_state, r.event, r.to_state) for r in self.machine.history]

    def to_connected_check(self) -> None:
        self.machine.event("init")
        self.n.answer("ready", "tcp listening")

    def to_connected(self) -> None:
        self.to_connected_check()
        self.n.answer("probe", "identity server answered")

    def to_disconnected(self) -> None:
        self.to_connected_check()
        self.n.refuse("probe", "id server down")

    # -- AT_STARTUP ---------------------------------------------------------------

    def test_init_waits_for_transports(self) -> None:
        self.assertEqual(self.machine.state, "AT_STARTUP")
        self.machine.event("init")
        self.assertEqual(self.machine.state, "TRANSPORTS?")
        self.assertEqual(self.n.calls, ["ready"])
        self.assertEqual(self.registry.list()[0]["timers"], ["timer-10sec"])

    def test_reconnect_and_check_before_init_are_harmless(self) -> None:
        self.machine.event("reconnect")
        self.machine.event("check-reconnect")
        self.assertEqual(self.machine.state, "AT_STARTUP")
        self.assertEqual(self.n.calls, [])
        self.assertEqual(self.machine.unexpected_count, 0)

    # -- TRANSPORTS? ----------------------------------------------------------------

    def test_transports_ready_starts_the_network_check(self) -> None:
        self.to_connected_check()
        self.assertEqual(self.machine.state, "CONNECTED?")
        self.assertEqual(self.n.calls, ["ready", "probe"])
        self.assertEqual(self.machine.checks, 1)

    def test_transports_failing_is_disconnected(self) -> None:
        self.machine.event("init")
        self.n.refuse("ready", "the gateway is not listening")
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.assertEqual(self.n.announced, [(False, "the gateway is not listening")])

    def test_transports_too_slow_is_disconnected_and_their_late_answer_ignored(self) -> None:
        self.machine.event("init")
        self.clock.advance(10.0)
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.assertIn("10 seconds", self.n.announced[-1][1])
        self.n.answer("ready")
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.assertEqual(self.n.calls, ["ready"])

    def test_reconnect_and_check_while_waiting_for_transports_are_harmless(self) -> None:
        self.machine.event("init")
        self.machine.event("reconnect")
        self.machine.event("check-reconnect")
        self.assertEqual(self.machine.state, "TRANSPORTS?")
        self.assertEqual(self.n.calls, ["ready"])

    # -- CONNECTED? -------------------------------------------------------------------

    def test_network_answers_connected(self) -> None:
        self.to_connected()
        self.assertEqual(self.machine.state, "CONNECTED")
        self.assertEqual(self.n.announced, [(True, "identity server answered")])
        self.assertEqual(self.path(), [("AT_STARTUP", "init", "TRANSPORTS?"),
                                       ("TRANSPORTS?", "all-network-transports-ready", "CONNECTED?"),
                                       ("CONNECTED?", "network-up", "CONNECTED")])
        self.assertEqual(self.machine.status()["connected"], True)

    def test_network_silent_is_disconnected(self) -> None:
        self.to_disconnected()
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.assertEqual(self.n.announced, [(False, "id server down")])
        self.assertEqual(self.machine.reason, "id server down")

    def test_check_too_slow_is_disconnected_and_its_late_answer_ignored(self) -> None:
        self.to_connected_check()
        self.clock.advance(30.0)
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.assertIn("30 seconds", self.machine.reason)
        self.n.answer("probe")
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.assertEqual(self.machine.unexpected_count, 0)

    def test_reconnect_during_the_check_restarts_transports(self) -> None:
        self.to_connected_check()
        self.machine.event("reconnect")
        self.assertEqual(self.machine.state, "TRANSPORTS?")
        self.assertEqual(self.n.calls, ["ready", "probe", "restart"])
        self.n.answer("probe")  # the overtaken check's answer
        self.assertEqual(self.machine.state, "TRANSPORTS?")
        self.n.answer("restart")
        self.assertEqual(self.machine.state, "CONNECTED?")

    def test_check_reconnect_during_the_check_is_harmless(self) -> None:
        self.to_connected_check()
        self.machine.event("check-reconnect")
        self.assertEqual(self.machine.state, "CONNECTED?")
        self.assertEqual(self.n.calls, ["ready", "probe"])

    # -- CONNECTED --------------------------------------------------------------------

    def test_connected_is_verified_every_five_minutes(self) -> None:
        self.to_connected()
        self.clock.advance(300.0)
        self.assertEqual(self.machine.state, "CONNECTED")
        self.assertEqual(self.n.calls.count("probe"), 2)
        self.n.answer("probe", "still there")
        self.assertEqual(self.machine.state, "CONNECTED")
        self.assertEqual(self.machine.reason, "still there")
        self.assertEqual(len(self.n.announced), 1)  # no second "connected"

    def test_connected_check_failing_is_disconnected(self) -> None:
        self.to_connected()
        self.machine.event("check-reconnect")
        self.n.refuse("probe", "lost it")
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.assertEqual(self.n.announced[-1], (False, "lost it"))

    def test_reconnect_while_connected(self) -> None:
        self.to_connected()
        self.machine.event("reconnect")
        self.assertEqual(self.machine.state, "TRANSPORTS?")
        self.assertEqual(self.n.calls[-1], "restart")
        self.n.answer("restart")
        self.n.answer("probe")
        self.assertEqual(self.machine.state, "CONNECTED")

    # -- DISCONNECTED -------------------------------------------------------------------

    def test_disconnected_retries_every_minute(self) -> None:
        self.to_disconnected()
        self.clock.advance(59.0)
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.clock.advance(1.0)
        self.assertEqual(self.machine.state, "CONNECTED?")
        self.n.answer("probe", "back")
        self.assertEqual(self.machine.state, "CONNECTED")
        self.assertEqual(self.n.announced, [(False, "id server down"), (True, "back")])

    def test_check_reconnect_while_disconnected_checks_now(self) -> None:
        self.to_disconnected()
        self.machine.event("check-reconnect")
        self.assertEqual(self.machine.state, "CONNECTED?")
        self.assertEqual(self.n.calls.count("probe"), 2)

    def test_reconnect_while_disconnected(self) -> None:
        self.to_disconnected()
        self.machine.event("reconnect")
        self.assertEqual(self.machine.state, "TRANSPORTS?")
        self.assertEqual(self.n.calls[-1], "restart")

    def test_unexpected_event_is_logged_not_fatal(self) -> None:
        self.to_disconnected()
        self.machine.event("network-up", "from nowhere")
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.assertEqual([(u.state, u.event) for u in self.machine.unexpected], [("DISCONNECTED", "network-up")])

    # -- neighbours that misbehave ----------------------------------------------------------

    def test_neighbour_raising_is_a_failed_check(self) -> None:
        def broken():
            raise RuntimeError("bug in the probe")

        machine = NetworkConnector(self.clock, self.n.transports_ready, self.n.restart_transports, broken,
                                   self.n.announce)
        self.addCleanup(machine.shutdown)
        machine.event("init")
        self.n.answer("ready")
        self.assertEqual(machine.state, "DISCONNECTED")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    # -- waiting for CONNECTED ----------------------------------------------------------------

    def test_when_connected_answers_at_once_when_connected(self) -> None:
        self.to_connected()
        self.assertEqual(self.successResultOf(self.machine.when_connected(5))["state"], "CONNECTED")

    def test_when_connected_waits_for_the_check(self) -> None:
        self.to_connected_check()
        d = self.machine.when_connected(5)
        self.assertNoResult(d)
        self.n.answer("probe")
        self.assertTrue(self.successResultOf(d)["connected"])
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), START + 300.0)  # only timer-5min is left

    def test_when_connected_fails_once_disconnected(self) -> None:
        self.to_connected_check()
        d = self.machine.when_connected(5)
        self.n.refuse("probe", "id server down")
        self.assertIn("id server down", str(self.failureResultOf(d, Unavailable).value))

    def test_when_connected_times_out_with_the_state(self) -> None:
        self.to_connected_check()
        d = self.machine.when_connected(5)
        self.clock.advance(5)
        err = self.failureResultOf(d, Timeout).value
        self.assertIn("CONNECTED?", str(err))

    def test_shutdown_fails_waiters_and_leaves_no_timer(self) -> None:
        self.to_connected_check()
        d = self.machine.when_connected(5)
        self.machine.shutdown()
        self.failureResultOf(d, Unavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.registry), 0)
        self.n.answer("probe")  # a late answer after shutdown changes nothing
        self.assertEqual(self.machine.state, "CONNECTED?")
