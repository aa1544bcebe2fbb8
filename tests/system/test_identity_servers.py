"""System test: a network with two identity servers outlives its primary one (issue 16.3, 16.5).

A local network of real processes: two identity servers (each also a DHT
seed), two suppliers, one customer; every identity lists both servers as
its sources, the first (``idserver``) as its primary. The customer stores a
file. Then ``idserver`` is killed:

1. every node's id_rotator notices the dead primary (the test shortens its
   ``dead-after`` to 3 s) and moves its identity to ``idserver-2`` by
   itself: a new global id, a new revision, the old name still listed;
2. the suppliers pick up the customer's new identity (their cache holds the
   new revision under the new name) and keep serving it: its file still
   downloads byte-identical;
3. the customer hears that its suppliers moved too and publishes its
   suppliers record again, naming their new IDURLs (its roster keeps the
   names it hired them under);
4. a node started afterwards ("newcomer") creates its identity on the live
   server, joins the DHT through the live seed, reads the customer's
   suppliers record from the DHT under the customer's new name, reaches the
   suppliers by the names that record gives (their new ones), and pings
   every existing node by its new global id.

The time the rotation took is printed for the record.
"""

from __future__ import annotations

import time

from tests.system.support import LocalnetTestCase, wait_for

PRIMARY, SECOND = "idserver", "idserver-2"
CUSTOMER = "customer-1"
SUPPLIERS = ("supplier-1", "supplier-2")
NEWCOMER = "newcomer"
#: the id_rotator's timings, shortened so the test sees a move within seconds (defaults: 600/60/1800 s)
FAST_ROTATION = {"check-interval": 1.0, "recheck-interval": 1.0, "dead-after": 3.0}


