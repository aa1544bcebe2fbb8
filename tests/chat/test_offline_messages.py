"""In-process network: private messages to an offline user wait on her suppliers and arrive once.

An identity server that is also the DHT seed, two supplier nodes, Alice (a
customer who hired them) and Bob, in one reactor on loopback; everything
through the API dispatcher.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.customer.customer_service import CustomerService
from bitnode.dht.dht_service import DHTService
from bitnode.p2p.network_service import NetworkService
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService
from tests.customer.test_customer_service import FAST_MARKET
from tests.interface.support import start_node
from tests.supplier.test_supplier_service import Net, gid, ok, until

CUSTOMER = [IdentityService, GatewayService, NetworkService, DHTService, CustomerService, PrivateMessagesService]
USER = [IdentityService, GatewayService, NetworkService, DHTService, PrivateMessagesService]
MESSAGES = "service_private_messages"
FAST = {"services/private-messages/mailbox-check-interval": 5.0}


def held_record(node) -> bool:
    """Both suppliers hired and holding the node's signed record (others find them while it is away)."""
    customer = node.service_driver.get("service_customer")
    status = customer.status()["suppliers_record"]
    return (len([s for s in customer.positions() if s]) == 2 and len(status.get("suppliers_holding", [])) == 2
            and status.get("published", 0) >= 1)


class OfflineNetwork:
    """Mixin of a TestCase: the network of the module docstring; Bob runs ``bob_services``."""

    timeout = 240
    bob_services = USER

    @inlineCallbacks
    def setUp(self):
        self.net = Net()
        self.suppliers = yield self.net.start_market(self, 2)
        self.alice = yield self.net.node(self, "alice", CUSTOMER, dict(FAST_MARKET, **FAST), wait_for=MESSAGES)
        self.bob = yield self.net.node(self, "bob", self.bob_services, dict(FAST_MARKET, **FAST), wait_for=MESSAGES)
        self.alice_id, self.bob_id = gid(self.alice), gid(self.bob)
        yield until(lambda: held_record(self.alice), "alice's suppliers to hold her record", seconds=60)

    @inlineCallbacks
    def restart(self, node, services, settings=None):
        basedir = node.basedir.root
        if node.running:
            yield node.stopService()
        overrides = dict(self.net.base, **FAST_MARKET, **FAST, **(settings or {}))
        node = yield start_node(self, service_classes=services, overrides=overrides, basedir=basedir)
        yield until(lambda: node.service_driver.is_on(MESSAGES), "the messages service after a restart", seconds=60)
        return node

    def mailbox(self, supplier):
        return supplier.service_driver.info("service_supplier")["status"]["mailbox"]

    def send(self, text):
        return ok(self, self.bob, "message_send", recipient_id=self.alice_id, data={"message": text},
                  ping_timeout=1, message_ack_timeout=1)

    @inlineCallbacks
    def history(self, node, other):
        rows = (yield ok(self, node, "message_history", recipient_id=other))["messages"]
        return list(reversed(rows))  # oldest first

    @inlineCallbacks
    def states(self, node, other):
        return [r["state"] for r in (yield self.history(node, other))]


