"""In-process market: one customer hires suppliers found in the DHT, keeps, fires and replaces them.

An identity server that is also the DHT seed, four supplier nodes and one
customer node, all in one reactor on loopback with 2048-bit keys. The
customer's checks are made fast by settings (ping every 0.3 s, a supplier
offline for 1 s is dead), so the whole life of a roster fits in a few seconds.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.customer.customer_service import CustomerService
from bitnode.customer.fire_hire import FireHire
from bitnode.customer.remote_store import error_from_fail
from bitnode.customer.roster import SupplierRoster
from bitnode.customer.supplier_connector import SupplierConnector
from bitnode.customer.supplier_finder import SupplierFinder
from bitnode.dht.dht_service import DHTService
from bitnode.errors import Forbidden, Unavailable
from bitnode.p2p.network_service import NetworkService
from bitnode.storage.downloader import Downloader
from bitnode.storage.uploader import Uploader
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService
from tests.customer.test_supplier_market import FakeNetwork
from tests.supplier.test_supplier_service import Net, gid, ok, until

CUSTOMER = [IdentityService, GatewayService, NetworkService, DHTService, CustomerService]
FAST_MARKET = {
    "services/customer/enabled": True, "services/customer/suppliers-number": 2,
    "services/customer/needed-space": 1024 * 1024, "services/customer/dead-after": 1.0,
    "services/customer/ping-interval": 0.3, "services/customer/check-interval": 0.5,
    "services/customer/request-timeout": 2.0, "services/customer/block-timeout": 5.0,
}


class CustomerServiceNetworkTests(unittest.TestCase):
    timeout = 90

    @inlineCallbacks
    def setUp(self):
        net = Net()
        self.suppliers = yield net.start_market(self, 4)
        self.customer = yield net.node(self, "carol", CUSTOMER, FAST_MARKET, wait_for="service_customer")
        self.service = self.customer.service_driver.get("service_customer")

    def by_id(self, global_id):
        return next(node for node in self.suppliers if gid(node) == global_id)

    @inlineCallbacks
    def connected(self, count):
        """Wait until exactly ``count`` positions hold CONNECTED suppliers (and no more positions); the rows."""

        @inlineCallbacks
        def check():
            rows = [r for r in (yield ok(self, self.customer, "suppliers_list")) if not r["retiring"]]
            if len(rows) == count and all(r["state"] == "CONNECTED" for r in rows):
                return rows
            return None

        rows = yield until(check, f"{count} connected suppliers")
        return rows

    @inlineCallbacks
    def test_hire_grow_replace_reject_and_shrink(self):
        rows = yield self.connected(2)
        first = [r["supplier_id"] for r in rows]
        status = yield ok(self, self.customer, "network_status", suppliers=True)
        self.assertEqual([r["supplier_id"] for r in status["suppliers"]["items"]], first)
        self.assertEqual(rows[0]["quota_bytes"], 1024 * 1024 + 1024 * 1024 // 16)  # k=1 of n=2, plus 1/16
        self.assertEqual(rows[0]["used_bytes"], 0)
        machines = {(m["name"], m["state"]) for m in (yield ok(self, self.customer, "automats_list"))}
        self.assertIn(("fire_hire", "READY"), machines)
        self.assertIn(("supplier_finder", "READY"), machines)
        self.assertIn(("supplier_connector", "CONNECTED"), machines)
        self.assertIsNone(self.service.settled())
        with open(os.path.join(self.customer.basedir.metadata, "suppliers.json")) as handle:
            self.assertIn(first[0], handle.read())

        # the suppliers record is signed by carol and readable by anyone
        me = gid(self.customer)

        def published():
            return self.service.dht_revision == self.service.roster.revision

        yield until(published, "the suppliers record to be published")
        found = yield ok(self, self.suppliers[0], "suppliers_dht_lookup", customer_id=me)
        self.assertEqual((found["suppliers"], found["writer_verified"], found["ecc_map"]), (first, True, "1-of-2"))
        remote = yield ok(self, self.suppliers[0], "suppliers_list", customer_id=me)
        self.assertEqual([r["supplier_id"] for r in remote], first)

        # blocks go to the hired suppliers and come back
        yield self.upload_and_download()

        # a (re)start says the suppliers are there: storage may have come up first and found none
        seq = self.customer.events.last_seq
        yield self.customer.service_driver.restart("service_customer")
        events = [e for e in self.customer.events.since(seq)[0] if e.event_id == "suppliers-changed"]
        self.assertEqual([(e.data["reason"], e.data["positions"]) for e in events], [("service started", first)])
        self.service = self.customer.service_driver.get("service_customer")
        yield self.connected(2)

        # grow: one more supplier is hired at the next position
        yield ok(self, self.customer, "config_set", key="services/customer/suppliers-number", value=3)
        rows = yield self.connected(3)
        self.assertEqual([r["supplier_id"] for r in rows][:2], first)

        # a hired supplier goes away: after dead-after it is fired and replaced in the same position
        dead = rows[1]["supplier_id"]
        yield self.by_id(dead).stopService()

        def replaced():
            positions = self.service.roster.positions
            connector = self.service.fire_hire.connectors.get(positions[1])
            return positions[1] not in ("", dead) and connector is not None and connector.state == "CONNECTED"

        yield until(replaced, "the dead supplier to be replaced")
        events = [e for e in self.customer.events.since(0)[0] if e.event_id == "suppliers-changed"]
        self.assertIn(f"fired {dead} at 1", " ".join(e.data["reason"] for e in events))

        # the supplier at position 2 rejects carol: she is told, fires it, and finds nobody left to hire
        rejecter = self.by_id(self.service.roster.positions[2])
        result = yield ok(self, rejecter, "customer_reject", customer_id=me)
        self.assertTrue(result["notified"], result)
        yield until(lambda: self.service.roster.positions[2] == "", "the rejecting supplier to be fired")
        rows = yield ok(self, self.customer, "suppliers_list", verbose=True)
        self.assertEqual(rows[2]["state"], "EMPTY")

        # shrink back to two: the empty last position goes
        yield ok(self, self.customer, "config_set", key="services/customer/suppliers-number", value=2)
        rows = yield self.connected(2)
        self.assertEqual(rows[0]["supplier_id"], first[0])
        space = yield ok(self, self.customer, "space_consumed")
        self.assertEqual((space["suppliers_num"], space["wanted_suppliers"]), (2, 2))

    @inlineCallbacks
    def test_without_a_roster_the_dht_record_gives_the_positions_and_their_number(self):
        yield ok(self, self.customer, "config_set", key="services/customer/suppliers-number", value=3)
        hired = [r["supplier_id"] for r in (yield self.connected(3))]
        yield until(lambda: self.service.dht_revision == self.service.roster.revision, "the record to be published")
        driver, settings = self.customer.service_driver, self.customer.settings
        yield driver.stop("service_customer")
        os.remove(self.service.roster_file)  # a new machine: only the identity is there
        settings.set("services/customer/suppliers-number", 2)
        seq = self.customer.events.last_seq
        yield driver.start("service_customer")
        yield until(lambda: self.service.recovered_from_dht, "the positions to come from the DHT")
        # fewer wanted suppliers would fire (and so empty) the last position: the record's n is kept
        self.assertEqual(settings.get("services/customer/suppliers-number"), 3)
        self.assertEqual([r["supplier_id"] for r in (yield self.connected(3))], hired)
        reasons = [e.data["reason"] for e in self.customer.events.since(seq)[0] if e.event_id == "suppliers-changed"]
        self.assertEqual(reasons, ["recovered from the DHT"])

    @inlineCallbacks
    def upload_and_download(self):
        provider = self.service  # the SupplierProvider port service_backups uses
        servers = [provider.server(s) for s in provider.positions()]
        source = self.mktemp()
        data = os.urandom(150_000)
        with open(source, "wb") as handle:
            handle.write(data)
        key, me = os.urandom(32), gid(self.customer)
        uploader = Uploader(self.customer.run_in_thread, reactor, servers, 1, 2, segment_size=64 * 1024)
        result = yield uploader.upload(source, "V1", key, me)
        self.assertEqual(result.degraded, ())
        held = yield servers[1].list_blocks(me, "")
        self.assertEqual(len(held), len(result.segments))
        target = self.mktemp()
        downloader = Downloader(self.customer.run_in_thread, reactor, servers, 1, 2)
        yield downloader.download(result.segments, "V1", key, me, target)
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), data)
        rows = yield ok(self, self.customer, "suppliers_ping")
        self.assertGreater(rows[0]["used_bytes"], 0)


class MachineAdditionsTests(unittest.TestCase):
    """What the service needs from the market machines: settable timers, rejection notices, clean shutdown."""

    def setUp(self):
        self.clock = Clock()
        self.net = FakeNetwork()

    def test_timer_intervals_come_from_the_caller(self):
        connector = SupplierConnector(self.clock, "s1", self.net, 10, intervals={"timer-ping": 0.5})
        connector.event("connect")
        self.clock.advance(0.5)
        self.assertEqual(self.net.calls, [("request", "s1"), ("ping", "s1")])
        self.assertEqual(SupplierConnector.timer_specs()["timer-ping"][0], 60.0)  # the class keeps its own
        self.assertRaises(ValueError, SupplierConnector, self.clock, "s1", self.net, 10, intervals={"timer-x": 1})
        self.assertRaises(ValueError, SupplierConnector, self.clock, "s1", self.net, 10, intervals={"timer-ping": 0})
        connector.event("shutdown")

    def test_a_rejection_notice_is_a_refusal_with_its_reason(self):
        seen = []
        connector = SupplierConnector(self.clock, "s1", self.net, 10)
        connector.add_state_listener(lambda m, old, new, event: seen.append((new, m.refusal)))
        connector.event("connect")
        connector.rejected("rejected: bye")
        self.assertEqual(seen[-1], ("REFUSE", "rejected: bye"))  # the reason is there when listeners hear
        self.assertIsInstance(error_from_fail("rejected: this supplier does not serve you any more"), Forbidden)
        self.assertIsInstance(error_from_fail("forbidden: a packet's owner must be its sender"), Forbidden)
        self.assertIsInstance(error_from_fail("supplier service is not running"), Unavailable)
        connector.event("shutdown")

    def test_shutdown_while_a_restart_waits_leaves_no_timer(self):
        finder = SupplierFinder(self.clock, lambda count: defer.Deferred(), lambda s: None)
        roster = SupplierRoster(os.path.join(self.mktemp() + "-suppliers.json"))
        fire_hire = FireHire(self.clock, roster, finder, lambda s: None, lambda: 2, lambda: 1.0,
                             intervals={"timer-1min": 0.5})
        fire_hire.event("init")  # looking for a supplier: the DHT never answers
        self.assertEqual(fire_hire.state, "HIRE")
        fire_hire.event("restart")
        fire_hire.event("restart")
        self.assertEqual(len(fire_hire._pending), 1)
        self.clock.advance(0)
        fire_hire.event("shutdown")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answers_after_a_connector_closed_are_dropped_quietly(self):
        self.net.behaviour["s1"] = "hang"
        connector = SupplierConnector(self.clock, "s1", self.net, 10, intervals={"timer-ping": 0.5})
        connector.event("connect")
        connector.event("shutdown")  # fired while its RequestService is on the way
        self.net.hanging.pop().errback(Unavailable("cannot connect"))
        self.assertEqual((connector.state, connector.unexpected_count), ("CLOSED", 0))
        pinged = SupplierConnector(self.clock, "s2", self.net, 10, intervals={"timer-ping": 0.5})
        pinged.event("connect")
        self.net.behaviour["s2"] = "hang"
        self.clock.advance(0.5)
        pinged.event("shutdown")
        self.net.hanging.pop().callback(None)
        self.assertEqual((pinged.state, pinged.unexpected_count), ("CLOSED", 0))

    def test_fire_hire_shutdown_does_not_hear_its_connectors_close(self):
        connectors = []

        def make(supplier_id):
            connectors.append(SupplierConnector(self.clock, supplier_id, self.net, 10))
            return connectors[-1]

        roster = SupplierRoster(os.path.join(self.mktemp() + "-suppliers.json"))
        roster.save(["s1", "s2"])
        finder = SupplierFinder(self.clock, lambda count: defer.Deferred(), make)
        fire_hire = FireHire(self.clock, roster, finder, make, lambda: 2, lambda: 1.0)
        fire_hire.event("init")
        self.assertEqual([c.state for c in connectors], ["CONNECTED", "CONNECTED"])
        fire_hire.event("shutdown")
        self.assertEqual([c.state for c in connectors], ["CLOSED", "CLOSED"])
        self.assertEqual((fire_hire.state, fire_hire.unexpected_count), ("CLOSED", 0))
