"""Tests for bitnode.userid.id_client against a small twisted.web server on loopback."""

from __future__ import annotations

import functools
import json

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web import resource, server

from bitnode.crypt import keys
from bitnode.errors import BadRequest, Conflict, Forbidden, NotFound, Timeout, Unavailable
from bitnode.userid.id_client import IdentityClient
from bitnode.userid.identity import Identity, format_date

FIXED_DATE = format_date(1_700_000_000)


@functools.cache
def rsa_key(index: int = 0) -> keys.RsaPrivateKey:
    """A 2048-bit RSA key, generated once per process and index (tests only)."""
    return keys.generate_rsa(keys.MIN_RSA_BITS)


def make_identity(
    name: str,
    sources: list[str] | tuple[str, ...],
    key: keys.RsaPrivateKey | None = None,
    revision: int = 1,
    contacts: tuple[str, ...] = ("tcp://127.0.0.1:7001",),
) -> Identity:
    """A signed identity for tests."""
    key = key or rsa_key()
    unsigned = Identity(
        name=name,
        sources=tuple(sources),
        contacts=contacts,
        revision=revision,
        date=FIXED_DATE,
        public_key=key.public_key().to_pem().decode("ascii"),
    )
    return unsigned.sign(key)


class TrackingSite(server.Site):
    """A Site that remembers its open connections so a test can wait for them to close."""

    def __init__(self, root: resource.Resource):
        super().__init__(root)
        self.open_protocols: dict = {}
        self.closed_waiters: list[defer.Deferred] = []

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        site = self
        original_made, original_lost = proto.makeConnection, proto.connectionLost

        def make_connection(transport):
            site.open_protocols[proto] = transport
            original_made(transport)

        def connection_lost(reason):
            site.open_protocols.pop(proto, None)
            original_lost(reason)
            if not site.open_protocols:
                waiters, site.closed_waiters = site.closed_waiters, []
                for waiter in waiters:
                    waiter.callback(None)

        proto.makeConnection = make_connection
        proto.connectionLost = connection_lost
        return proto

    def all_closed(self) -> defer.Deferred:
        """Abort what is still open and fire once every connection is gone."""
        if not self.open_protocols:
            return defer.succeed(None)
        d = defer.Deferred()
        self.closed_waiters.append(d)
        for transport in list(self.open_protocols.values()):
            transport.abortConnection()
        return d


