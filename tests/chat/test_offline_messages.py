"""In-process network: a private message to an offline user waits on her suppliers and arrives once.

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

ALICE = [IdentityService, GatewayService, NetworkService, DHTService, CustomerService, PrivateMessagesService]
BOB = [IdentityService, GatewayService, NetworkService, DHTService, PrivateMessagesService]
MESSAGES = "service_private_messages"
FAST = {"services/private-messages/mailbox-check-interval": 5.0}


class OfflineMessagesNetworkTests(unittest.TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.net = Net()
        self.suppliers = yield self.net.start_market(self, 2)
        self.alice = yield self.net.node(self, "alice", ALICE, dict(FAST_MARKET, **FAST), wait_for=MESSAGES)
        self.bob = yield self.net.node(self, "bob", BOB, FAST, wait_for=MESSAGES)
        self.alice_id, self.bob_id = gid(self.alice), gid(self.bob)
        customer = self.alice.service_driver.get("service_customer")

        def record_held():
            # both suppliers hired and holding Alice's signed record: Bob can find them while she is away
            status = customer.status()["suppliers_record"]
            return len([s for s in customer.positions() if s]) == 2 and len(status.get("suppliers_holding", [])) == 2 \
                and status.get("published", 0) >= 1

        yield until(record_held, "alice's suppliers to hold her record", seconds=60)

    @inlineCallbacks
    def restart(self, node, services):
        basedir = node.basedir.root
        if node.running:
            yield node.stopService()
        node = yield start_node(self, service_classes=services, overrides=dict(self.net.base, **FAST_MARKET, **FAST),
                                basedir=basedir)
        yield until(lambda: node.service_driver.is_on(MESSAGES), "the messages service after a restart")
        return node

    def mailbox(self, supplier):
        return supplier.service_driver.info("service_supplier")["status"]["mailbox"]

    @inlineCallbacks
    def history(self, node, other):
        rows = (yield ok(self, node, "message_history", recipient_id=other))["messages"]
        return list(reversed(rows))  # oldest first

    @inlineCallbacks
    def test_messages_to_an_offline_user_wait_on_her_suppliers_and_arrive_once_in_order(self):
        yield self.alice.stopService()
        sent = []
        for text in ("one", "two", "three"):
            row = yield ok(self, self.bob, "message_send", recipient_id=self.alice_id, data={"message": text},
                           ping_timeout=1, message_ack_timeout=1)
            self.assertEqual(row["state"], "queued", row)
            sent.append(row["message_id"])
        self.assertEqual([self.mailbox(s)["messages"] for s in self.suppliers], [3, 3])

        self.bob = yield self.restart(self.bob, BOB)  # the sender restarts in between
        self.alice = yield self.restart(self.alice, ALICE)

        @inlineCallbacks
        def delivered():
            rows = yield self.history(self.bob, self.alice_id)
            return [r["state"] for r in rows] == ["delivered"] * 3

        yield until(delivered, "bob's history to say delivered", seconds=30)
        mine = yield self.history(self.alice, self.bob_id)
        self.assertEqual([(r["message_id"], r["data"]["message"], r["direction"]) for r in mine],
                         [(m, t, "incoming") for m, t in zip(sent, ("one", "two", "three"), strict=True)])
        yield until(lambda: [self.mailbox(s)["messages"] for s in self.suppliers] == [0, 0],
                    "the suppliers' queues to be emptied")
        received = [e for e in self.alice.events.since(0)[0] if e.event_id == "message-received"]
        self.assertEqual(len(received), 3)
        status = self.alice.service_driver.info(MESSAGES)["status"]
        self.assertEqual(status["received"], 3)

        # Alice restarts after receiving: nothing comes twice
        self.alice = yield self.restart(self.alice, ALICE)
        offline = self.alice.service_driver.get(MESSAGES).offline
        yield until(lambda: offline.counts["rounds"] >= 1 and offline.status()["checking"] is False,
                    "a round after the restart")
        mine = yield self.history(self.alice, self.bob_id)
        self.assertEqual([r["message_id"] for r in mine], sent)
        self.assertEqual([e for e in self.alice.events.since(0)[0] if e.event_id == "message-received"], [])
