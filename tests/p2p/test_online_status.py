"""Tests for bitnode.p2p.online_status with a fake gateway and a Clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from bitnode.errors import BadRequest, NotFound, Timeout, Unavailable
from bitnode.p2p.online_status import CONNECTED, OFFLINE, PING, UNKNOWN, OnlineStatus
from bitnode.transport.packet_out import PeerRefused
from tests.support import clock_at

START = 1700000000.0
BOB = "bob@127.0.0.1_8084"
CAROL = "carol@127.0.0.1_8084"


class FakeGateway:
    def __init__(self) -> None:
        self.listeners: list = []
        self.pings: list[tuple[str, float, Deferred]] = []

    def add_listener(self, listener) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener) -> None:
        self.listeners.remove(listener)

    def ping(self, remote_id: str, timeout: float) -> Deferred:
        d: Deferred = Deferred()
        self.pings.append((remote_id, timeout, d))
        return d

    def tell(self, peer: str, what: str) -> None:
        for listener in list(self.listeners):
            listener(peer, what)

    def answer(self, error: Exception | None = None) -> None:
        _peer, _timeout, d = self.pings.pop(0)
        if error is None:
            d.callback("Ack")
        else:
            d.errback(error)


class OnlineStatusTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = clock_at(START)
        self.gateway = FakeGateway()
        self.online = OnlineStatus(self.clock, self.gateway, online_window=300.0, max_peers=3)

    def test_a_stranger_is_unknown(self) -> None:
        status = self.online.status(BOB)
        self.assertEqual((status["state"], status["online"], status["last_seen"]), (UNKNOWN, False, None))
        self.assertEqual(status["idurl"], "http://127.0.0.1:8084/bob.xml")

    def test_idurl_is_accepted_and_bad_ids_refused(self) -> None:
        self.assertEqual(self.online.status("http://127.0.0.1:8084/bob.xml")["global_id"], BOB)
        self.assertRaises(BadRequest, self.online.status, "not an id")

    def test_traffic_makes_a_peer_connected_for_the_window(self) -> None:
        self.gateway.tell(BOB, "received")
        status = self.online.status(BOB)
        self.assertEqual((status["state"], status["online"]), (CONNECTED, True))
        self.clock.advance(301)
        status = self.online.status(BOB)
        self.assertEqual((status["state"], status["online"]), (CONNECTED, False))
        self.assertEqual(status["seconds_since_seen"], 301)

    def test_failures_make_a_peer_offline(self) -> None:
        self.gateway.tell(BOB, "received")
        self.gateway.tell(BOB, "timeout")
        self.assertEqual(self.online.status(BOB)["state"], OFFLINE)
        self.gateway.tell(CAROL, "unreachable")
        self.assertEqual(self.online.status(CAROL)["last_error"], "unreachable")

    def test_ping_answered(self) -> None:
        d = self.online.ping(BOB, 15.0, 2)
        self.assertEqual(self.online.status(BOB)["state"], PING)
        self.gateway.tell(BOB, "timeout")  # an older packet's timeout does not decide while pinging
        self.assertEqual(self.online.status(BOB)["state"], PING)
        self.clock.advance(0.25)
        self.gateway.tell(BOB, "received")
        self.gateway.answer()
        result = self.successResultOf(d)
        self.assertEqual((result["state"], result["online"], result["attempts"]), (CONNECTED, True, 1))
        self.assertEqual(result["round_trip"], 0.25)
        self.assertEqual(self.gateway.pings, [])

    def test_ping_retries_then_succeeds(self) -> None:
        d = self.online.ping(BOB, 5.0, 2)
        self.gateway.answer(Timeout("no answer"))
        self.gateway.answer(Unavailable("refused"))
        self.gateway.answer()
        self.assertEqual(self.successResultOf(d)["attempts"], 3)

    def test_ping_without_ack_is_a_timeout_and_offline(self) -> None:
        d = self.online.ping(BOB, 5.0, 1)
        self.gateway.answer(Timeout("no answer"))
        self.gateway.answer(Timeout("no answer"))
        err = self.failureResultOf(d, Timeout).value
        self.assertIn("2 ping(s)", str(err))
        self.assertEqual(self.online.status(BOB)["state"], OFFLINE)

    def test_ping_of_an_unknown_user_is_not_found(self) -> None:
        d = self.online.ping(BOB, 5.0, 2)
        self.gateway.answer(NotFound("unknown user"))
        self.failureResultOf(d, NotFound)
        self.assertEqual(len(self.gateway.pings), 0)  # no retry: it cannot help

    def test_ping_refused_means_online_but_refused(self) -> None:
        d = self.online.ping(BOB, 5.0, 2)
        self.gateway.answer(PeerRefused("refused", "key mismatch"))
        self.failureResultOf(d, PeerRefused)
        self.assertEqual(self.online.status(BOB)["state"], CONNECTED)

    def test_ping_arguments_are_checked(self) -> None:
        self.assertRaises(BadRequest, self.online.ping, BOB, 0, 1)
        self.assertRaises(BadRequest, self.online.ping, BOB, 1.0, -1)
        self.assertRaises(BadRequest, self.online.ping, "bob", 1.0, 1)

    def test_check_answers_from_recent_traffic_without_a_ping(self) -> None:
        self.gateway.tell(BOB, "received")
        self.assertEqual(self.successResultOf(self.online.check(BOB, 5.0))["state"], CONNECTED)
        self.assertEqual(self.gateway.pings, [])

    def test_check_pings_a_stale_peer_and_answers_offline_without_error(self) -> None:
        self.gateway.tell(BOB, "received")
        self.clock.advance(400)
        d = self.online.check(BOB, 5.0)
        self.assertEqual(len(self.gateway.pings), 1)
        self.gateway.answer(Timeout("no answer"))
        self.assertEqual(self.successResultOf(d)["state"], OFFLINE)

    def test_recent_peers_most_recent_first_within_the_window(self) -> None:
        self.gateway.tell(BOB, "received")
        self.clock.advance(10)
        self.gateway.tell(CAROL, "received")
        self.assertEqual(self.online.recent_peers(5), [CAROL, BOB])
        self.clock.advance(295)
        self.assertEqual(self.online.recent_peers(5), [CAROL])

    def test_table_is_bounded(self) -> None:
        for i in range(5):
            self.gateway.tell(f"user{i}@127.0.0.1_8084", "received")
        self.assertEqual(sum(self.online.counts().values()), 3)

    def test_stop_detaches_from_the_gateway(self) -> None:
        self.online.stop()
        self.assertEqual(self.gateway.listeners, [])
