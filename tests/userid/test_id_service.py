"""Tests for bitnode.userid.id_service (service_identity) with fake identity servers and a Clock."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.crypt import fastsign
from bitnode.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from bitnode.userid.id_service import identity_as_dict
from bitnode.userid.idcache import KeyMismatch
from bitnode.userid.identity import Identity
from tests.userid.fakes import (
    SERVER,
    SERVER2,
    FakeNode,
    FakeServers,
    file_mode,
    make_identity,
    make_service,
    rsa_key,
)

ALICE_IDURL = "http://id.example.net:8084/alice.xml"
ALICE = "alice@id.example.net_8084"
BOB_IDURL = "http://id.example.net:8084/bob.xml"
BOB = "bob@id.example.net_8084"


class ServiceTestBase(unittest.TestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.servers = FakeServers()
        self.node = FakeNode(self.root, overrides={"personal/identity-servers": [SERVER]})
        self.service = self.start_service()

    def start_service(self, node=None):
        service = make_service(node or self.node, self.servers)
        self.successResultOf(service.start())
        self.addCleanup(service.stop)
        return service

    def restart(self):
        self.successResultOf(defer.maybeDeferred(self.service.stop))
        self.service = self.start_service()
        return self.service

    def create(self, name: str = "alice", servers=None, join: bool = False) -> Identity:
        return self.successResultOf(self.service.create_identity(name, servers, join))

    def metadata(self, *parts: str) -> str:
        return os.path.join(self.node.basedir.metadata, *parts)


class StartTests(ServiceTestBase):
    def test_without_identity_there_is_no_key_store_nor_signer(self) -> None:
        self.assertIsNone(self.service.my_identity())
        self.assertIsNone(self.service.my_global_id())
        self.assertIsNone(self.service.my_idurl())
        self.assertIsNone(self.service.keystore)
        self.assertIsNone(self.service.packet_signer())
        self.assertIsNone(self.service.packet_private_key())
        self.assertEqual(len(self.service.cache), 0)
        self.assertEqual(file_mode(self.metadata("keys")), 0o700)
        self.assertTrue(os.path.isdir(self.node.basedir.path("identitycache")))

    def test_without_identity_what_needs_one_is_a_conflict_that_says_how_to_get_one(self) -> None:
        for needs_identity in (self.service.require_global_id, self.service.require_keystore,
                               self.service.master_private_key):
            err = self.assertRaises(Conflict, needs_identity)
            self.assertIn("identity_create or identity_recover", str(err))

    def test_files_are_opened_off_the_reactor(self) -> None:
        self.assertIn("open_files", self.node.thread_calls)

    def test_stop_closes_the_client(self) -> None:
        client = self.service.client
        self.successResultOf(defer.maybeDeferred(self.service.stop))
        self.assertTrue(client.closed)
        self.failureResultOf(self.service.create_identity("alice"), Unavailable)

    def test_unusable_identity_file_is_reported_and_blocks_create(self) -> None:
        with open(self.metadata("identity.xml"), "wb") as handle:
            handle.write(b"<identity>garbage</identity>")
        service = self.restart()
        self.assertIsNone(service.my_identity())
        self.assertTrue(any("identity.xml" in problem for problem in service.load_problems))
        self.failureResultOf(service.create_identity("alice"), Conflict)


class CreateTests(ServiceTestBase):
    def test_create_publishes_then_keeps_identity_and_keys(self) -> None:
        identity = self.create()
        self.assertEqual(identity.sources, (ALICE_IDURL,))
        self.assertEqual(identity.contacts, ("tcp://127.0.0.1:7771",))
        self.assertEqual(identity.revision, 1)
        self.assertTrue(identity.verify())
        self.assertEqual(identity.rsa_public_key().size_bits, 2048)
        self.assertEqual(self.servers.stored(ALICE_IDURL), identity)
        self.assertEqual(self.service.my_global_id(), ALICE)
        self.assertEqual(self.service.require_global_id(), ALICE)
        self.assertEqual(self.service.my_idurl(), ALICE_IDURL)
        store = self.service.keystore
        self.assertIs(self.service.require_keystore(), store)
        self.assertEqual(store.master_key_id, "master$" + ALICE)
        self.assertEqual(store.public_key(store.master_key_id), identity.rsa_public_key())
        for name in ("identity.xml", "packetkey.pem", os.path.join("keys", "master$" + ALICE + ".private")):
            self.assertEqual(file_mode(self.metadata(name)), 0o600, name)
        self.assertEqual(self.node.event_ids(), ["my-identity-created"])
        self.assertEqual(self.node.seen[0][1], {"global_id": ALICE, "idurl": ALICE_IDURL, "revision": 1})
        self.assertIn("generate_identity", self.node.thread_calls)

    def test_packet_key_is_certified_by_the_identity(self) -> None:
        identity = self.create()
        signer = self.service.packet_signer()
        self.assertEqual(signer.algorithm, "ed25519")
        signature = signer.sign(b"packet")
        self.assertTrue(fastsign.verify(identity.fast_public_key(), b"packet", signature))
        self.assertEqual(self.service.packet_private_key().public_key(), identity.fast_public_key())
        # parsed once per document: the transport asks for it for every packet it verifies
        self.assertIs(identity.fast_public_key(), identity.fast_public_key())

    def test_identity_survives_a_restart(self) -> None:
        identity = self.create()
        signature = self.service.packet_signer().sign(b"data")
        service = self.restart()
        self.assertEqual(service.my_identity(), identity)
        self.assertEqual(service.load_problems, [])
        self.assertEqual(service.keystore.private_key(service.keystore.master_key_id).public_key(),
                         identity.rsa_public_key())
        self.assertTrue(service.resolve_verifier(ALICE).verify(b"data", signature))
        self.assertTrue(service.resolve_verifier(ALICE).verify(b"x", service.packet_signer().sign(b"x")))

    def test_preferred_servers_win_over_the_setting(self) -> None:
        identity = self.create(servers=["ID2.example.net:8084", "http://id.example.net:8084/"])
        self.assertEqual(identity.sources, ("http://id2.example.net:8084/alice.xml", ALICE_IDURL))
        self.assertEqual(identity.global_id, "alice@id2.example.net_8084")

    def test_a_dead_first_server_is_not_my_primary(self) -> None:
        self.servers.down.add(SERVER)
        identity = self.create(servers=[SERVER, SERVER2])
        second = "http://id2.example.net:8084/alice.xml"
        # a live server gives my name; the dead one stays listed after it
        self.assertEqual(identity.sources, (second, ALICE_IDURL))
        self.assertEqual(self.service.my_global_id(), "alice@id2.example.net_8084")
        self.assertEqual(self.servers.stored(second), identity)
        self.assertTrue(identity.verify())
        self.assertEqual(self.service.keystore.master_key_id, "master$alice@id2.example.net_8084")

    def test_publish_failure_leaves_nothing_on_disk(self) -> None:
        self.servers.down.add(SERVER)
        self.failureResultOf(self.service.create_identity("alice"), Unavailable)
        self.assertFalse(os.path.exists(self.metadata("identity.xml")))
        self.assertFalse(os.path.exists(self.metadata("packetkey.pem")))
        self.assertEqual(os.listdir(self.metadata("keys")), [])
        self.assertIsNone(self.service.my_identity())
        self.assertEqual(self.node.event_ids(), [])
        self.servers.down.clear()
        self.assertEqual(self.create().global_id, ALICE)

    def test_name_taken_by_another_key_is_a_conflict_and_keeps_nothing(self) -> None:
        other = make_identity("alice", rsa_key(0))
        self.servers.docs[ALICE_IDURL] = other.to_xml()
        self.failureResultOf(self.service.create_identity("alice"), Conflict)
        self.assertFalse(os.path.exists(self.metadata("identity.xml")))
        self.assertEqual(self.servers.stored(ALICE_IDURL), other)

    def test_one_accepting_server_is_enough(self) -> None:
        self.servers.down.add(SERVER2)
        identity = self.create(servers=[SERVER, SERVER2])
        self.assertEqual(len(identity.sources), 2)
        self.assertIsNotNone(self.service.my_identity())

    def test_second_create_is_a_conflict(self) -> None:
        self.create()
        failure = self.failureResultOf(self.service.create_identity("bob"), Conflict)
        self.assertIn(ALICE, str(failure.value))

    def test_create_while_another_create_runs_is_a_conflict(self) -> None:
        self.service.client.hold = defer.Deferred()
        hold = self.service.client.hold
        first = self.service.create_identity("alice")
        second = self.service.create_identity("bob")
        self.assertNoResult(first)
        hold.callback(None)
        self.assertEqual(self.successResultOf(first).name, "alice")
        self.failureResultOf(second, Conflict)

    def test_bad_name_and_missing_servers_are_bad_requests(self) -> None:
        self.failureResultOf(self.service.create_identity("Alice!"), BadRequest)
        self.node.settings.set("personal/identity-servers", [])
        failure = self.failureResultOf(self.service.create_identity("alice"), BadRequest)
        self.assertIn("identity server", str(failure.value))
        self.failureResultOf(self.service.create_identity("alice", ["not a server"]), BadRequest)

    def test_join_network_publishes_the_join_request(self) -> None:
        self.create(join=True)
        self.assertEqual(self.node.event_ids(), ["my-identity-created", "network-join-requested"])

    def test_unreachable_listen_address_gives_no_contact(self) -> None:
        self.node.settings.set("services/tcp-connections/interface", "0.0.0.0")
        self.assertEqual(self.create().contacts, ())


class UpdateContactsTests(ServiceTestBase):
    def test_update_bumps_revision_saves_and_publishes(self) -> None:
        self.create()
        updated = self.successResultOf(self.service.update_contacts(["tcp://127.0.0.1:40001"]))
        self.assertEqual(updated.revision, 2)
        self.assertEqual(updated.contacts, ("tcp://127.0.0.1:40001",))
        self.assertTrue(updated.verify())
        self.assertEqual(self.servers.stored(ALICE_IDURL), updated)
        self.assertEqual(self.service.my_identity(), updated)
        self.assertEqual(self.service.status()["published_revision"], 2)
        self.assertEqual(self.node.event_ids(), ["my-identity-created", "my-identity-changed"])
        self.assertEqual(self.restart().my_identity(), updated)

    def test_unchanged_contacts_are_a_no_op(self) -> None:
        identity = self.create()
        posts = len(self.servers.posts)
        self.assertIs(self.successResultOf(self.service.update_contacts(list(identity.contacts))), identity)
        self.assertEqual(len(self.servers.posts), posts)

    def test_bad_contacts_are_refused(self) -> None:
        self.create()
        self.failureResultOf(self.service.update_contacts(["udp:/nowhere"]), BadRequest)
        self.failureResultOf(self.service.update_contacts("tcp://127.0.0.1:1"), BadRequest)

    def test_contacts_given_before_the_identity_are_used_by_create(self) -> None:
        self.assertIsNone(self.successResultOf(self.service.update_contacts(["tcp://127.0.0.1:40002"])))
        self.assertEqual(self.create().contacts, ("tcp://127.0.0.1:40002",))

    def test_failed_publish_keeps_the_revision_and_retries_later(self) -> None:
        self.create()
        self.servers.down.add(SERVER)
        updated = self.successResultOf(self.service.update_contacts(["tcp://127.0.0.1:40003"]))
        self.assertEqual(updated.revision, 2)
        self.assertIn("cannot connect", self.service.status()["last_publish_error"])
        self.assertEqual(self.restart().my_identity().revision, 2)
        # The restarted service has no retry pending; make a fresh failure to watch the retry.
        self.successResultOf(self.service.update_contacts(["tcp://127.0.0.1:40004"]))
        self.assertEqual(len(self.node.clock.getDelayedCalls()), 1)
        self.node.clock.advance(30)
        self.assertEqual(len(self.node.clock.getDelayedCalls()), 1, "still down: retried later")
        self.servers.down.clear()
        self.node.clock.advance(60)
        self.assertEqual(self.servers.stored(ALICE_IDURL).revision, 3)
        self.assertEqual(self.service.status()["last_publish_error"], "")
        self.assertEqual(self.node.clock.getDelayedCalls(), [])

    def test_stop_cancels_a_pending_retry(self) -> None:
        self.create()
        self.servers.down.add(SERVER)
        self.successResultOf(self.service.update_contacts(["tcp://127.0.0.1:40005"]))
        self.successResultOf(defer.maybeDeferred(self.service.stop))
        self.assertEqual(self.node.clock.getDelayedCalls(), [])


class OthersTests(ServiceTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.bob_packet_key = fastsign.generate_ed25519()
        self.bob = make_identity("bob", rsa_key(1), packet_key=self.bob_packet_key)
        self.servers.docs[BOB_IDURL] = self.bob.to_xml()

    def test_fetch_caches_and_answers_from_the_cache(self) -> None:
        fetched = self.successResultOf(self.service.fetch_identity(BOB_IDURL))
        self.assertEqual(fetched, self.bob)
        self.assertTrue(self.service.cache.has(BOB))
        self.servers.down.add(SERVER)
        self.assertEqual(self.successResultOf(self.service.fetch_identity(BOB)), self.bob)
        self.assertEqual(self.servers.gets, [BOB_IDURL])
        self.failureResultOf(self.service.fetch_identity(BOB, refresh=True), Unavailable)

    def test_refresh_takes_a_higher_revision(self) -> None:
        self.successResultOf(self.service.fetch_identity(BOB))
        newer = make_identity("bob", rsa_key(1), revision=5, contacts=("tcp://127.0.0.1:9100",))
        self.servers.docs[BOB_IDURL] = newer.to_xml()
        self.assertEqual(self.successResultOf(self.service.fetch_identity(BOB)).revision, 1)
        self.assertEqual(self.successResultOf(self.service.fetch_identity(BOB, refresh=True)), newer)

    def test_another_key_for_a_pinned_identity_is_refused(self) -> None:
        self.successResultOf(self.service.fetch_identity(BOB))
        impostor = make_identity("bob", rsa_key(0), revision=9)
        self.servers.docs[BOB_IDURL] = impostor.to_xml()
        failure = self.failureResultOf(self.service.fetch_identity(BOB, refresh=True), KeyMismatch)
        self.assertIsInstance(failure.value, Forbidden)
        self.assertEqual(self.service.cache.get(BOB), self.bob)

    def test_unknown_identity_is_not_found_and_bad_ids_are_bad_requests(self) -> None:
        self.failureResultOf(self.service.fetch_identity("carol@id.example.net_8084"), NotFound)
        self.failureResultOf(self.service.fetch_identity("not an id"), BadRequest)

    def test_fetching_myself_answers_my_identity(self) -> None:
        identity = self.create()
        self.assertIs(self.successResultOf(self.service.fetch_identity(ALICE_IDURL)), identity)
        self.assertEqual(self.servers.gets, [])

    def test_resolve_verifier(self) -> None:
        self.assertIsNone(self.service.resolve_verifier(BOB))
        self.successResultOf(self.service.fetch_identity(BOB))
        verifier = self.service.resolve_verifier(BOB)
        self.assertEqual(verifier.algorithm, "ed25519")
        signature = fastsign.sign(self.bob_packet_key, b"hello")
        self.assertTrue(verifier.verify(b"hello", signature))
        self.assertFalse(verifier.verify(b"hellO", signature))
        self.assertFalse(verifier.verify(b"hello", b"short"))
        self.assertIsNone(self.service.resolve_verifier("garbage"))
        self.assertIsNone(self.service.resolve_verifier(ALICE))
        self.create()
        self.assertIsNotNone(self.service.resolve_verifier(ALICE))
        self.assertIsNotNone(self.service.resolve_verifier(ALICE_IDURL))

    def test_cached_identities_survive_a_restart(self) -> None:
        self.successResultOf(self.service.fetch_identity(BOB))
        self.assertEqual(self.restart().cache.get(BOB), self.bob)


class SourcesTests(ServiceTestBase):
    """16.3: a dead identity server hides nobody: the other sources, then the network's servers, are asked."""

    BOB2 = "bob@id2.example.net_8084"
    BOB2_IDURL = "http://id2.example.net:8084/bob.xml"

    def setUp(self) -> None:
        super().setUp()
        self.node.settings.set("personal/identity-servers", [SERVER, SERVER2])
        self.bob = make_identity("bob", rsa_key(1), servers=(SERVER, SERVER2))
        for source in self.bob.sources:
            self.servers.docs[source] = self.bob.to_xml()

    def test_a_dead_primary_is_skipped_for_the_next_source_which_is_remembered(self) -> None:
        self.successResultOf(self.service.fetch_identity(BOB))
        self.servers.down.add(SERVER)
        self.servers.gets.clear()
        self.assertEqual(self.successResultOf(self.service.fetch_identity(BOB, refresh=True)), self.bob)
        self.assertEqual(self.servers.gets, [BOB_IDURL, self.BOB2_IDURL])
        self.servers.gets.clear()
        self.successResultOf(self.service.fetch_identity(BOB, refresh=True))
        self.assertEqual(self.servers.gets, [self.BOB2_IDURL])  # the one that answered, first
        self.assertEqual(self.service.status()["sources"]["answered_by_other_source"], 2)

    def test_a_user_never_seen_is_found_on_the_networks_servers_under_the_name_asked(self) -> None:
        self.servers.down.add(SERVER)
        found = self.successResultOf(self.service.fetch_identity(BOB))
        self.assertEqual(found, self.bob)
        self.assertEqual(self.servers.gets, [BOB_IDURL, self.BOB2_IDURL])
        self.assertEqual(self.service.status()["sources"]["answered_by_network_server"], 1)

    def test_a_document_that_does_not_list_the_name_asked_is_not_taken_for_it(self) -> None:
        other_bob = make_identity("bob", rsa_key(2), servers=(SERVER2,))
        self.servers.docs[self.BOB2_IDURL] = other_bob.to_xml()
        self.servers.down.add(SERVER)
        self.failureResultOf(self.service.fetch_identity(BOB), Unavailable)
        self.assertFalse(self.service.cache.has(BOB))
        self.assertEqual(self.service.status()["sources"]["wrong_user"], 1)

    def test_a_user_who_moved_keeps_the_old_name_and_we_hear_of_it(self) -> None:
        self.successResultOf(self.service.fetch_identity(BOB))
        moved = make_identity("bob", rsa_key(1), servers=(SERVER2, SERVER), revision=2)
        self.servers.docs[self.BOB2_IDURL] = moved.to_xml()
        self.servers.down.add(SERVER)
        self.assertEqual(self.successResultOf(self.service.fetch_identity(BOB, refresh=True)), moved)
        self.assertEqual(self.service.current_id(BOB), self.BOB2)
        self.assertEqual(self.service.names(self.BOB2), [self.BOB2, BOB])
        self.assertTrue(self.service.same_user(BOB, self.BOB2))
        self.assertIsNotNone(self.service.resolve_verifier(BOB))
        self.assertIn(("identity-rotated", {"old_global_id": BOB, "global_id": self.BOB2}), self.node.seen)

    def test_a_stranger_makes_us_ask_at_most_its_idurl_and_the_configured_number_of_servers(self) -> None:
        servers = [f"id{n}.example.net:8084" for n in range(3, 20)]
        node = FakeNode(self.mktemp(), clock=self.node.clock, overrides={
            "personal/identity-servers": servers, "services/identity/network-servers-asked": 3})
        service = self.start_service(node)
        self.servers.gets.clear()
        self.failureResultOf(service.fetch_identity("carol@id.example.net_8084", stranger=True), NotFound)
        self.assertEqual(len(self.servers.gets), 1 + 3)


