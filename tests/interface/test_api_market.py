"""Tests for bitnode.interface.api_market: suppliers_*, customers_*, space_* through the dispatcher.

Real Nodes run the real service_customer / service_supplier, but their
neighbours (identity, gateway, network, DHT) are small in-memory fakes: the
"network" is a dict of supplier desks on disk, so the shapes and the errors
are checked without sockets. The real network is in
tests/customer/test_customer_service.py and tests/supplier/test_supplier_service.py.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode import globalid
from bitnode.crypt import keys
from bitnode.customer.customer_service import CustomerService
from bitnode.customer.suppliers_record import suppliers_key
from bitnode.errors import NotFound, Unavailable
from bitnode.services.base import Service
from bitnode.supplier.desk import SupplierDesk
from bitnode.supplier.disk_store import DiskStore
from bitnode.supplier.supplier_service import SupplierService
from bitnode.transport.commands import Command
from bitnode.transport.packet_out import PeerRefused
from bitnode.transport.router import PacketRouter
from tests.interface.support import OwnNodeCalls, start_node, wait_until

ME = "carol@127.0.0.1_8084"
SUPPLIERS = [f"s{i}@127.0.0.1_8084" for i in range(5)]


class World:
    """What the fakes share: supplier desks (the 'network') and DHT records."""

    def __init__(self, case):
        self.desks = {}
        self.records = {}
        self.offline = set()
        self.master_keys = {}
        for supplier_id in SUPPLIERS:
            root = case.mktemp()
            os.makedirs(root)
            self.desks[supplier_id] = SupplierDesk(DiskStore(os.path.join(root, "customers")),
                                                   os.path.join(root, "contracts.json"), lambda: 10**9, Clock())

    def master_key(self, global_id: str) -> keys.RsaPrivateKey:
        """The master key of a user of this world (made on first use)."""
        if global_id not in self.master_keys:
            self.master_keys[global_id] = keys.generate_rsa(2048)
        return self.master_keys[global_id]


class FakeGateway:
    def __init__(self, world, me):
        self.world, self.my_id = world, me
        self.sent = []
        self.router = PacketRouter(lambda packet, text: defer.succeed(None))

    def add_listener(self, listener):
        pass

    def remove_listener(self, listener):
        pass

    def ping(self, remote_id, timeout=None):
        if remote_id in self.world.offline:
            return defer.fail(Unavailable(f"{remote_id} is offline"))
        return defer.succeed(None)

    def request(self, command, remote_id, payload=b"", timeout=None, payload_sha256=None):
        self.sent.append((str(command), remote_id))
        desk = self.world.desks.get(remote_id)
        if desk is None or remote_id in self.world.offline:
            return defer.fail(PeerRefused("refused", "not a customer here"))
        d = desk.handle(self.my_id, str(command), payload)

        def answer(reply):
            if reply[0] == Command.FAIL:
                raise PeerRefused("refused", reply[1].decode())
            return SimpleNamespace(command=reply[0], payload=reply[1], streamed_prefix_sha256=lambda _length: None)

        return d.addCallback(answer)


def make_fakes(world: World, me: str) -> list:
    """The neighbour services of one node, bound to the shared world and to the node's own id."""

    class FakeIdentityService(Service):
        name = "service_identity"

        def my_global_id(self):
            return me

        def require_global_id(self):
            return me

        def my_idurl(self):
            return globalid.global_id_to_idurl(me)

        def is_me(self, name):
            return name == me

        def current_id(self, name):
            return str(globalid.to_global_id(name))  # nobody here ever moves

        def same_user(self, first, second):
            return self.current_id(first) == self.current_id(second)

        def master_private_key(self):
            return world.master_key(me)

        def fetch_identity(self, who, refresh=False, stranger=False):
            gid = str(globalid.to_global_id(who))
            idurl = globalid.global_id_to_idurl(gid)
            public = world.master_key(gid).public_key()
            return defer.succeed(SimpleNamespace(idurl=idurl, sources=(idurl,), rsa_public_key=lambda: public))

    class FakeGatewayService(Service):
        name = "service_gateway"
        requires = {"identity": FakeIdentityService}

        def start(self):
            self.gateway = FakeGateway(world, me)

        def require_gateway(self):
            return self.gateway

    class FakeNetworkService(Service):
        name = "service_network"
        requires = {"gateway": FakeGatewayService}

        def start(self):
            gateway = self.deps.gateway.gateway
            self.online = SimpleNamespace(ping=lambda who, timeout: gateway.ping(who, timeout),
                                          status=lambda who: {"online": who not in gateway.world.offline})
            self.connector = SimpleNamespace(state="CONNECTED", destroyed=False, event=lambda name: None)

        def require_online(self):
            return self.online

    class FakeDHTService(Service):
        name = "service_entangled_dht"
        requires = {"identity": FakeIdentityService}

        def start(self):
            self.dht = self

        def stats(self):
            return {"contacts": {"0": 1}}

        def join_layer(self, layer_id):
            return defer.succeed(1)

        def random_nodes(self, layer_id, count):
            users = [{"user": globalid.global_id_to_idurl(s)} for s in SUPPLIERS]
            return defer.succeed(users[:count])

        def set_value(self, key, value, expire=None, record_type="skip_validation", layer_id=0):
            record = {"key": key, "value": value, "record_type": record_type, "writer_pubkey": "key-" + me,
                      "created": 1, "expires": 2}
            world.records[key] = record
            return defer.succeed(record)

        def get_value(self, key, record_type=None, layer_id=0, use_cache_ttl=None):
            record = world.records.get(key)
            return defer.succeed(record) if record else defer.fail(NotFound(f"no DHT record for {key!r}"))

    return [FakeIdentityService, FakeGatewayService, FakeNetworkService, FakeDHTService]