class OfflineMessagesNetworkTests(OfflineNetwork, unittest.TestCase):
    @inlineCallbacks
    def test_messages_to_an_offline_user_wait_on_her_suppliers_and_arrive_once_in_order(self):
        yield self.alice.stopService()
        sent = []
        for text in ("one", "two", "three"):
            row = yield self.send(text)
            self.assertEqual(row["state"], "queued", row)
            sent.append(row["message_id"])
        self.assertEqual([self.mailbox(s)["messages"] for s in self.suppliers], [3, 3])

        self.bob = yield self.restart(self.bob, USER)  # the sender restarts in between
        self.alice = yield self.restart(self.alice, CUSTOMER)
        yield until(lambda: self.states(self.bob, self.alice_id).addCallback(lambda s: s == ["delivered"] * 3),
                    "bob's history to say delivered", seconds=60)
        mine = yield self.history(self.alice, self.bob_id)
        self.assertEqual([(r["message_id"], r["data"]["message"], r["direction"]) for r in mine],
                         [(m, t, "incoming") for m, t in zip(sent, ("one", "two", "three"), strict=True)])
        yield until(lambda: [self.mailbox(s)["messages"] for s in self.suppliers] == [0, 0],
                    "the suppliers' queues to be emptied", seconds=60)
        received = [e for e in self.alice.events.since(0)[0] if e.event_id == "message-received"]
        self.assertEqual(len(received), 3)
        self.assertEqual(self.alice.service_driver.info(MESSAGES)["status"]["received"], 3)

        # Alice restarts after receiving: nothing comes twice
        self.alice = yield self.restart(self.alice, CUSTOMER)
        offline = self.alice.service_driver.get(MESSAGES).offline
        yield until(lambda: offline.counts["rounds_finished"] >= 1, "a round after the restart", seconds=60)
        mine = yield self.history(self.alice, self.bob_id)
        self.assertEqual([r["message_id"] for r in mine], sent)
        self.assertEqual([e for e in self.alice.events.since(0)[0] if e.event_id == "message-received"], [])


    @inlineCallbacks
    def test_a_queued_message_the_recipient_refuses_fails_with_her_reason(self):
        yield self.alice.stopService()
        row = yield self.send("from a stranger")
        self.assertEqual(row["state"], "queued")
        # Alice takes messages from her friends only now
        self.alice = yield self.restart(self.alice, CUSTOMER, {"services/private-messages/friends-only": True})
        yield until(lambda: self.states(self.bob, self.alice_id).addCallback(lambda s: s == ["failed"]),
                    "bob's history to say failed", seconds=60)
        [mine] = yield self.history(self.bob, self.alice_id)
        self.assertIn("refused by the recipient: friends only", mine["error"])
        self.assertEqual((yield self.history(self.alice, self.bob_id)), [])
        offline = self.alice.service_driver.get(MESSAGES).offline
        self.assertEqual(offline.counts["refused"], 1)
        yield until(lambda: [self.mailbox(s)["messages"] for s in self.suppliers] == [0, 0],
                    "the refused message to leave the suppliers", seconds=60)


    @inlineCallbacks
    def test_a_recipient_online_but_out_of_direct_reach_is_told_by_her_supplier_and_gets_it_once(self):
        service = self.alice.service_driver.get(MESSAGES)
        yield ok(self, self.alice, "config_set", key="services/private-messages/mailbox-check-interval", value=3600)
        rounds = service.offline.counts["rounds"]
        service._route.handler = lambda packet, address: None  # Bob's direct Message packets get lost on the way
        row = yield ok(self, self.bob, "message_send", recipient_id=self.alice_id, data={"message": "knock knock"},
                       ping_timeout=5, message_ack_timeout=1)
        self.assertEqual(row["state"], "queued")
        # no timer round is due for an hour: her supplier's notice makes her fetch it now
        yield until(lambda: self.states(self.bob, self.alice_id).addCallback(lambda s: s == ["delivered"]),
                    "bob's history to say delivered", seconds=60)
        mine = yield self.history(self.alice, self.bob_id)
        self.assertEqual([(r["message_id"], r["data"]) for r in mine], [(row["message_id"], {"message": "knock knock"})])
        self.assertGreater(service.offline.counts["rounds"], rounds)
        self.assertGreaterEqual(sum(self.mailbox(s).get("notified", 0) for s in self.suppliers), 1)


class SenderOfflineAtDeliveryTests(OfflineNetwork, unittest.TestCase):
    """Bob hires the same suppliers: his receipt can wait there while he is away."""

    bob_services = CUSTOMER

    @inlineCallbacks
    def test_the_receipt_waits_on_the_senders_suppliers_until_he_is_back(self):
        yield until(lambda: held_record(self.bob), "bob's suppliers to hold his record", seconds=60)
        yield self.alice.stopService()
        row = yield self.send("while you were out")
        self.assertEqual(row["state"], "queued")
        yield self.bob.stopService()

        self.alice = yield self.restart(self.alice, CUSTOMER)
        receipts = self.alice.service_driver.get(MESSAGES).receipts
        yield until(lambda: receipts.counts["sent"] == 1, "alice's receipt to be queued for bob", seconds=60)
        mine = yield self.history(self.alice, self.bob_id)
        self.assertEqual([r["message_id"] for r in mine], [row["message_id"]])
        yield until(lambda: [self.mailbox(s)["messages"] for s in self.suppliers] == [1, 1],
                    "the receipt waiting on bob's suppliers (and alice's message gone from hers)", seconds=60)

        self.bob = yield self.restart(self.bob, CUSTOMER)
        yield until(lambda: self.states(self.bob, self.alice_id).addCallback(lambda s: s == ["delivered"]),
                    "bob's history to say delivered", seconds=60)
        offline = self.bob.service_driver.get(MESSAGES).offline
        yield until(lambda: offline.counts["receipts"] == 1, "bob's round to count the receipt it took")
        self.assertEqual(self.bob.service_driver.info(MESSAGES)["status"]["delivered"], 1)
        yield until(lambda: [self.mailbox(s)["messages"] for s in self.suppliers] == [0, 0],
                    "the receipt to leave the suppliers", seconds=60)