class IdentityServerDeathTests(LocalnetTestCase):
    def test_a_dead_primary_identity_server_is_left_and_every_node_is_still_found(self) -> None:
        self.start_network(suppliers=2, customers=1, prefix="bitnode-idservers-", id_servers=2, timeout=60)
        members = [SECOND, *SUPPLIERS, CUSTOMER]
        second_port = self.nodes[SECOND]["ports"]["idserver"]
        old = {name: self.api(name, "identity_get") for name in members}
        for name in members:
            self.assertEqual(len(old[name]["sources"]), 2, old[name])
            self.assertIn(f"_{self.nodes[PRIMARY]['ports']['idserver']}", old[name]["global_id"])
        remote, digest = self.upload_random(CUSTOMER, "kept.bin", 100 * 1024)
        hired = self.suppliers_of(CUSTOMER)
        cancels = {supplier: self.served(supplier).get("CancelService", 0) for supplier in SUPPLIERS}
        for name in members:
            for key, value in FAST_ROTATION.items():
                self.api(name, "config_set", key=f"services/identity-propagate/{key}", value=value)
            self.api(name, "service_restart", service_name="service_identity_propagate")

        # 1. the primary dies; every node moves to the second server by itself
        killed = time.monotonic()
        self.net.stop_node(PRIMARY, kill=True)

        def moved(name: str) -> dict | None:
            identity = self.api(name, "identity_get")
            return identity if identity["global_id"].endswith(f"_{second_port}") else None

        new = {name: wait_for(lambda n=name: moved(n), f"{name} to move to {SECOND}", timeout=40)
               for name in members}
        rotation_seconds = time.monotonic() - killed
        for name in members:
            self.assertGreater(new[name]["revision"], old[name]["revision"])
            self.assertEqual(new[name]["sources"][1:], old[name]["sources"][:1])  # the old name stays listed
            status = self.api(name, "service_info", service_name="service_identity_propagate")["status"]
            self.assertEqual(status["moves"], 1, (name, status))  # once, not a storm
        customer_id = new[CUSTOMER]["global_id"]

        # 2. the suppliers follow the customer and keep serving it
        for supplier in SUPPLIERS:
            wait_for(lambda s=supplier: self.cached_revision(s, customer_id) == new[CUSTOMER]["revision"],
                     f"{supplier} to hold the customer's new identity", timeout=30)
        self.assertEqual(self.download_digest(CUSTOMER, remote), digest)
        # nobody was fired or released for it: the same suppliers, still holding the customer's first name
        self.assertEqual(self.suppliers_of(CUSTOMER), hired)
        for supplier in SUPPLIERS:
            rows = self.api(supplier, "customers_list")
            self.assertEqual([r["customer_id"] for r in rows], [old[CUSTOMER]["global_id"]], (supplier, rows))
            self.assertEqual(self.served(supplier).get("CancelService", 0), cancels[supplier], supplier)

        # 3. the customer's suppliers record follows its suppliers to their new names
        wanted = sorted(new[s]["global_id"] for s in SUPPLIERS)
        record = wait_for(lambda: (r := self.customer_record()) and sorted(r["suppliers"]) == wanted and r,
                          "the customer's suppliers record to name its suppliers' new IDURLs", timeout=40)
        self.assertEqual(record["suppliers_renamed"], len(SUPPLIERS), record)

        # 4. a node started afterwards finds everyone through the live server and seed
        self.nodes[NEWCOMER] = self.net.add_node(NEWCOMER, key_size=2048)
        created = self.api(NEWCOMER, "identity_create", username=NEWCOMER)
        self.assertTrue(created["global_id"].endswith(f"_{second_port}"), created)
        wait_for(lambda: self.call(NEWCOMER, "network_connected", wait_timeout=5, timeout=10)[0] == 200,
                 f"{NEWCOMER} to be connected", timeout=30)
        looked_up = wait_for(lambda: self.dht_suppliers(customer_id), "the customer's suppliers in the DHT",
                             timeout=30)
        # the record (signed by the customer's key, read under its new name) names the suppliers by their
        # new names: a reader reaches them on the live server
        self.assertEqual(sorted(looked_up), wanted)
        for supplier_name in looked_up:
            pong = self.api(NEWCOMER, "user_ping", user_id=supplier_name, timeout=10)
            self.assertIn("round_trip", pong)
        for name in members:
            pong = self.api(NEWCOMER, "user_ping", user_id=new[name]["global_id"], timeout=10)
            self.assertIn("round_trip", pong)
        print(f"\nidentity servers: {len(members)} nodes moved off the dead primary "
              f"{rotation_seconds:.1f}s after it was killed (dead-after 3 s)")

    # --- helpers -----------------------------------------------------------------------------

    def suppliers_of(self, customer: str) -> list[tuple[int, str, str]]:
        return [(r["position"], r["supplier_id"], r["state"]) for r in self.api(customer, "suppliers_list")]

    def served(self, supplier: str) -> dict:
        return self.api(supplier, "service_info", service_name="service_supplier")["status"]["served"]

    def cached_revision(self, name: str, global_id: str) -> int | None:
        rows = [row for row in self.api(name, "identity_cache_list") if row["global_id"] == global_id]
        return rows[0]["revision"] if rows else None

    def customer_record(self) -> dict:
        """The customer's suppliers record as it published it last: the suppliers it names, how many renamed."""
        status = self.api(CUSTOMER, "service_info", service_name="service_customer")["status"]["suppliers_record"]
        code, envelope = self.call(CUSTOMER, "suppliers_dht_lookup")
        found = envelope["result"].get("suppliers", []) if code == 200 else []
        return {"suppliers": [s for s in found if s], "suppliers_renamed": status.get("suppliers_renamed")}

    def dht_suppliers(self, customer_id: str) -> list[str] | None:
        code, envelope = self.call(NEWCOMER, "suppliers_dht_lookup", customer_id=customer_id)
        if code != 200:
            return None
        found = [s for s in envelope["result"].get("suppliers", []) if s]
        return found or None
