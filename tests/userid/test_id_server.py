"""Tests for bitnode.userid.id_server: the identity server service inside a real Node on loopback."""

from __future__ import annotations

import io
import json
import os

from Crypto.PublicKey import RSA
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
)
from twisted.web.iweb import UNKNOWN_LENGTH

from bitnode.errors import BadRequest, Conflict
from bitnode.userid.id_client import IdentityClient
from bitnode.userid.id_server import STORE_FOLDER, IdentityServerService, IdentityStore
from bitnode.userid.identity import Identity
from tests.interface.support import start_node
from tests.userid import test_id_client as helpers

ENABLED = {"services/identity-server/enabled": True, "services/identity-server/web-port": 0}

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE identity [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<identity><version>1</version><name>&lol9;</name></identity>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE identity [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<identity><version>1</version><name>&xxe;</name></identity>
"""


class Raw:
    """A plain HTTP client: status code, headers and body of one request."""

    def __init__(self, case):
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._http = HTTPClient(Agent(reactor, pool=pool))
        case.addCleanup(pool.closeCachedConnections)

    @defer.inlineCallbacks
    def request(self, method, url, body=None, headers=None):
        response = yield self._http.request(method, url, data=body, headers=headers or {},
                                            allow_redirects=False)
        content = yield response.content()
        return response.code, response.headers, content


class IdentityServerTest(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.basedir = self.mktemp()
        yield self.start()
        self.raw = Raw(self)

    @defer.inlineCallbacks
    def start(self, overrides=None):
        settings = dict(ENABLED)
        settings.update(overrides or {})
        self.node = yield start_node(self, service_classes=[IdentityServerService], overrides=settings,
                                     basedir=self.basedir)
        self.assertTrue(self.node.service_driver.is_on("service_identity_server"))
        self.service = self.node.service_driver.get("service_identity_server")
        self.base = f"http://127.0.0.1:{self.service.port}"

    def client(self) -> IdentityClient:
        client = IdentityClient(reactor, reactor, timeout=2.0, retries=0)
        self.addCleanup(client.close)
        return client

    def identity(self, name="alice", key=None, revision=1, sources=None, **kwargs) -> Identity:
        return helpers.make_identity(name, sources or [self.service.idurl(name)], key=key,
                                     revision=revision, **kwargs)

    def post(self, name, body, headers=None):
        return self.raw.request("POST", f"{self.base}/{name}.xml", body=body, headers=headers)

    @defer.inlineCallbacks
    def assert_refused(self, name, body, code, text=""):
        got, _, content = yield self.post(name, body)
        self.assertEqual(got, code, content)
        envelope = json.loads(content)
        self.assertEqual(envelope["status"], "ERROR")
        self.assertIn(text, " ".join(envelope["errors"]))
        return envelope

    # -- service --------------------------------------------------------------

    def test_service_is_off_by_default(self):
        self.assertFalse(IdentityServerService.enabled_by_default)
        self.assertEqual(self.node.settings.get("services/identity-server/max-size"), 65536)

    def test_listens_on_loopback_only(self):
        self.assertEqual(self.service._port.getHost().host, "127.0.0.1")

    @defer.inlineCallbacks
    def test_status_reports_port_and_count(self):
        info = self.node.service_driver.info("service_identity_server")
        self.assertEqual(info["status"]["port"], self.service.port)
        self.assertEqual(info["status"]["identities"], 0)
        yield self.client().publish(self.identity())
        self.assertEqual(self.service.status()["identities"], 1)

    # -- register and serve ---------------------------------------------------

    @defer.inlineCallbacks
    def test_register_then_get(self):
        alice = self.identity()
        code, headers, content = yield self.post("alice", alice.to_xml())
        self.assertEqual(code, 200, content)
        result = json.loads(content)["result"]
        self.assertEqual(result, {"name": "alice", "idurl": alice.idurl, "revision": 1, "outcome": "created"})
        stored = os.path.join(self.basedir, STORE_FOLDER, "alice.xml")
        self.assertEqual(Identity.from_xml(open(stored, "rb").read()), alice)
        code, headers, content = yield self.raw.request("GET", alice.idurl)
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/xml; charset=utf-8"])
        self.assertEqual(Identity.from_xml(content), alice)

    @defer.inlineCallbacks
    def test_client_round_trip(self):
        alice = self.identity()
        accepted = yield self.client().publish(alice)
        self.assertEqual(accepted, [alice.idurl])
        fetched = yield self.client().fetch(alice.idurl)
        self.assertEqual(fetched, alice)

    @defer.inlineCallbacks
    def test_index_lists_names_only_when_the_setting_asks(self):
        yield self.client().publish(self.identity("bob"))
        yield self.client().publish(self.identity("alice"))
        code, _, content = yield self.raw.request("GET", self.base + "/")
        self.assertEqual(code, 404)  # listed every name to anyone before
        self.assertNotIn(b"alice", content)
        self.assertEqual(self.service.status()["refused"]["listing_refused"], 1)
        self.node.settings.set("services/identity-server/list-names", True)
        code, _, content = yield self.raw.request("GET", self.base + "/")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(content)["result"], {"names": ["alice", "bob"], "count": 2})

    # -- limits -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_new_names_per_source_address_are_rate_limited(self):
        self.node.settings.set("services/identity-server/registrations-per-hour", 2)
        for name in ("alice", "bob"):
            code, _, _ = yield self.post(name, self.identity(name).to_xml())
            self.assertEqual(code, 200)
        code, headers, content = yield self.post("carol", self.identity("carol").to_xml())
        self.assertEqual(code, 429, content)  # unlimited before
        self.assertGreater(float(headers.getRawHeaders(b"retry-after")[0]), 0)
        self.assertIsNone(self.service.store.get("carol"))
        # updating a name already held is not a registration
        code, _, _ = yield self.post("alice", self.identity("alice", revision=2).to_xml())
        self.assertEqual(code, 200)
        self.assertEqual(self.service.status()["refused"]["registrations_rate_limited"], 1)

    @defer.inlineCallbacks
    def test_posts_per_source_address_are_rate_limited(self):
        self.node.settings.set("services/identity-server/posts-per-minute", 3)
        for _ in range(3):
            yield self.post("alice", b"<garbage/>")
        yield self.assert_refused("alice", self.identity().to_xml(), 429, "slow down")
        self.assertEqual(self.service.status()["refused"]["posts_rate_limited"], 1)

    @defer.inlineCallbacks
    def test_a_full_server_refuses_new_names_but_takes_updates(self):
        self.node.settings.set("services/identity-server/max-identities", 1)
        yield self.client().publish(self.identity("alice"))
        yield self.assert_refused("bob", self.identity("bob").to_xml(), 507)
        code, _, _ = yield self.post("alice", self.identity("alice", revision=2).to_xml())
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_identity_with_a_1024_bit_key_is_refused(self):
        identity = self.identity()
        # An identity object cannot even hold such a key: swap it into the document's text.
        current = identity.public_key.encode("ascii")
        old = RSA.generate(1024).public_key().export_key(format="PEM")
        document = identity.to_xml()
        self.assertIn(current, document)
        yield self.assert_refused("alice", document.replace(current, old), 400, "1024")
        self.assertEqual(len(self.service.store), 0)

    @defer.inlineCallbacks
    def test_get_unknown_and_bad_paths_are_404(self):
        for path in ("/nobody.xml", "/alice", "/Alice.xml", "/a/b.xml", "/%2e%2e/etc/passwd", "/.xml"):
            code, _, content = yield self.raw.request("GET", self.base + path)
            self.assertEqual(code, 404, path)
            self.assertEqual(json.loads(content)["status"], "ERROR")

    @defer.inlineCallbacks
    def test_head_answers_without_body(self):
        yield self.client().publish(self.identity())
        code, _, content = yield self.raw.request("HEAD", self.service.idurl("alice"))
        self.assertEqual((code, content), (200, b""))

    @defer.inlineCallbacks
    def test_other_methods_are_405(self):
        for method in ("PUT", "DELETE", "PATCH"):
            code, headers, _ = yield self.raw.request(method, self.service.idurl("alice"), body=b"x")
            self.assertEqual(code, 405, method)
            self.assertEqual(headers.getRawHeaders(b"allow"), [b"GET, HEAD, POST"])
        code, _, _ = yield self.raw.request("POST", self.base + "/", body=b"x")
        self.assertEqual(code, 405)

    # -- updates and ownership ----------------------------------------------------

    @defer.inlineCallbacks
    def test_update_with_higher_revision(self):
        yield self.client().publish(self.identity())
        newer = self.identity(revision=2, contacts=("tcp://127.0.0.1:7002",))
        code, _, content = yield self.post("alice", newer.to_xml())
        self.assertEqual(code, 200, content)
        self.assertEqual(json.loads(content)["result"]["outcome"], "updated")
        fetched = yield self.client().fetch(newer.idurl)
        self.assertEqual(fetched.contacts, ("tcp://127.0.0.1:7002",))

    @defer.inlineCallbacks
    def test_lower_revision_is_409(self):
        yield self.client().publish(self.identity(revision=5))
        yield self.assert_refused("alice", self.identity(revision=4).to_xml(), 409, "not newer")
        fetched = yield self.client().fetch(self.service.idurl("alice"))
        self.assertEqual(fetched.revision, 5)

    @defer.inlineCallbacks
    def test_same_revision_same_content_is_idempotent(self):
        alice = self.identity()
        yield self.client().publish(alice)
        # Signing again gives a different (randomised PSS) signature over the same content.
        again = alice.sign(helpers.rsa_key())
        self.assertNotEqual(again.signature, alice.signature)
        code, _, content = yield self.post("alice", again.to_xml())
        self.assertEqual(code, 200, content)
        self.assertEqual(json.loads(content)["result"]["outcome"], "unchanged")

    @defer.inlineCallbacks
    def test_same_revision_other_content_is_409(self):
        yield self.client().publish(self.identity())
        other = self.identity(contacts=("tcp://127.0.0.1:7009",))
        yield self.assert_refused("alice", other.to_xml(), 409)

    @defer.inlineCallbacks
    def test_name_belongs_to_the_first_key(self):
        yield self.client().publish(self.identity())
        squatter = self.identity(key=helpers.rsa_key(1), revision=99)
        yield self.assert_refused("alice", squatter.to_xml(), 409, "another key")
        err = yield self.assertFailure(self.client().publish(squatter), Conflict)
        self.assertIn("another key", str(err))
        fetched = yield self.client().fetch(self.service.idurl("alice"))
        self.assertEqual(fetched.fingerprint(), helpers.rsa_key().fingerprint())

    # -- refusals -----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_source_must_point_here(self):
        elsewhere = self.identity(sources=[f"http://127.0.0.1:{self.service.port + 1}/alice.xml"])
        yield self.assert_refused("alice", elsewhere.to_xml(), 403, "sources")
        other_host = self.identity(sources=[f"http://id.example:{self.service.port}/alice.xml"])
        yield self.assert_refused("alice", other_host.to_xml(), 403)
        code, _, _ = yield self.raw.request("GET", self.service.idurl("alice"))
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_secondary_source_pointing_here_is_enough(self):
        alice = self.identity(sources=["http://id.example/alice.xml", self.service.idurl("alice")])
        code, _, content = yield self.post("alice", alice.to_xml())
        self.assertEqual(code, 200, content)
        self.assertEqual(json.loads(content)["result"]["idurl"], self.service.idurl("alice"))

    @defer.inlineCallbacks
    def test_name_must_match_the_path(self):
        yield self.assert_refused("bob", self.identity("alice").to_xml(), 400, "'alice'")

    @defer.inlineCallbacks
    def test_garbage_is_400(self):
        for body in (b"", b"garbage", b"\xff\xfe<identity/>", b"<identity><name>alice</name></identity>",
                     b"<identity>" * 1000):
            yield self.assert_refused("alice", body, 400)

    @defer.inlineCallbacks
    def test_bad_signature_is_400(self):
        forged = self.identity().to_xml().replace(b"tcp://127.0.0.1:7001", b"tcp://127.0.0.1:6666")
        yield self.assert_refused("alice", forged, 400, "signature")

    @defer.inlineCallbacks
    def test_unsigned_is_400(self):
        unsigned = self.identity().updated(now=1_700_000_100)
        yield self.assert_refused("alice", unsigned.to_xml(), 400, "signature")

    @defer.inlineCallbacks
    def test_entity_attacks_are_400(self):
        # The parser refuses any DTD before expat sees it, so nothing is expanded or fetched.
        self.assertRaises(BadRequest, Identity.from_xml, BILLION_LAUGHS)
        yield self.assert_refused("alice", BILLION_LAUGHS, 400, "DOCTYPE")
        yield self.assert_refused("alice", EXTERNAL_ENTITY, 400, "DOCTYPE")
        self.assertEqual(len(self.service.store), 0)

    @defer.inlineCallbacks
    def test_oversize_body_is_413(self):
        self.node.settings.set("services/identity-server/max-size", 2048)
        body = self.identity().to_xml() + b" " * 4096
        yield self.assert_refused("alice", body, 413, "2048")
        # At the limit it is fine: the same document without the padding.
        code, _, _ = yield self.post("alice", self.identity().to_xml())
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_oversize_chunked_body_is_413(self):
        self.node.settings.set("services/identity-server/max-size", 2048)

        producer = FileBodyProducer(io.BytesIO(b"<identity>" + b" " * 3000))
        producer.length = UNKNOWN_LENGTH  # sent chunked: the server learns the size only by reading
        yield self.assert_refused("alice", producer, 413)

    @defer.inlineCallbacks
    def test_enormous_body_is_refused_at_the_headers_and_not_waited_for(self):
        self.node.settings.set("services/identity-server/max-size", 1024)
        # 64 KiB announced against a 1 KiB limit: answered 413 at the headers and the connection closed at
        # once (the client may see the answer, or only the closed connection while it still sends).
        try:
            code, _, _ = yield self.post("alice", b" " * (1024 * 64))
        except (ResponseFailed, RequestTransmissionFailed):
            code = 413
        self.assertEqual(code, 413)
        self.assertEqual(len(self.service.store), 0)
        self.assertEqual(self.service.status()["refused"]["body_too_large"], 1)

    # -- persistence --------------------------------------------------------------

    @defer.inlineCallbacks
    def test_identities_survive_a_restart(self):
        alice = self.identity()
        yield self.client().publish(alice)
        yield self.node.stopService()
        yield self.start()
        self.assertEqual(self.service.status()["identities"], 1)
        code, _, content = yield self.raw.request("GET", f"{self.base}/alice.xml")
        self.assertEqual(code, 200)
        self.assertEqual(Identity.from_xml(content), alice)
        # The name still belongs to the first key after the restart.
        squatter = self.identity(key=helpers.rsa_key(1), revision=2)
        yield self.assert_refused("alice", squatter.to_xml(), 409, "another key")

    @defer.inlineCallbacks
    def test_stop_closes_open_connections(self):
        from twisted.internet.protocol import ClientFactory, Protocol

        connected = defer.Deferred()
        lost = defer.Deferred()

        class Idle(Protocol):
            def connectionMade(self):
                connected.callback(None)

            def connectionLost(self, reason):
                lost.callback(None)

        factory = ClientFactory.forProtocol(Idle)
        reactor.connectTCP("127.0.0.1", self.service.port, factory)
        yield connected
        yield self.node.service_driver.stop("service_identity_server")
        yield lost
        self.assertIsNone(self.service.port)


class IdentityStoreTest(unittest.TestCase):
    def test_load_skips_bad_files(self):
        folder = self.mktemp()
        os.makedirs(folder)
        alice = helpers.make_identity("alice", ["http://127.0.0.1:8084/alice.xml"])
        bob = helpers.make_identity("bob", ["http://127.0.0.1:8084/bob.xml"])
        with open(os.path.join(folder, "alice.xml"), "wb") as handle:
            handle.write(alice.to_xml())
        with open(os.path.join(folder, "carol.xml"), "wb") as handle:
            handle.write(bob.to_xml())  # a document stored under the wrong name
        with open(os.path.join(folder, "dave.xml"), "wb") as handle:
            handle.write(b"garbage")
        with open(os.path.join(folder, "notes.txt"), "wb") as handle:
            handle.write(b"ignored")
        store = IdentityStore(folder)
        store.load()
        self.assertEqual(store.names(), ["alice"])
        self.assertEqual(len(store.load_errors), 2)

    def test_accept_rules(self):
        store = IdentityStore(self.mktemp())
        store.load()
        alice = helpers.make_identity("alice", ["http://127.0.0.1:8084/alice.xml"])
        self.assertEqual(store.accept(alice), "created")
        self.assertEqual(store.accept(alice), "unchanged")
        newer = helpers.make_identity("alice", ["http://127.0.0.1:8084/alice.xml"], revision=2)
        self.assertEqual(store.accept(newer), "updated")
        self.assertRaises(Conflict, store.accept, alice)
        other = helpers.make_identity("alice", ["http://127.0.0.1:8084/alice.xml"], key=helpers.rsa_key(1),
                                      revision=3)
        self.assertRaises(Conflict, store.accept, other)
        reloaded = IdentityStore(store.directory)
        reloaded.load()
        self.assertEqual(reloaded.get("alice"), newer)
