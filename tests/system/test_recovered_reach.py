"""System test: peers reach a node whose identity was recovered on a new machine.

One network of real processes (identity server, two suppliers, one customer,
2048-bit keys) and one test walking the user's story:

1. customer-1 and supplier-1 exchange private messages, so each side has the
   other's identity and packet key cached;
2. customer-1 writes an identity backup and its machine is lost (SIGKILL);
3. a new node without identity ("newlaptop", the ``localnet add-node`` of a
   user) recovers the identity from the backup file and comes online on ports
   of its own;
4. supplier-1 writes to the same global id: the message must be acked and show
   up on the new node (not be lost to the dead machine's old address), and the
   new node can answer supplier-1.

The time the first message to the recovered node took is printed for the record.
"""

from __future__ import annotations

import os
import time

from tests.system.support import LocalnetTestCase, pid_alive, wait_for

CUSTOMER = "customer-1"
SUPPLIER = "supplier-1"
NEW_MACHINE = "newlaptop"
SEND_TIMEOUTS = {"ping_timeout": 10, "message_ack_timeout": 10}
ONLINE_DEADLINE = 30.0


class RecoveredReachTests(LocalnetTestCase):
    """message_send both ways between a supplier and a customer recovered on a new node."""

    def test_peers_reach_a_node_recovered_on_a_new_machine(self) -> None:
        self.start_network(suppliers=2, customers=1, prefix="bitnode-reach-", timeout=60)
        customer_id = self.nodes[CUSTOMER]["global_id"]
        supplier_id = self.nodes[SUPPLIER]["global_id"]
        for name in (CUSTOMER, SUPPLIER):
            info = self.api(name, "service_info", service_name="service_private_messages")
            self.assertEqual(info["state"], "ON", info)

        # 1. both know each other before the old machine goes away
        self.send_and_check_arrival(CUSTOMER, SUPPLIER, "hello from the old laptop")
        self.send_and_check_arrival(SUPPLIER, CUSTOMER, "hello old laptop")

        # 2. back up the identity, then the old machine is lost
        backup_file = os.path.join(self.dir, "customer-1.backup")
        backup = self.api(CUSTOMER, "identity_backup", destination_filepath=backup_file)
        self.assertEqual(backup["global_id"], customer_id)
        self.assertTrue(os.path.isfile(backup_file))
        old = self.api(CUSTOMER, "identity_get")
        cached = self.cached_identity(SUPPLIER, customer_id)
        self.assertEqual((cached["revision"], cached["contacts"]), (old["revision"], old["contacts"]))
        old_pid = self.nodes[CUSTOMER]["pid"]
        self.net.stop_node(CUSTOMER, kill=True)
        self.assertFalse(pid_alive(old_pid))

        # 3. a new node with no identity recovers it from the backup file
        self.nodes[NEW_MACHINE] = self.net.add_node(NEW_MACHINE, key_size=2048)
        self.assertIsNone(self.nodes[NEW_MACHINE]["global_id"])
        self.assertNotEqual(self.nodes[NEW_MACHINE]["ports"]["tcp"], self.nodes[CUSTOMER]["ports"]["tcp"])
        recovered = self.api(NEW_MACHINE, "identity_recover", private_key_source=backup_file)
        self.assertEqual(recovered["global_id"], customer_id)
        self.wait_online(NEW_MACHINE)
        # the new machine listens elsewhere: it publishes a new revision naming its own address
        now = wait_for(lambda: self.republished(NEW_MACHINE, old["revision"]),
                       f"{NEW_MACHINE} to publish a new revision of the identity", timeout=10)
        self.assertEqual(now["global_id"], customer_id)
        self.assertNotEqual(now["contacts"], old["contacts"])
        self.assertEqual(self.api(NEW_MACHINE, "message_receive", consumer_callback_id="reach",
                                  polling_timeout=0), [])

        # 4. the supplier writes to the same global id: the new machine gets it
        started = time.monotonic()
        sent = self.api(SUPPLIER, "message_send", recipient_id=customer_id,
                        data={"message": "are you on the new laptop?"}, **SEND_TIMEOUTS)
        seconds = time.monotonic() - started
        self.assertEqual((sent["state"], sent["recipient"]), ("acked", customer_id), sent)
        (got,) = self.api(NEW_MACHINE, "message_receive", consumer_callback_id="reach", polling_timeout=10)
        self.assertEqual((got["message_id"], got["sender"], got["data"]),
                         (sent["message_id"], supplier_id, {"message": "are you on the new laptop?"}))
        theirs = self.api(NEW_MACHINE, "message_history", recipient_id=supplier_id)["messages"]
        self.assertIn((sent["message_id"], {"message": "are you on the new laptop?"}, "received"),
                      [(m["message_id"], m["data"], m["state"]) for m in theirs])
        latest = self.api(SUPPLIER, "message_history", recipient_id=customer_id, limit=1)["messages"][0]
        self.assertEqual((latest["message_id"], latest["state"]), (sent["message_id"], "acked"))
        # supplier-1 no longer holds the dead machine's address for customer-1
        cached = self.cached_identity(SUPPLIER, customer_id)
        self.assertEqual((cached["revision"], cached["contacts"]), (now["revision"], now["contacts"]))

        # and the other way round
        self.send_and_check_arrival(NEW_MACHINE, SUPPLIER, "yes, recovered")
        print(f"\nsupplier-1 -> recovered {CUSTOMER}: acked in {seconds:.2f}s")

    # --- steps ---------------------------------------------------------------------------------

    def send_and_check_arrival(self, sender: str, recipient: str, text: str) -> dict:
        """``sender`` writes ``text`` to ``recipient``'s global id: acked, and in the recipient's history."""
        sender_id = self.api(sender, "identity_get")["global_id"]
        recipient_id = self.api(recipient, "identity_get")["global_id"]
        sent = self.api(sender, "message_send", recipient_id=recipient_id, data={"message": text},
                        **SEND_TIMEOUTS)
        self.assertEqual((sent["state"], sent["recipient"]), ("acked", recipient_id), sent)

        def arrived():
            rows = self.api(recipient, "message_history", recipient_id=sender_id)["messages"]
            return [m for m in rows if m["message_id"] == sent["message_id"]]

        (row,) = wait_for(arrived, f"{text!r} to arrive at {recipient}", timeout=10)
        self.assertEqual((row["data"], row["state"]), ({"message": text}, "received"), row)
        return sent

    def republished(self, name: str, old_revision: int) -> dict | None:
        """Node ``name``'s identity once its revision is above ``old_revision``."""
        identity = self.api(name, "identity_get")
        return identity if identity["revision"] > old_revision else None

    def cached_identity(self, name: str, global_id: str) -> dict:
        """The identity of ``global_id`` in node ``name``'s identity cache."""
        rows = [row for row in self.api(name, "identity_cache_list") if row["global_id"] == global_id]
        self.assertEqual(len(rows), 1, (name, global_id, rows))
        return rows[0]

    def wait_online(self, name: str) -> None:
        """Bounded wait: ``network_connected`` answers 200 and every enabled service is ON."""
        deadline = time.monotonic() + ONLINE_DEADLINE
        answers: list[tuple[int, dict]] = []

        def connected():
            # Right after identity_recover the services that need an identity are still starting:
            # network_connected answers 503 "not running" at once until service_network is up.
            answers[:] = [self.call(name, "network_connected", wait_timeout=5, timeout=10)]
            return answers[0][0] == 200

        try:
            wait_for(connected, f"{name} to be connected", timeout=ONLINE_DEADLINE)
        except AssertionError as err:
            raise AssertionError(f"{err}: last answer {answers}") from None
        not_on: list[str] = []

        def all_on():
            rows = self.api(name, "services_list")
            not_on[:] = [f"{r['name']} {r['state']} {r.get('reason') or ''}".strip()
                         for r in rows if r.get("enabled") and r.get("state") != "ON"]
            return not not_on

        try:
            wait_for(all_on, f"the services of {name} to be ON", timeout=max(1.0, deadline - time.monotonic()))
        except AssertionError as err:
            raise AssertionError(f"{err}: {'; '.join(not_on)}") from None