class StrangerFetchTests(ServiceTestBase):
    """14.2: what a stranger's introduction may make service_identity fetch, and keep."""

    def test_a_stranger_asking_again_for_a_missing_identity_gets_the_negative_cache(self) -> None:
        carol = "carol@id.example.net_8084"
        for _ in range(5):
            self.failureResultOf(self.service.fetch_identity(carol, refresh=True, stranger=True), NotFound)
        self.assertEqual(len(self.servers.gets), 1)
        self.assertEqual(self.service.status()["fetches"]["negative_cached"], 4)
        self.failureResultOf(self.service.fetch_identity(carol), NotFound)  # our own asks again
        self.assertEqual(len(self.servers.gets), 2)
        self.node.clock.advance(60)
        self.failureResultOf(self.service.fetch_identity(carol, stranger=True), NotFound)
        self.assertEqual(len(self.servers.gets), 3)

    def test_identity_servers_outside_the_allow_list_are_never_asked(self) -> None:
        node = FakeNode(self.mktemp(), clock=self.node.clock, overrides={
            "personal/identity-servers": [SERVER], "services/identity/allowed-servers": ["id2.example.net"]})
        service = self.start_service(node)
        self.failureResultOf(service.fetch_identity(BOB, stranger=True), Forbidden)
        self.failureResultOf(service.fetch_identity(BOB), Forbidden)
        self.assertEqual(self.servers.gets, [])
        self.assertEqual(service.status()["fetches"]["refused_host"], 2)

    def test_the_cache_keeps_at_most_its_setting(self) -> None:
        node = FakeNode(self.mktemp(), clock=self.node.clock, overrides={
            "personal/identity-servers": [SERVER], "services/identity/cache-entries": 10})
        service = self.start_service(node)
        for n in range(12):
            person = make_identity(f"user{n}", rsa_key(n % 3))
            self.servers.docs[person.idurl] = person.to_xml()
            self.successResultOf(service.fetch_identity(person.idurl))
        self.assertEqual(service.status()["cache"]["identities"], 10)
        self.assertEqual(len(os.listdir(service.cache_dir)), 10)
        self.assertIn("_write_batch", node.thread_calls)  # files are written off the reactor


