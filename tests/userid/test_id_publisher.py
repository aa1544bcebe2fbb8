"""Tests for bitnode.userid.id_publisher: server parsing and publish with background retry."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import BadRequest, Unavailable
from bitnode.userid.id_publisher import MAX_DELAY, Publisher, parse_server, parse_servers
from tests.userid.fakes import SERVER, FakeClient, FakeServers, make_identity, rsa_key


class ParseTests(unittest.TestCase):
    def test_parse_server(self) -> None:
        self.assertEqual(parse_server("ID.net:8084"), ("id.net", 8084))
        self.assertEqual(parse_server("http://id.net:8084/"), ("id.net", 8084))
        self.assertEqual(parse_server("id.net"), ("id.net", 80))
        for bad in ("", "id.net:0", "id.net:x", "a b:1", ":80", None):
            self.assertRaises(BadRequest, parse_server, bad)

    def test_parse_servers_drops_duplicates_and_keeps_order(self) -> None:
        self.assertEqual(parse_servers(["b.net:1", "a.net:2", "B.net:1"]), [("b.net", 1), ("a.net", 2)])


class PublisherTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.servers = FakeServers()
        self.client = FakeClient(self.servers)
        self.identity = make_identity("carol", rsa_key(0))
        self.serialised: list[str] = []
        self.publisher = Publisher(lambda: self.client, lambda: self.identity, self.serialise,
                                   self.clock.callLater)

    def serialise(self, fn):
        self.serialised.append("run")
        return fn()

    def test_success_records_the_revision(self) -> None:
        accepted = self.successResultOf(defer.ensureDeferred(self.publisher.publish(self.identity)))
        self.assertEqual(accepted, list(self.identity.sources))
        self.assertEqual(self.publisher.published_revision, 1)
        self.assertFalse(self.publisher.retry_pending)

    def test_failure_is_raised_and_retried_with_growing_pauses(self) -> None:
        self.servers.down.add(SERVER)
        self.failureResultOf(defer.ensureDeferred(self.publisher.publish(self.identity)), Unavailable)
        self.assertIn("cannot connect", self.publisher.last_error)
        delays = []
        for _ in range(7):
            call = self.clock.getDelayedCalls()[0]
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [30, 60, 120, 240, 480, MAX_DELAY, MAX_DELAY])
        self.assertEqual(len(self.serialised), 7, "each retry runs under the owner's lock")
        self.servers.down.clear()
        self.clock.advance(MAX_DELAY)
        self.assertEqual(self.publisher.last_error, "")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.servers.stored(self.identity.idurl), self.identity)

    def test_publish_or_retry_swallows_the_error(self) -> None:
        self.servers.down.add(SERVER)
        self.assertEqual(self.successResultOf(defer.ensureDeferred(self.publisher.publish_or_retry(self.identity))),
                         [])
        self.assertTrue(self.publisher.retry_pending)
        self.publisher.reset()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_does_nothing_once_the_identity_is_gone(self) -> None:
        self.servers.down.add(SERVER)
        self.successResultOf(defer.ensureDeferred(self.publisher.publish_or_retry(self.identity)))
        self.identity = None
        self.clock.advance(30)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.servers.posts), 1)
