"""In-process network: a supplier node serving two customers over real gateways on loopback.

An identity server node, one supplier (identity, gateway, DHT, service_supplier)
and two plain nodes, alice and bob (identity and gateway), in one reactor with
2048-bit keys. The customers talk to the supplier with RemoteStorageServer over
their own gateway, the way service_customer does.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from bitnode.app import api_server
from bitnode.customer.customer_service import _fail_answer
from bitnode.customer.remote_store import RemoteStorageServer
from bitnode.dht.dht_service import DHTService
from bitnode.errors import BadRequest, Forbidden, InsufficientStorage, Unavailable
from bitnode.p2p.network_service import NetworkService
from bitnode.storage import wire
from bitnode.storage.ports import BlockNotFound
from bitnode.storage.wire import NOT_A_CUSTOMER, SUPPLIERS_LAYER
from bitnode.supplier.supplier_service import SupplierService
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.transport.packet import Packet
from bitnode.userid.id_server import IdentityServerService
from bitnode.userid.id_service import IdentityService
from tests.interface.support import start_node, wait_until

PLAIN = [IdentityService, GatewayService]
SUPPLIER = [IdentityService, GatewayService, DHTService, SupplierService]


class Net:
    """Helpers shared with the customer service tests: an identity server, nodes, API calls, polling."""

    @inlineCallbacks
    def start_id_server(self, case, extra=()):
        server = yield start_node(case, service_classes=[IdentityServerService, IdentityService, *extra],
                                  overrides={"services/identity-server/enabled": True,
                                             "services/identity-server/web-port": 0,
                                             "services/entangled-dht/udp-port": 0})
        port = server.service_driver.get("service_identity_server").port
        self.base = {"personal/private-key-size": 2048, "personal/identity-servers": [f"127.0.0.1:{port}"],
                     "services/identity/fetch-timeout": 5.0, "services/tcp-connections/tcp-port": 0,
                     "services/entangled-dht/udp-port": 0}
        return server

    @inlineCallbacks
    def start_market(self, case, suppliers: int, services=SUPPLIER):
        """An identity server that is also the DHT seed, and ``suppliers`` supplier nodes (64 MiB each, running
        ``services``); their list."""
        seed = yield self.start_id_server(case, extra=[DHTService])
        dht_port = seed.service_driver.get("service_entangled_dht").dht.address[1]
        self.base.update({"services/entangled-dht/known-nodes": [f"127.0.0.1:{dht_port}"],
                          "services/entangled-dht/rpc-timeout": 0.5})
        nodes = []
        for i in range(suppliers):
            node = yield self.node(case, f"sup{i}", services, {"services/supplier/enabled": True,
                                                               "services/supplier/donated-space": 64 * 1024 * 1024},
                                   wait_for="service_supplier")
            nodes.append(node)
        return nodes

    @inlineCallbacks
    def node(self, case, name, services, overrides=None, wait_for=None):
        node = yield start_node(case, service_classes=services, overrides=dict(self.base, **(overrides or {})))
        yield ok(case, node, "identity_create", username=name)
        yield until(lambda: node.service_driver.is_on(wait_for or "service_gateway"), f"{name} to be up")
        return node


@inlineCallbacks
def ok(case, node, method, **kwargs):
    """Call an API method; it must answer 200; fires with the result."""
    answer = yield api_server(node).dispatcher.execute_by_name(method, kwargs)
    case.assertEqual(answer.code, 200, (method, answer.envelope))
    return answer.envelope["result"]


@inlineCallbacks
def until(check, what, seconds=10.0, step=0.02):
    """Poll ``check`` (it may return a Deferred) until it is true; fails naming ``what``."""
    return (yield wait_until(check, what, timeout=seconds, step=step))


def gid(node) -> str:
    return node.service_driver.get("service_identity").my_global_id()


def over_gateway(node):
    """A RemoteStorageServer request function over ``node``'s gateway (as service_customer does it)."""

    def request(supplier_id, owner_id, command, payload, payload_sha256=None):
        gateway = node.service_driver.get("service_gateway").gateway
        d = gateway.request(command, supplier_id, payload, timeout=5.0, payload_sha256=payload_sha256)
        return d.addCallbacks(lambda packet: (packet.command, packet.payload), _fail_answer)

    return request


