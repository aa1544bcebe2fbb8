"""Key sharing and key audits between real nodes on loopback (the engine: bitnode.access.key_exchange)."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from bitnode.access import key_packets as kx
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
        # and sharing the real one is refused: bob already holds another key under that id
        text = yield self.error(self.alice, 409, "key_share", key_id=key_id, trusted_user_id=self.bob_id)
        self.assertIn("already exists with another key", text)

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
        # a public key I hold of someone else's namespace is not mine to pass on
        self.keystore(self.alice).add_public("s$" + self.bob_id, KEY_C.public_key().to_pem())
        yield self.error(self.alice, 403, "key_share", key_id="s$" + self.bob_id, trusted_user_id=self.bob_id)
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

        # a key in carol's namespace, sealed correctly by alice: refused by the policy
        planted = offer_of("x$carol@127.0.0.1_9", KEY_C, False)
        sealed = kx.seal_key(bob_key, self.alice_id, self.bob_id, planted)
        err = yield self.assertFailure(gateway.request(Command.KEY, self.bob_id, sealed, timeout=5), PeerRefused)
        self.assertIn("may only share its own keys", err.reason)

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
    def test_peer_gone_answers_503(self):
        yield self.ok(self.alice, "key_create", key_alias="late", key_size=2048)
        key_id = "late$" + self.alice_id
        yield self.bob.stopService()
        text = yield self.error(self.alice, 503, "key_share", key_id=key_id, trusted_user_id=self.bob_id, timeout=2)
        self.assertTrue(text)
        yield self.error(self.alice, 503, "key_audit", key_id=key_id, untrusted_user_id=self.bob_id, timeout=2)
