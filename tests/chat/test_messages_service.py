"""In-process network: private messages between real Nodes (identity server, DHT, gateways over loopback).

Everything a user does goes through the API dispatcher or the WebSocket, the
way a client calls it; 2048-bit keys.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from bitnode.chat.message_crypto import PRIVATE_MESSAGE, MessageHeader, seal
from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.chat.nickname_service import NicknameService
from bitnode.dht.dht_service import DHTService
from bitnode.p2p.network_service import NetworkService
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.transport.packet_out import PeerRefused
from bitnode.userid.id_service import IdentityService
from tests.chat.support import MESSAGES, ChatNetworkCase
from tests.interface.support import connect_ws

SERVICES = [IdentityService, GatewayService, NetworkService, PrivateMessagesService]
#: Only the nickname test needs the DHT (it makes starting a node slower).
DHT_SERVICES = [IdentityService, GatewayService, NetworkService, DHTService, NicknameService, PrivateMessagesService]


class PrivateMessagesNetworkTests(ChatNetworkCase):
    # -- helpers ------------------------------------------------------------------------

    def user(self, name, nickname=None):
        return self.messaging_user(name, SERVICES if nickname is None else DHT_SERVICES,
                                   {"services/private-messages/nickname": nickname or ""})

    # -- tests ---------------------------------------------------------------------------

    @inlineCallbacks
    def test_alice_messages_bob_histories_agree_and_bob_hears_it_twice(self):
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        alice_id, bob_id = self.gid(alice), self.gid(bob)
        ws = yield connect_ws(self, bob)
        poll = self.call(bob, "message_receive", consumer_callback_id="ui", polling_timeout=10)

        sent = yield self.ok(alice, "message_send", recipient_id=bob_id, data={"message": "Hola Bob!"})
        self.assertEqual((sent["state"], sent["direction"], sent["sender"], sent["recipient"]),
                         ("acked", "outgoing", alice_id, bob_id))

        # Bob's long-poll answers with it...
        answer = yield poll
        self.assertEqual(answer.code, 200, answer.envelope)
        [got] = answer.envelope["result"]
        self.assertEqual((got["message_id"], got["data"], got["sender"], got["state"], got["direction"]),
                         (sent["message_id"], {"message": "Hola Bob!"}, alice_id, "received", "incoming"))
        # ...and his WebSocket pushed it as a stream_message with the event's sequence id
        frame = yield ws.next_message(lambda m: m.get("type") == "stream_message", timeout=5)
        self.assertEqual(frame["payload"]["message_id"], sent["message_id"])
        received = [e for e in bob.events.since(0)[0] if e.event_id == "message-received"]
        self.assertEqual(frame["seq"], received[0].seq)

        # both histories hold the same message, in their own direction
        mine = yield self.ok(alice, "message_history", recipient_id=bob_id)
        theirs = yield self.ok(bob, "message_history", recipient_id=alice_id)
        self.assertEqual((mine["total"], theirs["total"]), (1, 1))
        for row in (mine["messages"][0], theirs["messages"][0]):
            self.assertEqual((row["message_id"], row["data"], row["sender"], row["recipient"], row["time"]),
                             (sent["message_id"], {"message": "Hola Bob!"}, alice_id, bob_id, sent["time"]))
        self.assertEqual(mine["messages"][0]["state"], "acked")
        self.assertEqual(theirs["messages"][0]["conversation_id"], alice_id)

        # Bob answers; the conversation lists agree
        yield self.ok(bob, "message_send", recipient_id=alice_id, data={"message": "Hola Alice"})
        for node, other in ((alice, bob_id), (bob, alice_id)):
            listed = yield self.ok(node, "message_conversations_list")
            self.assertEqual(listed["total"], 1)
            conversation = listed["conversations"][0]
            self.assertEqual((conversation["conversation_id"], conversation["messages"], conversation["incoming"],
                              conversation["outgoing"]), (other, 2, 1, 1))
            self.assertEqual(conversation["last_message"]["data"], {"message": "Hola Alice"})
        sent_event = [e for e in bob.events.since(0)[0] if e.event_id == "message-sent"]
        self.assertEqual(sent_event[0].data["state"], "acked")
        self.assertEqual(bob.service_driver.info(MESSAGES)["status"]["received"], 1)

    @inlineCallbacks
    def test_an_offline_recipient_is_an_error_and_a_failed_entry(self):
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        bob_id = self.gid(bob)
        yield bob.stopService()
        answer = yield self.call(alice, "message_send", recipient_id=bob_id, data={"message": "anyone?"},
                                 ping_timeout=2, message_ack_timeout=2)
        self.assertEqual(answer.code, 503, answer.envelope)
        self.assertIn(f"recipient {bob_id} is offline, message not delivered", answer.envelope["errors"][0])
        history = yield self.ok(alice, "message_history", recipient_id=bob_id)
        [row] = history["messages"]
        self.assertEqual((row["state"], row["data"]), ("failed", {"message": "anyone?"}))
        self.assertTrue(row["error"])
        failed = [e for e in alice.events.since(0)[0] if e.event_id == "message-failed"]
        self.assertEqual(failed[0].data["message_id"], row["message_id"])

    @inlineCallbacks
    def test_a_recipient_that_does_not_ack_is_an_error_after_the_ack_timeout(self):
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        yield self.ok(bob, "service_stop", service_name=MESSAGES)  # online, but nobody takes Message packets
        answer = yield self.call(alice, "message_send", recipient_id=self.gid(bob), data={"message": "hello?"},
                                 ping_timeout=5, message_ack_timeout=0.5)
        self.assertEqual(answer.code, 503, answer.envelope)
        self.assertIn("not delivered", answer.envelope["errors"][0])
        history = yield self.ok(alice, "message_history", sender_id=self.gid(alice))
        self.assertEqual([m["state"] for m in history["messages"]], ["failed"])

    @inlineCallbacks
    def test_stopping_the_service_mid_send_answers_503_and_records_the_failure(self):
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        yield self.ok(bob, "service_stop", service_name=MESSAGES)
        sending = self.call(alice, "message_send", recipient_id=self.gid(bob), data={"message": "wait"},
                            ping_timeout=5, message_ack_timeout=30)
        service = alice.service_driver.get(MESSAGES)
        yield self.until(lambda: service.status()["sent"] == 1, "the message to be stored and sent")
        yield self.ok(alice, "service_stop", service_name=MESSAGES)
        answer = yield sending
        self.assertEqual(answer.code, 503, answer.envelope)
        self.assertIn("is stopping", answer.envelope["errors"][0])
        yield self.ok(alice, "service_start", service_name=MESSAGES)
        history = yield self.ok(alice, "message_history")
        self.assertEqual([m["state"] for m in history["messages"]], ["failed"])

    @inlineCallbacks
    def test_message_to_a_nickname(self):
        alice = yield self.user("alice", nickname="")
        bob = yield self.user("bob", nickname="bobby")
        holder = bob.service_driver.get("service_nicknames").holder
        yield self.until(lambda: holder.state == "READY", "bob to hold his nickname")
        sent = yield self.ok(alice, "message_send", recipient_id="bobby", data={"message": "hi bobby"})
        self.assertEqual(sent["recipient"], self.gid(bob))
        missing = yield self.call(alice, "message_send", recipient_id="nobody-here", data={"message": "?"})
        self.assertEqual(missing.code, 404, missing.envelope)
        # the legacy lookup reaches the same DHT records
        found = yield self.ok(alice, "find_peer_by_nickname", nickname="bobby")
        self.assertEqual(found[0]["global_id"], self.gid(bob))

    @inlineCallbacks
    def test_legacy_send_message_and_receive_one_message(self):
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        waiting = self.call(bob, "receive_one_message")
        sent = yield self.ok(alice, "send_message", recipient=self.gid(bob), message_body="plain text")
        self.assertEqual(sent["data"], {"message": "plain text"})
        answer = yield waiting
        self.assertEqual(answer.code, 200, answer.envelope)
        self.assertEqual([m["data"] for m in answer.envelope["result"]], [{"message": "plain text"}])

    @inlineCallbacks
    def test_forged_and_repeated_messages(self):
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        carol = yield self.user("carol")
        alice_id, bob_id, carol_id = self.gid(alice), self.gid(bob), self.gid(carol)
        yield self.ok(carol, "user_ping", user_id=bob_id)  # bob learns carol's identity
        carol_gateway = carol.service_driver.get("service_gateway").gateway
        carol_key = carol.service_driver.get("service_identity").keystore
        carol_key = carol_key.private_key(carol_key.master_key_id)
        bob_public = bob.service_driver.get("service_identity").my_identity().rsa_public_key()

        # Carol seals a message claiming to come from Alice and sends it herself: refused with a Fail
        forged = seal(MessageHeader(PRIVATE_MESSAGE, alice_id, bob_id, "forged-1", 1.0), {"message": "x"},
                      carol_key, bob_public)
        failure = yield self.assertFailure(carol_gateway.request(Command.MESSAGE, bob_id, forged, timeout=5),
                                           PeerRefused)
        self.assertIn("sent by", failure.reason)

        # Carol's own message, but tampered with on the way: refused
        honest = seal(MessageHeader(PRIVATE_MESSAGE, carol_id, bob_id, "carol-1", 1.0), {"message": "hi"},
                      carol_key, bob_public)
        tampered = honest[:-5] + bytes([honest[-5] ^ 1]) + honest[-4:]
        failure = yield self.assertFailure(carol_gateway.request(Command.MESSAGE, bob_id, tampered, timeout=5),
                                           PeerRefused)
        self.assertIn("signature", failure.reason)
        history = yield self.ok(bob, "message_history")
        self.assertEqual(history["total"], 0)
        self.assertEqual(bob.service_driver.info(MESSAGES)["status"]["rejected"], 2)

        # the honest one, delivered twice (a sender retrying after a lost Ack): Acked twice, stored once
        for _ in range(2):
            ack = yield carol_gateway.request(Command.MESSAGE, bob_id, honest, timeout=5)
            self.assertEqual(ack.command, "Ack")
        history = yield self.ok(bob, "message_history", recipient_id=carol_id)
        self.assertEqual([m["message_id"] for m in history["messages"]], ["carol-1"])
        self.assertEqual(bob.service_driver.info(MESSAGES)["status"]["duplicates"], 1)

    @inlineCallbacks
    def test_sending_to_myself_or_to_nobody_is_refused(self):
        alice = yield self.user("alice")
        answer = yield self.call(alice, "message_send", recipient_id=self.gid(alice), data={"message": "me"})
        self.assertEqual(answer.code, 400, answer.envelope)
        answer = yield self.call(alice, "message_send", recipient_id="ghost@127.0.0.1_1", data={"message": "?"},
                                 ping_timeout=1, message_ack_timeout=1)
        self.assertIn(answer.code, (404, 503), answer.envelope)
        history = yield self.ok(alice, "message_history")
        self.assertEqual(history["total"], 0)  # nothing was sealed, so nothing was stored

    @inlineCallbacks
    def test_broadcast_reaches_known_users_and_names_who_missed_it(self):
        alice = yield self.user("alice")
        lonely = yield self.call(alice, "broadcast_send_message", payload={"note": "anyone?"})
        self.assertEqual(lonely.code, 503, lonely.envelope)
        self.assertIn("no known peers", lonely.envelope["errors"][0])
        bob = yield self.user("bob")
        carol = yield self.user("carol")
        for peer in (bob, carol):  # Alice learns their identities
            yield self.ok(alice, "user_ping", user_id=self.gid(peer), timeout=10)
        bad = yield self.call(alice, "broadcast_send_message", payload=[None, None])
        self.assertEqual(bad.code, 400, bad.envelope)  # a 503 "reached none of 2 known peers" before
        self.assertIn("JSON object", bad.envelope["errors"][0])
        sent = yield self.ok(alice, "broadcast_send_message", payload={"note": "to all"})
        self.assertEqual(sent, {"recipients": 2, "delivered": sorted([self.gid(bob), self.gid(carol)]),
                                "failed": {}})
        for peer in (bob, carol):
            history = yield self.ok(peer, "message_history", recipient_id=self.gid(alice))
            self.assertEqual([m["data"] for m in history["messages"]], [{"note": "to all"}])
        yield self.ok(carol, "service_stop", service_name=MESSAGES)  # online, but takes no messages
        partial = yield alice.service_driver.get(MESSAGES).broadcast({"note": "again"}, 2, 0.5)
        self.assertEqual(partial["delivered"], [self.gid(bob)])
        self.assertEqual(list(partial["failed"]), [self.gid(carol)])
        self.assertIn("not delivered", partial["failed"][self.gid(carol)])
        yield self.ok(bob, "service_stop", service_name=MESSAGES)
        with self.assertRaises(Exception) as caught:
            yield alice.service_driver.get(MESSAGES).broadcast({"note": "nobody"}, 2, 0.5)
        self.assertIn("reached none of 2 known peers", str(caught.exception))
