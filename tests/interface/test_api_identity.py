"""Tests for bitnode.interface.api_identity: key_* and identity_* through the dispatcher.

Nodes are real (real thread pool and API listeners on loopback port 0); the
identity servers are the in-memory fakes of tests/userid/fakes.py, except in
:class:`RealIdentityServerTests`, which runs the real identity server service.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from bitnode.app import api_server
from bitnode.userid.id_service import IdentityService
from tests.interface.support import OwnNodeCalls, start_id_server, start_node
from tests.userid.fakes import SERVER, FakeClient, FakeServers, file_mode, make_identity, rsa_key

ALICE = "alice@id.example.net_8084"
ALICE_IDURL = "http://id.example.net:8084/alice.xml"
MASTER = "master$" + ALICE
SETTINGS = {"personal/private-key-size": 2048, "personal/identity-servers": [SERVER]}


def service_with(servers: FakeServers) -> type[IdentityService]:
    """service_identity whose client talks to ``servers``."""

    class FakeNetworkIdentityService(IdentityService):
        def make_client(self):
            return FakeClient(servers)

    return FakeNetworkIdentityService


class ApiTestBase(OwnNodeCalls, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.servers = FakeServers()
        self.node = yield self.start(self.mktemp())
        self.logged: list[str] = []

        def observe(event):
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += failure.getTraceback()
            self.logged.append(text)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def start(self, basedir):
        return start_node(self, service_classes=[service_with(self.servers)], overrides=SETTINGS, basedir=basedir)

    def create(self, node=None, **kwargs):
        kwargs.setdefault("username", "alice")
        return self.ok("identity_create", node, **kwargs)

    def assert_no_secret_logged(self):
        for text in self.logged:
            self.assertNotIn("PRIVATE KEY", text)


class KeyMethodsTests(ApiTestBase):
    @defer.inlineCallbacks
    def test_without_identity(self):
        self.assertEqual((yield self.ok("keys_list")), [])
        yield self.error(409, "key_get", key_id=MASTER)
        yield self.error(409, "key_create", key_alias="share1")
        yield self.error(404, "identity_get")
        self.assertEqual((yield self.ok("identity_cache_list")), [])

    @defer.inlineCallbacks
    def test_master_key_listed_private_part_only_when_asked(self):
        yield self.create()
        listed = yield self.ok("keys_list")
        self.assertEqual([key["key_id"] for key in listed], [MASTER])
        self.assertNotIn("private", listed[0])
        self.assertTrue(listed[0]["is_private"])
        self.assertIn("BEGIN PUBLIC KEY", listed[0]["public"])
        with_private = yield self.ok("keys_list", include_private=True)
        self.assertIn("BEGIN PRIVATE KEY", with_private[0]["private"])
        got = yield self.ok("key_get", key_id=MASTER)
        self.assertNotIn("private", got)
        self.assertEqual(got["size"], 2048)
        got = yield self.ok("key_get", key_id=MASTER, include_private="1")
        self.assertIn("BEGIN PRIVATE KEY", got["private"])
        self.assert_no_secret_logged()

    @defer.inlineCallbacks
    def test_create_label_erase(self):
        yield self.create()
        created = yield self.ok("key_create", key_alias="share1", key_size=2048, label="Cats")
        self.assertEqual(created["key_id"], "share1$" + ALICE)
        self.assertEqual(created["label"], "Cats")
        self.assertNotIn("private", created)
        other = yield self.ok("key_create", key_alias="abc", key_size="2048", include_private=True)
        self.assertIn("BEGIN PRIVATE KEY", other["private"])
        self.assertEqual((yield self.ok("key_label", key_id=created["key_id"], label="Dogs"))["label"], "Dogs")
        self.assertEqual((yield self.ok("key_get", key_id=created["key_id"]))["label"], "Dogs")
        listed = yield self.ok("keys_list")
        self.assertEqual([k["alias"] for k in listed], ["master", "abc", "share1"])
        listed = yield self.ok("keys_list", sort=True)
        self.assertEqual([k["alias"] for k in listed], ["abc", "master", "share1"])
        erased = yield self.ok("key_erase", key_id=created["key_id"])
        self.assertEqual(erased, {"key_id": created["key_id"], "erased": True})
        yield self.error(404, "key_get", key_id=created["key_id"])
        self.assert_no_secret_logged()

    @defer.inlineCallbacks
    def test_key_errors(self):
        yield self.create()
        yield self.error(404, "key_get", key_id="nothere$" + ALICE)
        yield self.error(400, "key_get", key_id="no-dollar-sign")
        yield self.error(400, "key_get")
        yield self.error(409, "key_erase", key_id=MASTER)
        yield self.error(404, "key_erase", key_id="nothere$" + ALICE)
        yield self.error(400, "key_create", key_alias="Bad Alias!", key_size=2048)
        yield self.error(400, "key_create", key_alias="master", key_size=2048)
        yield self.error(400, "key_create", key_alias="k1", key_size=1000)
        yield self.ok("key_create", key_alias="k1", key_size=2048)
        yield self.error(409, "key_create", key_alias="k1", key_size=2048)
        yield self.error(400, "key_label", key_id=MASTER, label="bad\x00label")
        yield self.error(404, "key_label", key_id="nothere$" + ALICE, label="x")

    @defer.inlineCallbacks
    def test_key_size_defaults_to_the_setting(self):
        yield self.create()
        created = yield self.ok("key_create", key_alias="k2")
        self.assertEqual(created["size"], 2048)


class IdentityMethodsTests(ApiTestBase):
    @defer.inlineCallbacks
    def test_create_and_get(self):
        created = yield self.create(join_network=True)
        self.assertEqual(created["global_id"], ALICE)
        self.assertEqual(created["idurl"], ALICE_IDURL)
        self.assertEqual(created["revision"], 1)
        got = yield self.ok("identity_get")
        self.assertEqual(got, created)
        with_xml = yield self.ok("identity_get", include_xml_source=True)
        self.assertIn("<name>alice</name>", with_xml["xml"])
        yield self.error(409, "identity_create", username="bob")
        events = [event.event_id for event in self.node.events.since(0)[0]]
        self.assertIn("my-identity-created", events)
        self.assertIn("network-join-requested", events)

    @defer.inlineCallbacks
    def test_create_errors(self):
        yield self.error(400, "identity_create", username="Not Valid")
        yield self.error(400, "identity_create", username="alice", preferred_servers=["no way"])
        self.servers.docs[ALICE_IDURL] = make_identity("alice", rsa_key(0)).to_xml()
        yield self.error(409, "identity_create", username="alice")
        self.servers.down.add(SERVER)
        yield self.error(503, "identity_create", username="bob")
        yield self.error(404, "identity_get")

    @defer.inlineCallbacks
    def test_backup_erase_recover_round_trip(self):
        created = yield self.create()
        master = yield self.ok("key_get", key_id=MASTER, include_private=True)
        path = os.path.abspath(self.mktemp())
        backup = yield self.ok("identity_backup", destination_filepath=path)
        self.assertEqual(backup["destination_filepath"], path)
        self.assertEqual(backup["global_id"], ALICE)
        self.assertEqual(file_mode(path), 0o600)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        self.assertTrue(text.startswith("# bitnode identity backup"))
        self.assertIn(ALICE_IDURL + "\n", text)
        yield self.error(409, "identity_backup", destination_filepath=path)
        yield self.error(400, "identity_backup", destination_filepath="relative/file.key")
        yield self.error(409, "identity_recover", private_key_source=path)
        erased = yield self.ok("identity_erase", erase_private_key=True)
        self.assertEqual(erased, {"erased": True, "global_id": ALICE, "private_key_erased": True})
        yield self.error(404, "identity_get")
        self.assertEqual((yield self.ok("keys_list")), [])
        yield self.error(404, "identity_erase")
        recovered = yield self.ok("identity_recover", private_key_source=path)
        self.assertEqual(recovered, created)
        again = yield self.ok("key_get", key_id=MASTER, include_private=True)
        self.assertEqual(again["private"], master["private"])
        self.assertEqual(again["fingerprint"], master["fingerprint"])
        self.assert_no_secret_logged()

    @defer.inlineCallbacks
    def test_recover_from_text_and_from_a_bare_pem(self):
        created = yield self.create()
        master = yield self.ok("key_get", key_id=MASTER, include_private=True)
        yield self.ok("identity_erase", erase_private_key=True)
        spec_style = ALICE_IDURL + "\n" + master["private"]
        recovered = yield self.ok("identity_recover", private_key_source=spec_style)
        self.assertEqual(recovered["global_id"], ALICE)
        self.assertEqual(recovered["fingerprint"], created["fingerprint"])
        self.assertEqual(recovered["revision"], 2, "no packet key in the source: a new one is published")
        yield self.ok("identity_erase", erase_private_key=True)
        bare = yield self.ok("identity_recover", private_key_source=master["private"], known_idurl=ALICE_IDURL)
        self.assertEqual(bare["revision"], 3)
        self.assert_no_secret_logged()

    @defer.inlineCallbacks
    def test_recover_errors(self):
        yield self.create()
        yield self.ok("identity_erase", erase_private_key=True)
        wrong = rsa_key(0).to_pem().decode("ascii")
        message = yield self.error(403, "identity_recover", private_key_source=wrong, known_idurl=ALICE_IDURL)
        self.assertNotIn("PRIVATE", message)
        yield self.error(400, "identity_recover", private_key_source=wrong)
        yield self.error(400, "identity_recover", private_key_source="just some words")
        yield self.error(400, "identity_recover", private_key_source="-----BEGIN PRIVATE KEY-----\nxx\n"
                                                                      "-----END PRIVATE KEY-----\n",
                         known_idurl=ALICE_IDURL)
        yield self.error(404, "identity_recover", private_key_source=os.path.abspath(self.mktemp()))
        yield self.error(400, "identity_recover", private_key_source="")
        yield self.error(404, "identity_get")
        self.assert_no_secret_logged()

    @defer.inlineCallbacks
    def test_erase_keeps_the_private_key_by_default(self):
        yield self.create()
        erased = yield self.ok("identity_erase")
        self.assertFalse(erased["private_key_erased"])
        self.assertTrue(os.path.exists(os.path.join(self.node.basedir.metadata, "keys", MASTER + ".private")))

    @defer.inlineCallbacks
    def test_rotate_and_cache_list(self):
        yield self.create()
        rotated = yield self.ok("identity_rotate")
        self.assertEqual(rotated["revision"], 2)
        self.assertEqual(rotated["rotation"]["published_to"], [ALICE_IDURL])
        self.assertEqual(rotated["rotation"]["added_sources"], [])
        bob = make_identity("bob", rsa_key(1))
        self.servers.docs[bob.idurl] = bob.to_xml()
        service = self.node.service_driver.get("service_identity")
        yield service.fetch_identity(bob.global_id)
        cached = yield self.ok("identity_cache_list")
        self.assertEqual([item["global_id"] for item in cached], [bob.global_id])

    @defer.inlineCallbacks
    def test_service_off_answers_503(self):
        yield self.node.service_driver.stop("service_identity")
        yield self.error(503, "identity_get")
        yield self.error(503, "keys_list")


class RealIdentityServerTests(unittest.TestCase):
    """The real identity server and client, in one reactor: alice registers, bob fetches her."""

    @defer.inlineCallbacks
    def test_create_on_a_real_server_and_fetch_from_another_node(self):
        server_node, settings = yield start_id_server(self)
        port = server_node.service_driver.get("service_identity_server").port
        alice_node = yield start_node(self, service_classes=[IdentityService], overrides=settings)
        bob_node = yield start_node(self, service_classes=[IdentityService], overrides=settings)
        answer = yield api_server(alice_node).dispatcher.execute_by_name("identity_create", {"username": "alice"})
        self.assertEqual(answer.code, 200, answer.envelope)
        alice_id = answer.envelope["result"]["global_id"]
        self.assertEqual(alice_id, f"alice@127.0.0.1_{port}")
        taken = yield api_server(bob_node).dispatcher.execute_by_name("identity_create", {"username": "alice"})
        self.assertEqual(taken.code, 409, taken.envelope)
        bob_service = bob_node.service_driver.get("service_identity")
        fetched = yield bob_service.fetch_identity(alice_id)
        alice_service = alice_node.service_driver.get("service_identity")
        self.assertEqual(fetched, alice_service.my_identity())
        verifier = bob_service.resolve_verifier(alice_id)
        self.assertTrue(verifier.verify(b"hello", alice_service.packet_signer().sign(b"hello")))
        updated = yield alice_service.update_contacts(["tcp://127.0.0.1:40100"])
        refreshed = yield bob_service.fetch_identity(alice_id, refresh=True)
        self.assertEqual(refreshed, updated)
        self.assertEqual(refreshed.revision, 2)
