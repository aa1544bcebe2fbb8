"""System test: private messages between real node processes on a localnet, through the public HTTP API.

One network (identity server, one supplier, one customer, 2048-bit keys) and
one test walking through the scenario: a message by nickname, both histories,
the long-poll stream and the event, the legacy names, then the recipient
goes offline and the sender gets a clear error and a ``failed`` entry.
"""

from __future__ import annotations

from tests.system.support import LocalnetTestCase, pid_alive, wait_for


class LocalnetMessagesTests(LocalnetTestCase):
    """message_send / message_history / message_receive / legacy names across processes."""

    def test_private_messages_between_processes(self) -> None:
        self.start_network(suppliers=1, customers=1, prefix="bitnode-messages-")
        alice, bob = "customer-1", "supplier-1"
        alice_id, bob_id = self.nodes[alice]["global_id"], self.nodes[bob]["global_id"]
        for name in (alice, bob):  # up answers once every enabled service is ON
            info = self.api(name, "service_info", service_name="service_private_messages")
            self.assertEqual(info["state"], "ON", info)

        # Bob listens (a new consumer starts at the end of the stream), Alice writes to his nickname
        self.assertEqual(self.api(bob, "message_receive", consumer_callback_id="ui", polling_timeout=0), [])
        last_event = self.api(bob, "event_listen", consumer_callback_id="sys", polling_timeout=0)["last_seq"]
        wait_for(lambda: self._held(bob), "bob to hold his nickname")
        sent = self.api(alice, "message_send", recipient_id=self._held(bob), data={"message": "Hola Bob!"},
                        ping_timeout=10, message_ack_timeout=10)
        self.assertEqual((sent["state"], sent["recipient"]), ("acked", bob_id))

        (got,) = self.api(bob, "message_receive", consumer_callback_id="ui", polling_timeout=10)
        self.assertEqual((got["message_id"], got["sender"], got["data"]),
                         (sent["message_id"], alice_id, {"message": "Hola Bob!"}))
        events = self.api(bob, "event_listen", consumer_callback_id="sys", since=last_event, polling_timeout=5)
        received = [e for e in events["events"] if e["event_id"] == "message-received"]
        self.assertEqual(received[0]["data"]["message_id"], sent["message_id"])

        mine = self.api(alice, "message_history", recipient_id=bob_id)["messages"]
        theirs = self.api(bob, "message_history", recipient_id=alice_id)["messages"]
        self.assertEqual([(m["message_id"], m["data"], m["state"]) for m in mine],
                         [(sent["message_id"], {"message": "Hola Bob!"}, "acked")])
        self.assertEqual([(m["message_id"], m["data"], m["state"]) for m in theirs],
                         [(sent["message_id"], {"message": "Hola Bob!"}, "received")])

        # the legacy names: Bob answers with send_message, Alice takes it with receive_one_message
        self.api(bob, "send_message", recipient=alice_id, message_body="Hola Alice")
        conversations = self.api(alice, "message_conversations_list", message_types="private_message")
        self.assertEqual((conversations["total"], conversations["conversations"][0]["messages"]), (1, 2))

        # Bob goes away: a clear 503, and the history says the message failed
        self.net.stop_node(bob, kill=False)
        wait_for(lambda: not pid_alive(self.nodes[bob]["pid"]), "bob to exit")
        code, envelope = self.call(alice, "message_send", timeout=30, recipient_id=bob_id,
                                   data={"message": "still there?"}, ping_timeout=3, message_ack_timeout=3)
        self.assertEqual(code, 503, envelope)
        self.assertIn("offline, message not delivered", envelope["errors"][0])
        latest = self.api(alice, "message_history", recipient_id=bob_id, limit=1)["messages"][0]
        self.assertEqual((latest["data"], latest["state"]), ({"message": "still there?"}, "failed"))

    def _held(self, name: str) -> str:
        status = self.api(name, "service_info", service_name="service_nicknames").get("status", {})
        return status.get("nickname", "") if status.get("state") == "READY" else ""
