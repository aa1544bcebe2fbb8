"""System test (c) of issue 17: private messages to a user who is offline, on a localnet, through the public API.

Two suppliers and two customers (real processes, 2048-bit keys). Alice
(customer-1) is stopped; Bob (customer-2) sends her three messages, which wait
on her suppliers (his history says ``queued``); Alice starts again and
receives all three exactly once, in order; Bob's history says ``delivered``.
"""

from __future__ import annotations

from tests.system.support import LocalnetTestCase, pid_alive, wait_for

TEXTS = ("first", "second", "third")


class LocalnetOfflineMessagesTests(LocalnetTestCase):
    """message_send to an offline user: queued on her suppliers, delivered once in order when she is back."""

    def test_three_messages_to_an_offline_user_arrive_once_in_order_and_the_sender_learns_it(self) -> None:
        self.start_network(suppliers=2, customers=2, prefix="bitnode-offline-messages-")
        alice, bob = "customer-1", "customer-2"
        alice_id, bob_id = self.nodes[alice]["global_id"], self.nodes[bob]["global_id"]
        # Alice's suppliers hold her signed record (so Bob finds them while she is away)
        wait_for(lambda: len(self._record(alice).get("suppliers_holding", [])) == 2,
                 "alice's suppliers to hold her record", timeout=60)

        self.net.stop_node(alice, kill=False)
        wait_for(lambda: not pid_alive(self.nodes[alice]["pid"]), "alice to exit")
        sent = []
        for text in TEXTS:
            row = self.api(bob, "message_send", recipient_id=alice_id, data={"message": text},
                           ping_timeout=2, message_ack_timeout=2)
            self.assertEqual((row["state"], row["recipient"]), ("queued", alice_id), row)
            sent.append(row["message_id"])

        self.net.start_node(alice, timeout=90)
        wait_for(lambda: self._history(alice, bob_id) if len(self._history(alice, bob_id)) >= 3 else None,
                 "alice to receive the three messages", timeout=60)
        wait_for(lambda: [m["state"] for m in self._history(bob, alice_id)] == ["delivered"] * 3,
                 "bob's history to say delivered", timeout=60)
        mine = self._history(alice, bob_id)
        self.assertEqual([(m["message_id"], m["data"], m["direction"], m["state"]) for m in mine],
                         [(i, {"message": t}, "incoming", "received") for i, t in zip(sent, TEXTS, strict=True)])
        # once: a later look at her suppliers brings nothing more
        status = self.api(alice, "service_info", service_name="service_private_messages")["status"]
        self.assertEqual((status["received"], status["duplicates"]), (3, 0), status)
        self.api(alice, "network_reconnect")
        wait_for(lambda: self.api(alice, "service_info", service_name="service_private_messages")["status"]
                 ["offline_delivery"].get("rounds_finished", 0) >= 2, "another look at alice's suppliers",
                 timeout=60)
        self.assertEqual([m["message_id"] for m in self._history(alice, bob_id)], sent)

    def _record(self, name: str) -> dict:
        info = self.api(name, "service_info", service_name="service_customer")
        return info.get("status", {}).get("suppliers_record", {})

    def _history(self, name: str, other: str) -> list[dict]:
        rows = self.api(name, "message_history", recipient_id=other, limit=100)["messages"]
        return list(reversed(rows))  # oldest first
