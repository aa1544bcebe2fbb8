"""Key sharing and key audits between real nodes on loopback (the engine: bitnode.access.key_exchange)."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from bitnode.access import key_packets as kx
from bitnode.errors import Forbidden
from bitnode.transport.commands import Command
from bitnode.transport.packet_out import PeerRefused
from tests.access.support import AccessNetworkCase
from tests.access.test_key_packets import KEY_C, offer_of


class KeyExchangeNetworkTests(AccessNetworkCase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.alice = yield self.joined_node("alice")
        self.bob = yield self.joined_node("bob")
        self.alice_id, self.bob_id = self.global_id(self.alice), self.global_id(self.bob)

    @inlineCallbacks
    def test_share_public_then_private_key_and_audit_it(self):
        created = yield self.ok(self.alice, "key_create", key_alias="share1", key_size=2048, label="photos")
        key_id = created["key_id"]
        answer = yield self.ok(self.alice, "key_share", key_id=key_id, trusted_user_id=self.bob_id)
        self.assertEqual(answer, {"key_id": key_id, "trusted_user_id": self.bob_id, "include_private": False,
                                  "fingerprint": created["fingerprint"], "label": "photos", "shared": True})
        bob_keys = {k["key_id"]: k for k in (yield self.ok(self.bob, "keys_list"))}
        self.assertFalse(bob_keys[key_id]["is_private"])
        self.assertEqual((bob_keys[key_id]["fingerprint"], bob_keys[key_id]["label"]),
                         (created["fingerprint"], "photos"))

        public = yield self.ok(self.alice, "key_audit", key_id=key_id, untrusted_user_id=self.bob_id)
        self.assertEqual((public["result"], public["reason"], public["is_private"]), ("OK", "", False))
        private = yield self.ok(self.alice, "key_audit", key_id=key_id, untrusted_user_id=self.bob_id,
                                is_private=True)
        self.assertEqual(private["result"], "FAILED")
        self.assertIn("is not held here", private["reason"])

        yield self.ok(self.alice, "key_share", key_id=key_id, trusted_user_id=self.bob_id, include_private=True)
        held = yield self.ok(self.bob, "key_get", key_id=key_id, include_private=True)
        self.assertTrue(held["is_private"])
        self.assertEqual(self.keystore(self.bob).private_key(key_id), self.keystore(self.alice).private_key(key_id))
        private = yield self.ok(self.alice, "key_audit", key_id=key_id, untrusted_user_id=self.bob_id,
                                is_private=True)
        self.assertEqual(private["result"], "OK")

        received = self.events(self.bob, "key-received")
        self.assertEqual([(e["key_id"], e["from"], e["is_private"]) for e in received],
                         [(key_id, self.alice_id, False), (key_id, self.alice_id, True)])
        self.assertEqual(len(self.events(self.alice, "key-shared")), 2)
        status = self.alice.service_driver.info("service_key_exchange")["status"]
        self.assertEqual((status["shared"], status["audits_asked"]), (2, 3))

        # bob erases the key: audits fail again
        yield self.ok(self.bob, "key_erase", key_id=key_id)
        gone = yield self.ok(self.alice, "key_audit", key_id=key_id, untrusted_user_id=self.bob_id)
        self.assertEqual(gone["result"], "FAILED")

    @inlineCallbacks
    def test_audit_of_a_different_key_under_the_same_id_fails(self):
        # bob has his own key under alice's id? He cannot get one by sharing; plant it directly.
        yield self.ok(self.alice, "key_create", key_alias="share2", key_size=2048)
        key_id = "share2$" + self.alice_id
        self.keystore(self.bob).add_private(key_id, KEY_C.to_pem())
        for is_private in (False, True):
            answer = yield self.ok(self.alice, "key_audit", key_id=key_id, untrusted_user_id=self.bob_id,
                                   is_private=is_private)
            self.assertEqual(answer["result"], "FAILED", answer)
        # alice, the key's owner, shares the real one: her word wins over the planted key (kept as a generation)
        yield self.ok(self.alice, "key_share", key_id=key_id, trusted_user_id=self.bob_id, include_private=True)
        self.assertEqual(self.keystore(self.bob).private_key(key_id), self.keystore(self.alice).private_key(key_id))
        self.assertEqual([k.fingerprint() for k in self.keystore(self.bob).previous_private_keys(key_id)],
                         [KEY_C.fingerprint()])
        self.assertEqual([e["replaced"] for e in self.events(self.bob, "key-received")], [True])
        answer = yield self.ok(self.alice, "key_audit", key_id=key_id, untrusted_user_id=self.bob_id, is_private=True)
        self.assertEqual(answer["result"], "OK")

    @inlineCallbacks
    def test_master_key_rules(self):
        master = "master$" + self.alice_id
        text = yield self.error(self.alice, 403, "key_share", key_id=master, trusted_user_id=self.bob_id,
                                include_private=True)
        self.assertIn("never shared", text)
        yield self.ok(self.alice, "key_share", key_id=master, trusted_user_id=self.bob_id)
        self.assertEqual(self.keystore(self.bob).public_key(master), self.keystore(self.alice).public_key(master))
        audit = yield self.ok(self.alice, "key_audit", key_id=master, untrusted_user_id=self.bob_id,
                              is_private=True)
        self.assertEqual(audit["result"], "FAILED")  # bob holds only the public half
        # bob may pass alice's master public key on to carol: carol checks it against alice's identity
        carol = yield self.joined_node("carol")
        yield self.ok(self.bob, "key_share", key_id=master, trusted_user_id=self.global_id(carol))
        self.assertTrue(self.keystore(carol).has(master))
        audit = yield self.ok(carol, "key_audit", key_id=master, untrusted_user_id=self.alice_id, is_private=True)
        self.assertEqual(audit["result"], "OK")

    @inlineCallbacks
    def test_what_cannot_be_shared(self):
        yield self.error(self.alice, 404, "key_share", key_id="nope$" + self.alice_id, trusted_user_id=self.bob_id)
        yield self.error(self.alice, 400, "key_share", key_id="bad id", trusted_user_id=self.bob_id)
        yield self.error(self.alice, 400, "key_share", key_id="master$" + self.alice_id,
                         trusted_user_id=self.alice_id)
        # a key of bob's own namespace is not given to bob by others
        self.keystore(self.alice).add_public("s$" + self.bob_id, KEY_C.public_key().to_pem())
        text = yield self.error(self.alice, 409, "key_share", key_id="s$" + self.bob_id, trusted_user_id=self.bob_id)
        self.assertIn("is a key of this node", text)
        yield self.error(self.alice, 404, "key_share", key_id="s$" + self.bob_id, trusted_user_id=self.bob_id,
                         include_private=True)  # alice holds only its public half
        yield self.error(self.alice, 404, "key_audit", key_id="nope$" + self.alice_id,
                         untrusted_user_id=self.bob_id)

    @inlineCallbacks
    def test_forged_or_tampered_key_packets_are_refused(self):
        gateway = self.alice.service_driver.get("service_gateway").gateway
        bob_key = self.keystore(self.bob).public_key("master$" + self.bob_id)
        before = len(self.keystore(self.bob).list())
        yield gateway.ping(self.bob_id, timeout=5)  # bob drops packets from senders he does not know

        sealed = kx.seal_key(bob_key, self.alice_id, self.bob_id, offer_of("x$" + self.alice_id, KEY_C, True))
        tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
        err = yield self.assertFailure(gateway.request(Command.KEY, self.bob_id, tampered, timeout=5), PeerRefused)
        self.assertIn("decryption failed", err.reason)

        # a key in bob's own namespace, sealed correctly by alice: refused
        planted = offer_of("x$" + self.bob_id, KEY_C, True)
        sealed = kx.seal_key(bob_key, self.alice_id, self.bob_id, planted)
        err = yield self.assertFailure(gateway.request(Command.KEY, self.bob_id, sealed, timeout=5), PeerRefused)
        self.assertIn("is a key of this node", err.reason)

        # someone's master key that is not the one they publish
        forged = offer_of("master$" + self.global_id(self.alice), KEY_C, False)
        sealed = kx.seal_key(bob_key, self.alice_id, self.bob_id, forged)
        err = yield self.assertFailure(gateway.request(Command.KEY, self.bob_id, sealed, timeout=5), PeerRefused)
        self.assertIn("master", err.reason)

        yield self.assertFailure(gateway.request(Command.AUDIT_KEY, self.bob_id, b"junk", timeout=5), PeerRefused)
        self.assertEqual(len(self.keystore(self.bob).list()), before)
        self.assertEqual(self.events(self.bob, "key-received"), [])
        self.assertGreaterEqual(self.bob.service_driver.info("service_key_exchange")["status"]["refused"], 4)

    @inlineCallbacks
    def test_a_received_key_is_passed_on_as_its_owners_policy_allows(self):
        carol = yield self.joined_node("carol")
        carol_id = self.global_id(carol)
        created = yield self.ok(self.alice, "key_create", key_alias="team_x", key_size=2048, label="team")
        key_id = created["key_id"]
        yield self.ok(self.alice, "key_share", key_id=key_id, trusted_user_id=self.bob_id, include_private=True)
        # bob passes alice's key on to carol: no policy registered for that prefix, so it goes
        answer = yield self.ok(self.bob, "key_share", key_id=key_id, trusted_user_id=carol_id, include_private=True)
        self.assertEqual((answer["fingerprint"], answer["include_private"]), (created["fingerprint"], True))
        self.assertEqual(self.keystore(carol).private_key(key_id), self.keystore(self.alice).private_key(key_id))
        self.assertEqual([(e["key_id"], e["from"], e["replaced"]) for e in self.events(carol, "key-received")],
                         [(key_id, self.bob_id, False)])

        # a policy for the prefix decides: here alice's rule refuses re-sharing
        service = self.bob.service_driver.get("service_key_exchange")
        asked = []

        def policy(key, recipient, include_private):
            asked.append((key, recipient, include_private))
            raise Forbidden(f"{key}: its owner does not let it be passed on")

        remove = service.set_reshare_policy("team_", policy)
        dave = yield self.joined_node("dave")
        text = yield self.error(self.bob, 403, "key_share", key_id=key_id, trusted_user_id=self.global_id(dave))
        self.assertIn("does not let it be passed on", text)
        self.assertEqual(asked, [(key_id, self.global_id(dave), False)])
        self.assertFalse(self.keystore(dave).has(key_id))
        remove()
        yield self.ok(self.bob, "key_share", key_id=key_id, trusted_user_id=self.global_id(dave))
        self.assertFalse(self.keystore(dave).get(key_id).is_private)

        # a third party cannot swap a key someone holds: carol offers another key under alice's id to dave
        self.keystore(carol).erase(key_id)
        self.keystore(carol).add_private(key_id, KEY_C.to_pem())
        text = yield self.error(carol, 409, "key_share", key_id=key_id, trusted_user_id=self.global_id(dave),
                                include_private=True)
        self.assertIn("already exists with another key", text)
        self.assertEqual(self.keystore(dave).get(key_id).fingerprint, created["fingerprint"])

    @inlineCallbacks
    def test_the_owner_sends_a_new_generation_the_holder_keeps_the_old_one(self):
        created = yield self.ok(self.alice, "key_create", key_alias="share_r", key_size=2048)
        key_id = created["key_id"]
        yield self.ok(self.alice, "key_share", key_id=key_id, trusted_user_id=self.bob_id, include_private=True)
        old = self.keystore(self.alice).private_key(key_id)
        self.keystore(self.alice).replace_private(key_id, KEY_C.to_pem())
        yield self.ok(self.alice, "key_share", key_id=key_id, trusted_user_id=self.bob_id, include_private=True)
        self.assertEqual(self.keystore(self.bob).get(key_id).fingerprint, KEY_C.fingerprint())
        self.assertEqual(self.keystore(self.bob).previous_private_keys(key_id), [old])
        self.assertEqual([e["replaced"] for e in self.events(self.bob, "key-received")], [False, True])

    @inlineCallbacks
    def test_peer_gone_answers_503(self):
        yield self.ok(self.alice, "key_create", key_alias="late", key_size=2048)
        key_id = "late$" + self.alice_id
        yield self.bob.stopService()
        text = yield self.error(self.alice, 503, "key_share", key_id=key_id, trusted_user_id=self.bob_id, timeout=2)
        self.assertTrue(text)
        yield self.error(self.alice, 503, "key_audit", key_id=key_id, untrusted_user_id=self.bob_id, timeout=2)