class EraseRecoverRotateTests(ServiceTestBase):
    def test_erase_keeps_the_key_unless_asked(self) -> None:
        self.create()
        master = "master$" + ALICE + ".private"
        self.assertEqual(self.successResultOf(self.service.erase_identity()), ALICE)
        self.assertIsNone(self.service.my_identity())
        self.assertIsNone(self.service.keystore)
        self.assertIsNone(self.service.packet_signer())
        self.assertFalse(os.path.exists(self.metadata("identity.xml")))
        self.assertTrue(os.path.exists(self.metadata("keys", master)))
        self.assertEqual(self.node.seen[-1], ("my-identity-erased", {"global_id": ALICE, "private_key_erased": False}))
        self.failureResultOf(self.service.erase_identity(), NotFound)

    def test_erase_with_private_key_removes_the_keys(self) -> None:
        self.create()
        self.successResultOf(self.service.erase_identity(erase_private_key=True))
        self.assertEqual(os.listdir(self.metadata("keys")), [])
        self.assertFalse(os.path.exists(self.metadata("packetkey.pem")))
        self.assertIsNone(self.restart().my_identity())

    def test_backup_then_recover_on_a_fresh_node(self) -> None:
        identity = self.create()
        path = os.path.abspath(self.mktemp())
        self.assertEqual(self.successResultOf(self.service.backup_identity(path)), path)
        self.assertEqual(file_mode(path), 0o600)
        self.failureResultOf(self.service.backup_identity(path), Conflict)
        node2 = FakeNode(self.mktemp())
        service2 = self.start_service(node2)
        recovered = self.successResultOf(service2.recover_identity(path))
        self.assertEqual(recovered, identity, "the backup had the packet key: no new revision")
        self.assertEqual(service2.packet_private_key(), self.service.packet_private_key())
        self.assertEqual(node2.event_ids(), ["my-identity-created"])

    def test_recover_from_a_bare_pem_makes_a_new_packet_key(self) -> None:
        identity = self.create()
        master_pem = self.service.keystore.private_key(self.service.keystore.master_key_id).to_pem().decode()
        self.successResultOf(self.service.erase_identity(erase_private_key=True))
        recovered = self.successResultOf(self.service.recover_identity(master_pem, ALICE_IDURL))
        self.assertEqual(recovered.revision, 2)
        self.assertEqual(recovered.rsa_public_key(), identity.rsa_public_key())
        self.assertNotEqual(recovered.signing_key, identity.signing_key)
        self.assertEqual(self.servers.stored(ALICE_IDURL), recovered)
        self.assertEqual(self.service.packet_private_key().public_key(), recovered.fast_public_key())

    def test_recover_with_the_wrong_key_is_forbidden_and_keeps_nothing(self) -> None:
        self.create()
        self.successResultOf(self.service.erase_identity(erase_private_key=True))
        wrong = rsa_key(0).to_pem().decode()
        self.failureResultOf(self.service.recover_identity(wrong, ALICE_IDURL), Forbidden)
        self.assertFalse(os.path.exists(self.metadata("identity.xml")))
        self.assertEqual(os.listdir(self.metadata("keys")), [])

    def test_recover_needs_an_idurl_and_no_identity(self) -> None:
        pem = rsa_key(0).to_pem().decode()
        self.failureResultOf(self.service.recover_identity(pem), BadRequest)
        self.create()
        self.failureResultOf(self.service.recover_identity(pem, ALICE_IDURL), Conflict)

    def test_rotate_moves_to_a_configured_server_and_keeps_the_old_name(self) -> None:
        self.create()
        self.node.settings.set("personal/identity-servers", [SERVER, SERVER2])
        result = self.successResultOf(self.service.rotate_identity())
        second = "http://id2.example.net:8084/alice.xml"
        self.assertEqual(result.identity.sources, (second, ALICE_IDURL))
        self.assertEqual(result.identity.revision, 2)
        self.assertEqual(result.added_sources, (second,))
        self.assertEqual(set(result.published_to), {ALICE_IDURL, second})
        self.assertEqual(self.servers.stored(second), result.identity)
        self.assertEqual(self.service.my_global_id(), "alice@id2.example.net_8084")
        self.assertEqual(self.service.my_names(), ["alice@id2.example.net_8084", ALICE])
        self.assertTrue(self.service.is_me(ALICE))
        self.assertEqual(self.service.storage_id(), ALICE)  # keys and files stay where they were
        keystore = self.service.keystore
        self.assertIs(keystore.private_key("master$alice@id2.example.net_8084"), keystore.private_key(f"master${ALICE}"))
        rotated = [data for event, data in self.node.seen if event == "my-identity-rotated"]
        self.assertEqual(rotated[0]["old_global_id"], ALICE)
        self.assertEqual(rotated[0]["global_id"], "alice@id2.example.net_8084")
        # after a restart, the key store is found under the old name
        self.successResultOf(defer.maybeDeferred(self.service.stop))
        again = make_service(self.node, self.servers)
        self.successResultOf(again.start())
        self.assertEqual(again.my_global_id(), "alice@id2.example.net_8084")
        self.assertEqual(again.keystore.master_key_id, f"master${ALICE}")
        self.assertEqual(again.load_problems, [])

    def test_a_moved_identity_recovered_on_a_new_machine_keeps_its_storage_name(self) -> None:
        self.create()
        self.node.settings.set("personal/identity-servers", [SERVER, SERVER2])
        self.successResultOf(self.service.rotate_identity())
        backup = os.path.abspath(self.mktemp() + "-backup")
        self.successResultOf(self.service.backup_identity(backup))
        self.servers.down.add(SERVER)  # the first server died since
        fresh = FakeNode(self.mktemp(), clock=self.node.clock, overrides={"personal/identity-servers": [SERVER2]})
        other = self.start_service(fresh)
        recovered = self.successResultOf(other.recover_identity(backup))
        self.assertEqual(recovered.global_id, "alice@id2.example.net_8084")
        self.assertEqual(other.storage_id(), ALICE)
        self.assertEqual(other.keystore.master_key_id, f"master${ALICE}")

    def test_rotate_skips_a_server_that_refuses_the_name(self) -> None:
        self.create()
        second = "http://id2.example.net:8084/alice.xml"
        self.servers.docs[second] = make_identity("alice", rsa_key(1), servers=(SERVER2,)).to_xml()
        self.node.settings.set("personal/identity-servers", [SERVER2])
        self.failureResultOf(self.service.rotate_identity(), Conflict)
        self.assertEqual(self.service.my_identity().sources, (ALICE_IDURL,))
        self.assertEqual(self.service.status()["last_rotation"]["moved"], False)

    def test_rotate_without_new_servers_republishes_a_new_revision(self) -> None:
        self.create()
        result = self.successResultOf(self.service.rotate_identity())
        self.assertEqual(result.identity.revision, 2)
        self.assertEqual(result.added_sources, ())
        self.assertEqual(self.servers.stored(ALICE_IDURL).revision, 2)
        self.servers.down.add(SERVER)
        self.failureResultOf(self.service.rotate_identity(), Unavailable)
        self.assertEqual(self.service.my_identity().revision, 3, "saved before publishing")
        self.successResultOf(defer.maybeDeferred(self.service.stop))


class HelperTests(unittest.TestCase):
    def test_identity_as_dict_has_no_private_material(self) -> None:
        identity = make_identity("bob", rsa_key(1))
        shape = identity_as_dict(identity, include_xml=True)
        self.assertEqual(shape["global_id"], BOB)
        self.assertEqual(shape["revision"], 1)
        self.assertIn("<identity>", shape["xml"])
        self.assertNotIn("PRIVATE", repr(shape))
        self.assertNotIn("xml", identity_as_dict(identity))