class FakeIdentityServer(resource.Resource):
    """Serves fixed answers per path and records what was asked."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.get_answers: dict[bytes, tuple[int, bytes]] = {}
        self.post_answers: dict[bytes, tuple[int, bytes]] = {}
        self.hang_paths: set[bytes] = set()
        self.hits: dict[bytes, int] = {}
        self.posted: dict[bytes, bytes] = {}
        self.arrivals: list[defer.Deferred] = []
        self.hanging: list[server.Request] = []

    def next_arrival(self) -> defer.Deferred:
        """Fires when the next request reaches the server."""
        d = defer.Deferred()
        self.arrivals.append(d)
        return d

    def render(self, request):
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        arrivals, self.arrivals = self.arrivals, []
        for waiter in arrivals:
            reactor.callLater(0, waiter.callback, path)
        if path in self.hang_paths:
            self.hanging.append(request)
            request.notifyFinish().addErrback(lambda _: None)
            return server.NOT_DONE_YET
        if request.method == b"POST":
            self.posted[path] = request.content.read()
            code, body = self.post_answers.get(path, (404, b'{"status": "ERROR", "errors": ["no"]}'))
        else:
            code, body = self.get_answers.get(path, (404, b"not found"))
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/xml")
        return body


class IdentityClientTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeIdentityServer()
        self.site = TrackingSite(self.fake)
        self.site.noisy = False
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.clients: list[IdentityClient] = []

    @defer.inlineCallbacks
    def tearDown(self):
        for client in self.clients:
            yield client.close()
        yield self.site.all_closed()
        yield self.port.stopListening()

    def client(self, clock=None, **kwargs) -> IdentityClient:
        client = IdentityClient(reactor, clock or reactor, **kwargs)
        self.clients.append(client)
        return client

    def url(self, name: str) -> str:
        return f"{self.base}/{name}.xml"

    def serve(self, name: str, code: int, body: bytes) -> None:
        self.fake.get_answers[f"/{name}.xml".encode()] = (code, body)

    # -- fetch ----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_fetch_returns_verified_identity(self):
        alice = make_identity("alice", [self.url("alice")])
        self.serve("alice", 200, alice.to_xml())
        got = yield self.client().fetch(self.url("alice"))
        self.assertEqual(got, alice)
        self.assertTrue(got.verify())

    @defer.inlineCallbacks
    def test_fetch_accepts_document_served_from_its_secondary_source(self):
        alice = make_identity("alice", ["http://id.example:8084/alice.xml", self.url("alice")])
        self.serve("alice", 200, alice.to_xml())
        got = yield self.client().fetch(self.url("alice"))
        self.assertEqual(got.idurl, "http://id.example:8084/alice.xml")

    @defer.inlineCallbacks
    def test_fetch_normalises_the_idurl(self):
        alice = make_identity("alice", [self.url("alice")])
        self.serve("alice", 200, alice.to_xml())
        got = yield self.client().fetch(f"HTTP://127.0.0.1:{self.port.getHost().port}/alice.xml")
        self.assertEqual(got, alice)

    @defer.inlineCallbacks
    def test_fetch_404_is_not_found(self):
        yield self.assertFailure(self.client().fetch(self.url("nobody")), NotFound)

    @defer.inlineCallbacks
    def test_fetch_500_is_unavailable_with_code_and_is_retried(self):
        self.serve("broken", 500, b"oops")
        err = yield self.assertFailure(self.client(retries=2).fetch(self.url("broken")), Unavailable)
        self.assertIn("500", str(err))
        self.assertEqual(self.fake.hits[b"/broken.xml"], 3)

    @defer.inlineCallbacks
    def test_final_errors_are_not_retried(self):
        self.serve("garbage", 200, b"this is not xml")
        yield self.assertFailure(self.client(retries=3).fetch(self.url("garbage")), BadRequest)
        self.assertEqual(self.fake.hits[b"/garbage.xml"], 1)
        yield self.assertFailure(self.client(retries=3).fetch(self.url("gone")), NotFound)
        self.assertEqual(self.fake.hits[b"/gone.xml"], 1)

    @defer.inlineCallbacks
    def test_fetch_rejects_garbage(self):
        self.serve("garbage", 200, b"\x00\xff<identity>")
        yield self.assertFailure(self.client().fetch(self.url("garbage")), BadRequest)

    @defer.inlineCallbacks
    def test_fetch_rejects_bad_signature(self):
        alice = make_identity("alice", [self.url("alice")])
        forged = alice.to_xml().replace(b"tcp://127.0.0.1:7001", b"tcp://127.0.0.1:6666")
        self.serve("alice", 200, forged)
        err = yield self.assertFailure(self.client().fetch(self.url("alice")), BadRequest)
        self.assertIn("signature", str(err))

    @defer.inlineCallbacks
    def test_fetch_rejects_another_users_document(self):
        bob = make_identity("bob", [self.url("bob")])
        self.serve("alice", 200, bob.to_xml())
        err = yield self.assertFailure(self.client().fetch(self.url("alice")), BadRequest)
        self.assertIn("not the one asked for", str(err))

    @defer.inlineCallbacks
    def test_fetch_rejects_huge_body_with_length(self):
        self.serve("huge", 200, b"<" * 300_000)
        err = yield self.assertFailure(self.client(max_size=65536).fetch(self.url("huge")), BadRequest)
        self.assertIn("larger", str(err))

    @defer.inlineCallbacks
    def test_fetch_rejects_huge_chunked_body(self):
        class Chunked(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                # No content-length: the client only learns the size by reading.
                for _ in range(50):
                    request.write(b"x" * 10_000)
                request.finish()
                return server.NOT_DONE_YET

        self.fake.hang_paths.clear()
        site = TrackingSite(Chunked())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(site.all_closed)
        url = f"http://127.0.0.1:{port.getHost().port}/huge.xml"
        err = yield self.assertFailure(self.client(max_size=4096).fetch(url), BadRequest)
        self.assertIn("larger", str(err))

    @defer.inlineCallbacks
    def test_fetch_invalid_idurl_fails_the_deferred(self):
        yield self.assertFailure(self.client().fetch("ftp://x/alice.xml"), BadRequest)

    @defer.inlineCallbacks
    def test_connection_refused_is_unavailable(self):
        spare = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        dead_port = spare.getHost().port
        yield spare.stopListening()
        d = self.client(retries=1).fetch(f"http://127.0.0.1:{dead_port}/alice.xml")
        err = yield self.assertFailure(d, Unavailable)
        self.assertNotIsInstance(err, Timeout)

    @defer.inlineCallbacks
    def test_hanging_server_times_out_on_the_injected_clock(self):
        clock = Clock()
        self.fake.hang_paths.add(b"/slow.xml")
        client = self.client(clock=clock, timeout=5.0, retries=1)
        arrived = self.fake.next_arrival()
        d = client.fetch(self.url("slow"))
        yield arrived
        self.assertNoResult(d)
        arrived = self.fake.next_arrival()
        clock.advance(5.0)
        yield arrived  # the retry
        self.assertNoResult(d)
        clock.advance(5.0)
        err = yield self.assertFailure(d, Timeout)
        self.assertIn("5 s", str(err))
        self.assertEqual(self.fake.hits[b"/slow.xml"], 2)

    @defer.inlineCallbacks
    def test_hanging_server_times_out_on_the_real_reactor(self):
        self.fake.hang_paths.add(b"/slow.xml")
        started = reactor.seconds()
        yield self.assertFailure(self.client(timeout=0.1, retries=0).fetch(self.url("slow")), Timeout)
        self.assertLess(reactor.seconds() - started, 1.0)

    @defer.inlineCallbacks
    def test_slow_body_times_out(self):
        class Dribble(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                request.write(b"<identity>")  # headers and a first chunk, then nothing more
                request.notifyFinish().addErrback(lambda _: None)
                return server.NOT_DONE_YET

        site = TrackingSite(Dribble())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(site.all_closed)
        clock = Clock()
        client = self.client(clock=clock, timeout=3.0, retries=0)
        d = client.fetch(f"http://127.0.0.1:{port.getHost().port}/alice.xml")
        # Let the headers and the first chunk arrive before the deadline passes.
        for _ in range(20):
            yield deferLater(0.005)
        self.assertNoResult(d)
        clock.advance(3.0)
        yield self.assertFailure(d, Timeout)

    @defer.inlineCallbacks
    def test_close_cancels_requests_in_flight(self):
        self.fake.hang_paths.add(b"/slow.xml")
        client = IdentityClient(reactor, Clock())
        arrived = self.fake.next_arrival()
        d = client.fetch(self.url("slow"))
        yield arrived
        yield client.close()
        yield self.assertFailure(d, Unavailable)
        yield self.assertFailure(client.fetch(self.url("slow")), Unavailable)

    # -- fetch_any ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_fetch_any_falls_back_to_the_next_source(self):
        alice = make_identity("alice", ["http://127.0.0.1:1/alice.xml", self.url("alice")])
        self.serve("alice", 200, alice.to_xml())
        got = yield self.client(retries=0).fetch_any(["http://127.0.0.1:1/alice.xml", self.url("alice")])
        self.assertEqual(got, alice)

    @defer.inlineCallbacks
    def test_fetch_any_stops_at_the_first_success(self):
        alice = make_identity("alice", [self.url("alice")])
        self.serve("alice", 200, alice.to_xml())
        got = yield self.client().fetch_any([self.url("alice"), self.url("never")])
        self.assertEqual(got, alice)
        self.assertNotIn(b"/never.xml", self.fake.hits)

    @defer.inlineCallbacks
    def test_fetch_any_fails_with_the_last_error(self):
        self.serve("broken", 500, b"")
        d = self.client(retries=0).fetch_any([self.url("broken"), self.url("missing")])
        yield self.assertFailure(d, NotFound)
        yield self.assertFailure(self.client().fetch_any([]), BadRequest)

    # -- publish --------------------------------------------------------------

    def refuse(self, name: str, code: int, message: str) -> None:
        body = json.dumps({"status": "ERROR", "errors": [message]}).encode()
        self.fake.post_answers[f"/{name}.xml".encode()] = (code, body)

    def accept(self, name: str) -> None:
        self.fake.post_answers[f"/{name}.xml".encode()] = (200, b'{"status": "OK", "result": {}}')

    def second_server(self) -> tuple[FakeIdentityServer, str]:
        fake = FakeIdentityServer()
        site = TrackingSite(fake)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(site.all_closed)
        return fake, f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def test_publish_posts_the_document_to_every_source(self):
        other, other_base = self.second_server()
        alice = make_identity("alice", [self.url("alice"), f"{other_base}/alice.xml"])
        self.accept("alice")
        other.post_answers[b"/alice.xml"] = (200, b"{}")
        accepted = yield self.client().publish(alice)
        self.assertEqual(accepted, list(alice.sources))
        self.assertEqual(self.fake.posted[b"/alice.xml"], alice.to_xml())
        self.assertEqual(other.posted[b"/alice.xml"], alice.to_xml())

    @defer.inlineCallbacks
    def test_publish_reports_the_sources_that_accepted(self):
        alice = make_identity("alice", [self.url("alice"), "http://127.0.0.1:1/alice.xml"])
        self.accept("alice")
        accepted = yield self.client(retries=0).publish(alice)
        self.assertEqual(accepted, [self.url("alice")])

    @defer.inlineCallbacks
    def test_publish_conflict_wins_over_other_refusals(self):
        other, other_base = self.second_server()
        alice = make_identity("alice", [f"{other_base}/alice.xml", self.url("alice"), "http://127.0.0.1:1/alice.xml"])
        other.post_answers[b"/alice.xml"] = (403, b'{"status": "ERROR", "errors": ["not here"]}')
        self.refuse("alice", 409, "name alice is taken by another key")
        err = yield self.assertFailure(self.client(retries=0).publish(alice), Conflict)
        self.assertIn("taken by another key", str(err))

    @defer.inlineCallbacks
    def test_publish_forbidden_and_bad_request(self):
        alice = make_identity("alice", [self.url("alice")])
        self.refuse("alice", 403, "no source points at this server")
        err = yield self.assertFailure(self.client().publish(alice), Forbidden)
        self.assertIn("no source points", str(err))
        self.refuse("alice", 413, "too big")
        yield self.assertFailure(self.client().publish(alice), BadRequest)
        self.assertEqual(self.fake.hits[b"/alice.xml"], 2)

    @defer.inlineCallbacks
    def test_publish_all_down_is_unavailable(self):
        alice = make_identity("alice", ["http://127.0.0.1:1/alice.xml"])
        yield self.assertFailure(self.client(retries=0).publish(alice), Unavailable)

    @defer.inlineCallbacks
    def test_publish_refuses_unsigned_identity(self):
        alice = make_identity("alice", [self.url("alice")])
        unsigned = alice.updated(now=1_700_000_100)
        yield self.assertFailure(self.client().publish(unsigned), BadRequest)
        self.assertEqual(self.fake.hits, {})


def deferLater(seconds: float) -> defer.Deferred:
    """Let the real reactor run for a moment (socket I/O the test waits on)."""
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
