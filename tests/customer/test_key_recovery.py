"""In-process: a customer's machine is gone for longer than its record's lifetime; the key alone brings it all back.

An identity server that is also the DHT seed, four suppliers and one customer
(carol), all in one reactor on loopback. Carol's suppliers record lives 10 s
(``suppliers-record-ttl``, the least allowed). Her machine goes away; the
test waits until every copy she stored herself has expired, so what a
recovery finds was stored by her suppliers only. A new node then recovers
from nothing but her RSA private key (PEM) and her IDURL, finds her old
suppliers, takes them at their positions, restores the catalog and gets the
file back byte for byte.
"""

from __future__ import annotations

import os

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from bitnode.customer.customer_service import CustomerService
from bitnode.dht.dht_service import DHTService
from bitnode.p2p.network_service import NetworkService
from bitnode.storage.backups_service import BackupsService
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService
from tests.customer.test_customer_service import FAST_MARKET
from tests.interface.support import start_node
from tests.storage.test_backups_service import read
from tests.supplier.test_supplier_service import Net, gid, ok, until

CUSTOMER = [IdentityService, GatewayService, NetworkService, DHTService, CustomerService, BackupsService]
TTL = 10
SETTINGS = dict(FAST_MARKET, **{"services/customer/suppliers-number": 4, "services/customer/dead-after": 60.0,
                                "services/customer/suppliers-record-ttl": TTL,
                                "services/backups/catalog-backup-delay": 0.2,
                                "services/backups/catalog-retry": 0.5})


class KeyOnlyRecoveryTests(unittest.TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.net = Net()
        self.suppliers = yield self.net.start_market(self, 4)
        self.carol = yield self.net.node(self, "carol", CUSTOMER, SETTINGS, wait_for="service_backups")

    @inlineCallbacks
    def test_a_bare_private_key_finds_the_old_suppliers_after_the_record_outlived_the_customer(self):
        customer = self.carol.service_driver.get("service_customer")
        yield until(lambda: customer.roster is not None and len(customer.roster.hired()) == 4
                    and customer.dht_revision == customer.roster.revision,
                    "four suppliers hired and the record published", seconds=30)
        positions = list(customer.roster.positions)
        source = os.path.abspath(self.mktemp())
        data = os.urandom(300_000)
        with open(source, "wb") as handle:
            handle.write(data)
        me = gid(self.carol)
        remote = f"master${me}:docs/report.bin"
        done = yield ok(self, self.carol, "file_upload_start", local_path=source, remote_path=remote, wait_result=True)
        self.assertEqual(done["state"], "DONE")
        info = yield ok(self, self.carol, "file_info", remote_path=remote)
        self.assertTrue(info["catalog_backup"]["current"], info["catalog_backup"])
        self.assertTrue(info["versions"][0]["in_catalog_backup"])
        yield until(lambda: all(s.service_driver.get("service_supplier").records.latest(me) for s in self.suppliers),
                    "every supplier to keep carol's record")
        master = (yield ok(self, self.carol, "key_get", key_id=f"master${me}", include_private=True))["private"]
        idurl = (yield ok(self, self.carol, "identity_get"))["idurl"]
        carol_dht_key = self.carol.service_driver.get("service_entangled_dht").dht.pubkey
        yield self.carol.stopService()
        gone_at = self.carol.clock.seconds()

        # Longer than the lifetime she signed: only copies her suppliers stored since are left.
        def only_suppliers_copies():
            d = ok(self, self.suppliers[0], "suppliers_dht_lookup", customer_id=me)
            return d.addCallback(lambda found: found["created"] > gone_at + TTL and found["publisher"] != carol_dht_key
                                 and found)

        found = yield until(only_suppliers_copies, "a copy stored by a supplier after carol's expired", seconds=40)
        self.assertEqual(found["suppliers"], positions)

        # A new machine with nothing but the private key and the IDURL.
        new = yield start_node(self, service_classes=CUSTOMER, overrides=dict(self.net.base, **SETTINGS))
        yield ok(self, new, "identity_recover", private_key_source=master, known_idurl=idurl)
        storage = new.service_driver.get("service_backups")
        yield until(lambda: storage.last_restore.get("serial"), "the catalog to be restored", seconds=40)
        recovered = new.service_driver.get("service_customer")
        self.assertTrue(recovered.recovered_from_dht)
        self.assertEqual(list(recovered.roster.positions), positions)
        listed = yield ok(self, new, "files_list", remote_path=f"master${me}:docs")
        self.assertEqual([row["name"] for row in listed], ["report.bin"])
        target = os.path.abspath(self.mktemp())
        yield ok(self, new, "file_download_start", remote_path=remote, destination_path=target, wait_result=True)
        self.assertEqual(read(target), data)
