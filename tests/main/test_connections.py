"""Tests for bitnode.main.connections: knowing and closing a server's open connections."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.resource import Resource

from bitnode.main.connections import ConnectionSet, TrackedProtocol, TrackingSite
from tests.interface.support import connect_idle, wait_until

WAIT = 2.0


class FakeTransport:
    """Records how it was asked to close."""

    def __init__(self):
        self.calls: list[str] = []

    def loseConnection(self):
        self.calls.append("lose")

    def abortConnection(self):
        self.calls.append("abort")


class Plain:
    def __init__(self):
        self.transport = FakeTransport()


class Polite(Plain):
    def __init__(self):
        super().__init__()
        self.asked = 0

    def close_for_shutdown(self):
        self.asked += 1


class ConnectionSetTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.open = ConnectionSet()

    def test_nothing_open_fires_at_once(self) -> None:
        self.successResultOf(self.open.close_all(self.clock, grace=2.0))
        self.successResultOf(self.open.close_all())

    def test_without_grace_every_connection_is_aborted(self) -> None:
        a, b = Plain(), Polite()
        self.open.opened(a)
        self.open.opened(b)
        d = self.open.close_all()
        self.assertEqual((a.transport.calls, b.transport.calls, b.asked), (["abort"], ["abort"], 0))
        self.open.closed(a)
        self.assertNoResult(d)
        self.open.closed(b)
        self.successResultOf(d)
        self.assertEqual(len(self.open), 0)

    def test_with_grace_connections_are_closed_politely_then_aborted(self) -> None:
        plain, polite = Plain(), Polite()
        self.open.opened(plain)
        self.open.opened(polite)
        d = self.open.close_all(self.clock, grace=2.0)
        self.assertEqual((plain.transport.calls, polite.transport.calls, polite.asked), (["lose"], [], 1))
        self.open.closed(plain)
        self.clock.advance(2.0)
        self.assertEqual(polite.transport.calls, ["abort"])
        self.assertNoResult(d)
        self.open.closed(polite)
        self.successResultOf(d)

    def test_abort_timer_is_cancelled_when_all_close_in_time(self) -> None:
        plain = Plain()
        self.open.opened(plain)
        d = self.open.close_all(self.clock, grace=2.0)
        self.open.closed(plain)
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(plain.transport.calls, ["lose"])

    def test_iterating_is_safe_while_connections_go(self) -> None:
        items = [Plain() for _ in range(3)]
        for item in items:
            self.open.opened(item)
        for item in self.open:
            self.open.closed(item)
        self.assertEqual(len(self.open), 0)


class _Echo(TrackedProtocol, Protocol):
    def __init__(self):
        self.lost = False

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost = True


class TrackedProtocolTests(unittest.TestCase):
    def test_registered_while_connected(self) -> None:
        factory = Factory.forProtocol(_Echo)
        factory.connections = ConnectionSet()
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertEqual(list(factory.connections), [protocol])
        protocol.connectionLost(None)
        self.assertTrue(protocol.lost)
        self.assertEqual(len(factory.connections), 0)


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class TrackingSiteTests(unittest.TestCase):
    """A real Site on loopback: a connection is known while open and closed by close_all."""

    @defer.inlineCallbacks
    def test_site_knows_and_closes_its_connections(self):
        site = TrackingSite(_Hello())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield connect_idle(port.getHost().port)
        # the server side accepts a moment after the client connected
        yield wait_until(lambda: len(site.connections), "the server to accept")
        self.assertEqual(len(site.connections), 1)
        yield site.connections.close_all(reactor, grace=1.0)
        yield client.lost.addTimeout(WAIT, reactor)
        self.assertEqual(len(site.connections), 0)