class MarketApiTests(OwnNodeCalls, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.world = World(self)
        self.node = yield self.market_node(ME, [CustomerService], {"services/customer/enabled": True,
                                                                   "services/customer/suppliers-number": 3,
                                                                   "services/customer/needed-space": 3000})
        self.service = self.node.service_driver.get("service_customer")

    @defer.inlineCallbacks
    def market_node(self, me, services, overrides):
        node = yield start_node(self, service_classes=make_fakes(self.world, me) + services, overrides=overrides)
        return node

    @defer.inlineCallbacks
    def test_suppliers_list_shape_and_quota_rule(self):
        rows = yield self.ok("suppliers_list")
        self.assertEqual([r["supplier_id"] for r in rows], SUPPLIERS[:3])
        # needed 3000 bytes, k = ceil(3/2) = 2: 1500 per supplier plus 1/16; the bare desks here do not
        # report used bytes (service_supplier adds them to its answer)
        self.assertEqual(rows[0], {"position": 0, "supplier_id": SUPPLIERS[0],
                                   "idurl": globalid.global_id_to_idurl(SUPPLIERS[0]), "state": "CONNECTED",
                                   "online": True, "quota_bytes": 1593, "used_bytes": None, "retiring": False,
                                   "waiting": "", "rebuild": []})
        verbose = yield self.ok("suppliers_list", verbose=True)
        self.assertEqual(set(verbose[0]) - set(rows[0]), {"automat", "offline_for", "last_seen", "failures",
                                                          "refusal"})
        self.assertEqual(self.world.desks[SUPPLIERS[0]].customers[ME].quota_bytes, 1593)
        space = yield self.ok("space_consumed")
        self.assertEqual((space["needed_bytes"], space["quota_per_supplier"], space["suppliers_num"],
                          space["data_blocks"]), (3000, 1593, 3, 2))
        # a bigger need asks the suppliers again with the new quota
        yield self.ok("config_set", key="services/customer/needed-space", value=6000)
        self.assertEqual(self.world.desks[SUPPLIERS[0]].customers[ME].quota_bytes, 3187)
        pinged = yield self.ok("suppliers_ping")
        self.assertEqual([r["state"] for r in pinged], ["CONNECTED"] * 3)

    @defer.inlineCallbacks
    def test_supplier_change_by_position_id_and_legacy_names(self):
        gateway = self.node.service_driver.get("service_gateway").gateway
        # hiring asked several candidates and cancelled the busier ones: only what follows the change counts
        sent_before = len(gateway.sent)
        changed = yield self.ok("supplier_change", position=1, new_supplier_id=SUPPLIERS[4])
        retiring = changed.pop("retiring")
        self.assertEqual(changed, {"position": 1, "old_supplier_id": SUPPLIERS[1],
                                   "new_supplier_id": SUPPLIERS[4], "replacing": True, "waiting": "",
                                   "roster": [SUPPLIERS[0], SUPPLIERS[4], SUPPLIERS[2]]})
        self.assertEqual([(r["supplier_id"], r["position"], r["reason"], r["fault"]) for r in retiring],
                         [(SUPPLIERS[1], 1, "replaced on request", False)])
        self.assertEqual(self.service.roster.positions, [SUPPLIERS[0], SUPPLIERS[4], SUPPLIERS[2]])
        # the old one keeps its blocks (no CancelService) until they are rebuilt on the new one
        self.assertNotIn(("CancelService", SUPPLIERS[1]), gateway.sent[sent_before:])
        rows = yield self.ok("suppliers_list")
        self.assertEqual([(r["position"], r["supplier_id"], r["state"]) for r in rows if r["retiring"]],
                         [(1, SUPPLIERS[1], "RETIRING")])
        self.assertEqual(rows[1]["rebuild"], [{"from": SUPPLIERS[1]}])
        self.assertTrue(self.service.release(SUPPLIERS[1]))  # the SupplierProvider port storage uses
        self.assertIn(("CancelService", SUPPLIERS[1]), gateway.sent[sent_before:])
        # legacy supplier_replace(index_or_idurl) with an IDURL: a random new one (s1: replaced on request
        # and released, it may be hired again)
        yield self.ok("supplier_replace", index_or_idurl=globalid.global_id_to_idurl(SUPPLIERS[2]))
        self.assertEqual(self.service.roster.positions, [SUPPLIERS[0], SUPPLIERS[4], SUPPLIERS[1]])
        # legacy supplier_change(index_or_idurl, new_idurl)
        yield self.ok("supplier_change", index_or_idurl="0", new_idurl=globalid.global_id_to_idurl(SUPPLIERS[3]))
        self.assertEqual(self.service.roster.positions, [SUPPLIERS[3], SUPPLIERS[4], SUPPLIERS[1]])

        self.assertIn("position or supplier_id", (yield self.error(400, "supplier_change")))
        yield self.error(400, "supplier_change", position=9)
        yield self.error(404, "supplier_change", supplier_id="nobody@127.0.0.1_8084")
        yield self.error(409, "supplier_change", position=0, new_supplier_id=SUPPLIERS[4])
        yield self.error(400, "supplier_change", position=0, new_supplier_id=ME)
        yield self.error(400, "supplier_change", position=2, supplier_id=SUPPLIERS[4])
        yield self.error(400, "supplier_change", supplier_id="not an id")

    @defer.inlineCallbacks
    def test_dht_record_and_its_writer_check(self):
        yield wait_until(lambda: self.service.dht_revision == self.service.roster.revision,
                         "the suppliers record to be published")
        found = yield self.ok("suppliers_dht_lookup")
        self.assertEqual((found["customer_id"], found["suppliers"], found["ecc_map"], found["writer_verified"]),
                         (ME, SUPPLIERS[:3], "2-of-3", True))
        self.assertEqual(found["revision"], self.service.roster.revision)
        yield self.error(404, "suppliers_dht_lookup", customer_id="dave@127.0.0.1_8084")
        # a record under carol's key that her key did not sign is not believed (whoever stored it)
        record = self.world.records[suppliers_key(self.world.master_key(ME))]
        record["value"] = dict(record["value"], suppliers=list(reversed(record["value"]["suppliers"])))
        self.assertIn("does not verify", (yield self.error(409, "suppliers_dht_lookup", customer_id=ME)))
        yield self.error(400, "suppliers_dht_lookup", customer_id="???")

    @defer.inlineCallbacks
    def test_a_rejection_notice_fires_the_supplier(self):
        gateway = self.node.service_driver.get("service_gateway").gateway
        replies = []
        gateway.reply = lambda packet, command, payload=b"": replies.append(str(command)) or defer.succeed(None)
        notice = SimpleNamespace(creator_id=SUPPLIERS[1], payload=b'{"rejected":true,"reason":"bye"}')
        yield self.service.supplier_rejected(notice, gateway)
        self.assertEqual(replies, ["Ack"])
        self.assertEqual(self.service.roster.positions[1], SUPPLIERS[3])
        yield self.service.supplier_rejected(SimpleNamespace(creator_id="x@127.0.0.1_8084", payload=b""), gateway)
        self.assertEqual(replies, ["Ack", "Fail"])

    @defer.inlineCallbacks
    def test_supplier_side_methods(self):
        sam = yield self.market_node(SUPPLIERS[0], [SupplierService], {"services/supplier/enabled": True,
                                                                        "services/supplier/donated-space": 50000})
        service = sam.service_driver.get("service_supplier")
        yield service.desk.accept(ME, 20000)
        yield service.desk.store.store_block(ME, "V1/0/0", b"z" * 10)
        rows = yield self.ok("customers_list", node=sam)
        month = 30 * 24 * 3600.0
        row = rows[0]
        # used_bytes is what counts against the quota: the 10-byte file at the 4 KiB minimum, and its 2 directories
        self.assertEqual(len(rows), 1)
        self.assertEqual({k: row[k] for k in ("customer_id", "idurl", "quota_bytes", "used_bytes", "stored_bytes",
                                              "files", "online", "contract_expired")},
                         {"customer_id": ME, "idurl": globalid.global_id_to_idurl(ME), "quota_bytes": 20000,
                          "used_bytes": 3 * 4096, "stored_bytes": 10, "files": 1, "online": True,
                          "contract_expired": False})
        self.assertLess(abs(row["contract_expires"] - (row["last_seen"] + month)), 60)
        self.assertLess(abs(row["data_removed_after"] - (row["last_seen"] + 2 * month)), 60)
        self.assertIn("since", (yield self.ok("customers_list", node=sam, verbose=True))[0])
        space = yield self.ok("space_donated", node=sam)
        self.assertEqual((space["running"], space["donated_bytes"], space["allocated_bytes"], space["used_bytes"],
                          space["free_bytes"], space["customers_num"]), (True, 50000, 20000, 10, 49990, 1))
        pinged = yield self.ok("customers_ping", node=sam)
        self.assertEqual(pinged[0]["customer_id"], ME)
        self.assertTrue(pinged[0]["online"])
        rejected = yield self.ok("customer_reject", node=sam, idurl=globalid.global_id_to_idurl(ME))
        self.assertEqual((rejected["customer_id"], rejected["freed_bytes"]), (ME, 10))
        self.assertFalse(os.path.exists(os.path.join(service.root, ME)))
        yield self.error(404, "customer_reject", node=sam, customer_id=ME)
        yield self.error(400, "customer_reject", node=sam)

    @defer.inlineCallbacks
    def test_methods_answer_503_without_their_service(self):
        plain = yield self.market_node("dave@127.0.0.1_8084", [], {})
        for method in ("suppliers_list", "suppliers_ping", "customers_list", "customers_ping", "space_donated"):
            yield self.error(503, method, node=plain)
        yield self.error(503, "supplier_change", node=plain, position=0)
        yield self.error(503, "customer_reject", node=plain, customer_id=ME)
        consumed = yield self.ok("space_consumed", node=plain)
        self.assertFalse(consumed["running"])
        local = yield self.ok("space_local", node=plain)
        self.assertGreater(local["disk_total_bytes"], 0)
        self.assertGreaterEqual(local["basedir_bytes"], local["metadata_bytes"])
        self.assertEqual(local["customers_bytes"], 0)
        yield self.ok("service_stop", service_name="service_customer")
        yield self.error(503, "suppliers_list")
        consumed = yield self.ok("space_consumed")
        self.assertFalse(consumed["running"])
