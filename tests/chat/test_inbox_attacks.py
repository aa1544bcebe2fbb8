"""Peer-side attacks on private messages (issue 14 item 9), over real gateways in one reactor.

A stranger (carol, dave) sends bob signed, correctly sealed messages straight
from her gateway, as fast as it goes. Before the limits every one of them was
decrypted and kept in bob's history forever. Each test asserts the limit holds
and that alice, a legitimate correspondent (and bob's friend where it
matters), still gets through.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from bitnode.access.friends_service import FriendsService
from bitnode.chat.message_crypto import PRIVATE_MESSAGE, MessageHeader, seal
from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.p2p.network_service import NetworkService
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.transport.packet_out import PeerRefused
from bitnode.userid.id_service import IdentityService
from tests.chat.support import MESSAGES, ChatNetworkCase

SERVICES = [IdentityService, GatewayService, NetworkService, FriendsService, PrivateMessagesService]

PREFIX = "services/private-messages/"


class InboxAttackTests(ChatNetworkCase):
    def user(self, name, **limits):
        return self.messaging_user(name, SERVICES, {PREFIX + key.replace("_", "-"): value
                                                     for key, value in limits.items()})

    @inlineCallbacks
    def attacker(self, name, victim):
        """A node whose ``send(n, size)`` fires n sealed messages at ``victim``: [(ok, reason)]."""
        node = yield self.user(name)
        yield self.ok(node, "user_ping", user_id=self.gid(victim))
        gateway = node.service_driver.get("service_gateway").gateway
        keystore = node.service_driver.get("service_identity").keystore
        key = keystore.private_key(keystore.master_key_id)
        victim_key = victim.service_driver.get("service_identity").my_identity().rsa_public_key()
        me, target = self.gid(node), self.gid(victim)

        @inlineCallbacks
        def send(count, size=10, first=0):
            outcomes = []
            for i in range(first, first + count):
                sealed = seal(MessageHeader(PRIVATE_MESSAGE, me, target, f"{name}-{i}", 1.0),
                              {"message": "x" * size}, key, victim_key)
                try:
                    yield gateway.request(Command.MESSAGE, target, sealed, timeout=5)
                    outcomes.append((True, ""))
                except PeerRefused as err:
                    outcomes.append((False, err.reason))
            return outcomes

        node.send = send
        return node

    @inlineCallbacks
    def history_from(self, node, sender):
        history = yield self.ok(node, "message_history", recipient_id=self.gid(sender), limit=1000)
        return [m for m in history["messages"] if m["sender"] == self.gid(sender)]

    def refused(self, node):
        return node.service_driver.info(MESSAGES)["status"]["inbox_refused"]

    @inlineCallbacks
    def flood(self, count, **bobs_limits):
        """Bob (with ``bobs_limits``), Alice, and Carol who fires ``count`` messages at Bob:
        (bob, alice, carol, Carol's outcomes)."""
        bob = yield self.user("bob", **bobs_limits)
        alice = yield self.user("alice")
        carol = yield self.attacker("carol", bob)
        outcomes = yield carol.send(count)
        return bob, alice, carol, outcomes

    @inlineCallbacks
    def test_a_flood_from_one_sender_is_rate_limited_and_others_get_through(self):
        bob, alice, carol, outcomes = yield self.flood(9, sender_rate=0.001, sender_burst=5)
        self.assertEqual([ok for ok, _ in outcomes], [True] * 5 + [False] * 4)
        self.assertTrue(all(reason.startswith("rate limited") for ok, reason in outcomes if not ok))
        yield self.ok(alice, "message_send", recipient_id=self.gid(bob), data={"message": "hi bob"})
        self.assertEqual(len((yield self.history_from(bob, carol))), 5)
        self.assertEqual(len((yield self.history_from(bob, alice))), 1)
        self.assertEqual(self.refused(bob), {"rate_limited": 4})

    @inlineCallbacks
    def test_one_sender_cannot_make_me_store_more_than_its_quota(self):
        bob, alice, carol, outcomes = yield self.flood(6, sender_max_messages=4, sender_max_bytes=3000)
        self.assertEqual([ok for ok, _ in outcomes], [True] * 4 + [False] * 2)
        self.assertIn("quota", outcomes[-1][1])
        again = yield carol.send(1, first=3)  # a repeat of a stored message (a lost Ack) is still acknowledged
        self.assertEqual(again, [(True, "")])
        yield self.ok(alice, "message_send", recipient_id=self.gid(bob), data={"message": "a" * 2000})
        refused = yield self.call(alice, "message_send", recipient_id=self.gid(bob), data={"message": "b" * 1500})
        self.assertEqual(refused.code, 409, refused.envelope)  # over her bytes quota: a refusal, not silence
        self.assertIn("quota", refused.envelope["errors"][0])
        # the quota is counted from the history: a restart does not reset it
        yield self.ok(bob, "service_restart", service_name=MESSAGES)
        yield self.until(lambda: bob.service_driver.is_on(MESSAGES), "bob's messages again")
        self.assertEqual([ok for ok, _ in (yield carol.send(1, first=10))], [False])
        self.assertEqual(len((yield self.history_from(bob, carol))), 4)

    @inlineCallbacks
    def test_a_crowd_of_strangers_shares_one_quota_and_friends_are_not_in_it(self):
        bob = yield self.user("bob", strangers_max_messages=3)
        alice = yield self.user("alice")
        yield self.ok(bob, "friend_add", trusted_user_id=self.gid(alice), share_person_key=False)
        carol = yield self.attacker("carol", bob)
        dave = yield self.attacker("dave", bob)
        self.assertEqual([ok for ok, _ in (yield carol.send(2))], [True, True])
        outcomes = yield dave.send(2)
        self.assertEqual([ok for ok, _ in outcomes], [True, False])
        self.assertIn("strangers", outcomes[1][1])
        for i in range(3):
            yield self.ok(alice, "message_send", recipient_id=self.gid(bob), data={"message": f"friend {i}"})
        self.assertEqual(self.refused(bob), {"strangers_quota": 1})

    @inlineCallbacks
    def test_friends_only_refuses_strangers_before_any_work(self):
        bob = yield self.user("bob", friends_only=True)
        alice = yield self.user("alice")
        yield self.ok(bob, "friend_add", trusted_user_id=self.gid(alice), share_person_key=False)
        carol = yield self.attacker("carol", bob)
        outcomes = yield carol.send(3)
        self.assertEqual([ok for ok, _ in outcomes], [False] * 3)
        self.assertTrue(all(reason.startswith("friends only") for _, reason in outcomes))
        yield self.ok(alice, "message_send", recipient_id=self.gid(bob), data={"message": "from a friend"})
        self.assertEqual(len((yield self.history_from(bob, alice))), 1)
        status = bob.service_driver.info(MESSAGES)["status"]
        self.assertEqual((status["inbox_refused"], status["rejected"], status["received"]),
                         ({"friends_only": 3}, 0, 1))
        # switched off, strangers are heard again
        yield self.ok(bob, "config_set", key=PREFIX + "friends-only", value=False)
        self.assertEqual([ok for ok, _ in (yield carol.send(1, first=5))], [True])