class SupplierNetTestCase(unittest.TestCase):
    """A supplier node "sam" (``self.supplier``, its id ``self.sam``, its service ``self.service``) and plain
    customer nodes over real gateways."""

    timeout = 60

    @inlineCallbacks
    def start_supplier(self, settings: dict, customers: tuple[str, ...], services=SUPPLIER):
        """Start sam with ``settings`` (supplier on), then one plain node per name; fires with those nodes."""
        net = Net()
        yield net.start_id_server(self)
        self.supplier = yield net.node(self, "sam", services, {"services/supplier/enabled": True, **settings},
                                       wait_for="service_supplier")
        self.sam = gid(self.supplier)
        self.service = self.supplier.service_driver.get("service_supplier")
        nodes = []
        for name in customers:
            node = yield net.node(self, name, PLAIN)
            # introduce it: a node drops packets from unknown senders
            yield node.service_driver.get("service_gateway").gateway.ping(self.sam, timeout=5.0)
            nodes.append(node)
        return nodes


class SupplierServiceTests(SupplierNetTestCase):
    @inlineCallbacks
    def setUp(self):
        # No minimum charges: these tests count bytes (tests/supplier/test_attacks.py has the charges).
        self.alice, self.bob = yield self.start_supplier({"services/supplier/donated-space": 1000,
                                                          "services/supplier/min-file-charge": 0,
                                                          "services/supplier/min-dir-charge": 0}, ("alice", "bob"))

    def server(self, node):
        return RemoteStorageServer(over_gateway(node), self.sam)

    @inlineCallbacks
    def test_customers_are_served_within_the_donated_space_and_kept_apart(self):
        alice, bob = self.server(self.alice), self.server(self.bob)
        answer = yield alice.request_service(gid(self.alice), 600)
        self.assertEqual(answer, {"accepted": True, "quota_bytes": 600, "asked_bytes": 600, "used_bytes": 0,
                                  "customers": 1})
        yield self.assertFailure(bob.request_service(gid(self.bob), 600), InsufficientStorage)
        yield bob.request_service(gid(self.bob), 300)
        self.assertEqual(self.service.desk.allocated_bytes(), 900)
        self.assertIn(SUPPLIERS_LAYER, self.service.deps.dht.dht.layers)

        yield alice.store_block(gid(self.alice), "V1/0/0", b"a" * 100)
        self.assertEqual((yield alice.fetch_block(gid(self.alice), "V1/0/0")), b"a" * 100)
        self.assertEqual(list((yield alice.list_blocks(gid(self.alice), ""))), ["V1/0/0"])
        yield self.assertFailure(alice.store_block(gid(self.alice), "V1/0/1", b"b" * 600), InsufficientStorage)
        # bob asks for alice's block: he only ever sees his own space
        yield self.assertFailure(bob.fetch_block(gid(self.bob), "V1/0/0"), BlockNotFound)
        self.assertEqual((yield bob.list_blocks(gid(self.bob), "")), {})
        # naming alice as owner in a packet he signs does not help: refused and counted
        gateway = self.bob.service_driver.get("service_gateway").gateway
        forged = Packet.create(reactor, Command.DELETE_FILE, gid(self.alice), gid(self.bob), self.sam,
                               wire.encode_path("V1/0/0"), gateway.identity.packet_signer())
        answer = yield self.assertFailure(gateway.send(forged, timeout=5.0), Exception)
        self.assertIn("forbidden", str(answer))
        self.assertEqual(self.service.refused["foreign_owner"], 1)
        self.assertEqual((yield alice.fetch_block(gid(self.alice), "V1/0/0")), b"a" * 100)

        customers = yield ok(self, self.supplier, "customers_list", verbose=True)
        self.assertEqual([(c["customer_id"], c["quota_bytes"], c["used_bytes"]) for c in customers],
                         sorted([(gid(self.alice), 600, 100), (gid(self.bob), 300, 0)]))
        status = yield ok(self, self.supplier, "network_status", customers=True, suppliers=True)
        self.assertEqual(sorted(c["customer_id"] for c in status["customers"]["items"]),
                         sorted([gid(self.alice), gid(self.bob)]))
        self.assertEqual(status["customers"]["count"], 2)
        self.assertFalse(status["suppliers"]["available"])
        self.assertIn("service_customer", status["suppliers"]["reason"])
        space = yield ok(self, self.supplier, "space_donated")
        self.assertEqual((space["donated_bytes"], space["allocated_bytes"], space["used_bytes"],
                          space["customers_num"]), (1000, 900, 100, 2))
        pinged = yield ok(self, self.supplier, "customers_ping")
        self.assertEqual([p["online"] for p in pinged], [True, True])

    @inlineCallbacks
    def test_a_customer_whose_identity_moved_keeps_its_space_under_its_first_name(self):
        alice = self.server(self.alice)
        first = gid(self.alice)
        yield alice.request_service(first, 500)
        yield alice.store_block(first, "V1/0/0", b"m" * 50)
        # alice's identity moves to a second identity server: a new global id, the same key
        second_server = yield Net().start_id_server(self)
        servers = self.alice.settings.get("personal/identity-servers")
        self.alice.settings.set("personal/identity-servers", servers + [
            f"127.0.0.1:{second_server.service_driver.get('service_identity_server').port}"])
        moved = yield ok(self, self.alice, "identity_rotate")
        self.assertTrue(moved["rotation"]["moved"])
        self.assertNotEqual(moved["global_id"], first)
        # she signs as her new name; the supplier serves her first name's space
        self.assertEqual((yield alice.fetch_block(moved["global_id"], "V1/0/0")), b"m" * 50)
        yield alice.store_block(moved["global_id"], "V1/0/1", b"n" * 30)
        self.assertGreaterEqual(self.service.served["moved_customer"], 2)
        customers = yield ok(self, self.supplier, "customers_list", verbose=True)
        self.assertEqual([(c["customer_id"], c["used_bytes"]) for c in customers], [(first, 80)])
        # bob naming alice (by either name) as the owner of what he signs is still refused
        gateway = self.bob.service_driver.get("service_gateway").gateway
        for owner in (first, moved["global_id"]):
            forged = Packet.create(reactor, Command.DELETE_FILE, owner, gid(self.bob), self.sam,
                                   wire.encode_path("V1/0/0"), gateway.identity.packet_signer())
            yield self.assertFailure(gateway.send(forged, timeout=5.0), Exception)
        self.assertEqual(self.service.refused["foreign_owner"], 2)
        self.assertEqual((yield alice.fetch_block(moved["global_id"], "V1/0/0")), b"m" * 50)

    @inlineCallbacks
    def test_rejected_customer_loses_its_data_is_told_and_cannot_come_back(self):
        alice = self.server(self.alice)
        yield alice.request_service(gid(self.alice), 500)
        yield alice.store_block(gid(self.alice), "V1/0/0", b"x" * 50)
        # alice runs no market service: her node answers the notice with Fail, which counts as not notified
        gateway = self.alice.service_driver.get("service_gateway").gateway
        gateway.router.refuse([Command.CANCEL_SERVICE], NOT_A_CUSTOMER)
        result = yield ok(self, self.supplier, "customer_reject", customer_id=gid(self.alice))
        self.assertEqual((result["rejected"], result["freed_bytes"], result["notified"]), (True, 50, False))
        self.assertIn("not a customer here", result["notify_error"])
        self.assertEqual((yield ok(self, self.supplier, "customers_list")), [])
        yield self.assertFailure(alice.fetch_block(gid(self.alice), "V1/0/0"), BadRequest)
        yield self.assertFailure(alice.request_service(gid(self.alice), 10), Forbidden)
        missing = yield api_server(self.supplier).dispatcher.execute_by_name("customer_reject", {"customer_id": gid(self.bob)})
        self.assertEqual(missing.code, 404)

    @inlineCallbacks
    def test_a_stopped_supplier_says_it_is_not_running(self):
        alice = self.server(self.alice)
        yield alice.request_service(gid(self.alice), 100)
        yield ok(self, self.supplier, "service_stop", service_name="service_supplier")
        failure = yield self.assertFailure(alice.request_service(gid(self.alice), 100), Unavailable)
        self.assertIn("not running", str(failure))
        answer = yield api_server(self.supplier).dispatcher.execute_by_name("customers_list", {})
        self.assertEqual(answer.code, 503)
        space = yield ok(self, self.supplier, "space_donated")
        self.assertEqual((space["running"], space["used_bytes"]), (False, 0))
        # the contract survived the stop: back on, alice is served again
        yield ok(self, self.supplier, "service_start", service_name="service_supplier")
        yield alice.store_block(gid(self.alice), "V1/0/0", b"y")


class SupplierContractTests(SupplierNetTestCase):
    """The contract wiring over real gateways: packets renew, a silent customer's data goes, and says so."""

    @inlineCallbacks
    def setUp(self):
        (self.alice,) = yield self.start_supplier({"services/supplier/donated-space": 10 * 1024 * 1024}, ("alice",),
                                                  services=[*SUPPLIER, NetworkService])
        connector = self.supplier.service_driver.get("service_network").connector
        yield until(lambda: connector.state == "CONNECTED", "the supplier to be connected")
        self.ended = []
        self.supplier.events.subscribe(lambda event: event.event_id == "customer-contract-ended"
                                       and self.ended.append(event.data))

    @inlineCallbacks
    def test_packets_renew_and_silence_past_the_grace_removes_the_data(self):
        alice = RemoteStorageServer(over_gateway(self.alice), self.sam)
        yield alice.request_service(gid(self.alice), 1024 * 1024)
        yield alice.store_block(gid(self.alice), "V1/0/0", b"x" * 100)
        contract = self.service.desk.customers[gid(self.alice)]
        contract.silent_for = 61 * 24 * 3600.0
        yield self.alice.service_driver.get("service_gateway").gateway.ping(self.sam, timeout=5.0)
        self.assertEqual(contract.silent_for, 0.0)  # any packet from her renews the contract
        rows = yield ok(self, self.supplier, "customers_list")
        self.assertFalse(rows[0]["contract_expired"])

        asked = []
        self.service.set_record_check(lambda customer_id: asked.append(customer_id) or False)
        yield self.alice.stopService()  # silent from now on: no packet, no answer to a ping
        contract.silent_for = 61 * 24 * 3600.0
        self.assertEqual(self.service.sweeper.sweep(), [gid(self.alice)])
        yield until(lambda: self.ended, "the contract to end")
        self.assertEqual(self.ended, [{"customer_id": gid(self.alice), "reason": "expired"}])
        self.assertEqual(asked, [gid(self.alice)])
        self.assertEqual((yield ok(self, self.supplier, "customers_list")), [])
        self.assertFalse(os.path.exists(os.path.join(self.service.root, gid(self.alice))))
        info = yield ok(self, self.supplier, "service_info", service_name="service_supplier")
        self.assertEqual((info["status"]["contracts"]["removed"], info["status"]["contracts"]["ended"]),
                         (1, {"expired": 1}))

    @inlineCallbacks
    def test_a_silent_customer_whose_record_is_alive_keeps_its_data(self):
        alice = RemoteStorageServer(over_gateway(self.alice), self.sam)
        yield alice.request_service(gid(self.alice), 1024 * 1024)
        yield alice.store_block(gid(self.alice), "V1/0/0", b"x" * 100)
        yield self.alice.stopService()
        self.service.set_record_check(lambda customer_id: defer.succeed(True))
        contract = self.service.desk.customers[gid(self.alice)]
        contract.silent_for = 61 * 24 * 3600.0
        self.service.sweeper.sweep()
        yield until(lambda: self.service.sweeper.counters["kept_alive"] == 1, "the record check")
        self.assertEqual(self.ended, [])
        self.assertLess(contract.silent_for, 60.0)
        self.assertTrue(os.path.exists(os.path.join(self.service.root, gid(self.alice))))

    @inlineCallbacks
    def test_a_kept_record_naming_me_is_a_sign_of_life_of_the_customer(self):
        alice = RemoteStorageServer(over_gateway(self.alice), self.sam)
        yield alice.request_service(gid(self.alice), 1024 * 1024)
        yield self.alice.service_driver.get("service_gateway").gateway.ping(self.sam, timeout=5.0)
        yield self.alice.stopService()
        now = self.supplier.clock.seconds()
        day = 86400.0
        value = {"suppliers": [self.supplier.service_driver.get("service_identity").my_identity().idurl, ""],
                 "signed_at": now - 59 * day, "ttl": day}
        self.patch(self.service.records, "latest", lambda customer_id: value)  # the record keeper's copy
        contract = self.service.desk.customers[gid(self.alice)]
        contract.last_seen, contract.silent_for = now - 61 * day, 61 * day  # her last packet, two months ago
        self.service.sweeper.sweep()
        yield until(lambda: self.service.sweeper.counters["kept_alive"] == 1, "the record to keep the data")
        self.assertLess(contract.silent_for, 60 * day)  # counted from the record's signature
        # a record that no longer names me is no sign of life here; the ping fails too: the data goes
        value["suppliers"] = ["http://127.0.0.1:1/someone-else.xml"]
        contract.silent_for = 61 * day
        self.service.sweeper.sweep()
        yield until(lambda: self.ended, "the contract to end")
        self.assertEqual(self.service.sweeper.counters["kept_alive"], 1)
