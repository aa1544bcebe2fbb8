"""System test: supplier contracts (issue 13.5) with real node processes on a localnet.

Four suppliers, two customers, each customer stores a file. The suppliers are
given a one-minute contract and no grace (the defaults are 30 + 30 days), the
customers ping their suppliers every two seconds. Customer 2 is killed: after
a minute of its silence every supplier removes its data (customers_list,
disk, counters). Customer 1 talked all along: its contract never expired and
its file still downloads byte-identical. The time from the kill to the last
removal is printed for the record.
"""

from __future__ import annotations

import os
import time

from bitnode.main.basedir import Basedir
from tests.system.support import LocalnetTestCase, sha256_of, wait_for

SUPPLIERS = [f"supplier-{i}" for i in range(1, 5)]
ALIVE, SILENT = "customer-1", "customer-2"
CONTRACT = {"contract-period": 60.0, "contract-grace": 0.0, "contract-check-interval": 2.0}


class ContractTests(LocalnetTestCase):
    def test_a_killed_customers_data_goes_after_its_contract_and_a_live_one_stays(self) -> None:
        self.start_network(suppliers=4, customers=2, prefix="bitnode-contracts-")
        for customer in (ALIVE, SILENT):
            self.api(customer, "config_set", key="services/customer/ping-interval", value=2.0)
            self.api(customer, "service_restart", service_name="service_customer")
        files = {customer: self.upload_random(customer, "kept.bin", 200 * 1024) for customer in (ALIVE, SILENT)}
        ids = {customer: self.nodes[customer]["global_id"] for customer in (ALIVE, SILENT)}
        holders = wait_for(lambda: self.holding(ids[SILENT]) or None, "suppliers holding customer-2's blocks")
        for supplier in SUPPLIERS:
            for key, value in CONTRACT.items():
                self.api(supplier, "config_set", key=f"services/supplier/{key}", value=value)
        row = self.customer_row(holders[0], ids[SILENT])
        self.assertFalse(row["contract_expired"])
        self.assertLessEqual(row["contract_expires"], time.time() + 61)

        killed = time.monotonic()
        self.net.stop_node(SILENT, kill=True)
        wait_for(lambda: not self.holding(ids[SILENT]), "every supplier to remove customer-2's data", timeout=150)
        removal_seconds = time.monotonic() - killed
        self.assertGreaterEqual(removal_seconds, 55.0)  # not before its contract ran out
        for supplier in holders:
            folder = os.path.join(Basedir.at(self.nodes[supplier]["basedir"]).root, "customers", ids[SILENT])
            wait_for(lambda f=folder: not os.path.exists(f), f"{supplier} to remove the folder {folder}")
            contracts = self.api(supplier, "service_info", service_name="service_supplier")["status"]["contracts"]
            # (hiring asks several suppliers and cancels the busier ones: those end as "cancelled")
            self.assertEqual(contracts["ended"].get("expired"), 1, contracts["ended"])

        # customer-1 kept talking: its contract was renewed all along and its file comes back whole
        for supplier in self.holding(ids[ALIVE]):
            self.assertFalse(self.customer_row(supplier, ids[ALIVE])["contract_expired"])
        self.assertEqual(len(self.holding(ids[ALIVE])), 4)
        target = os.path.join(self.dir, "download")
        os.makedirs(target)
        done = self.api(ALIVE, "file_download_start", remote_path=files[ALIVE][0], destination_path=target,
                        wait_result=True, timeout=60)
        self.assertEqual(done["state"], "DONE", done)
        self.assertEqual(sha256_of(os.path.join(target, "kept.bin")), files[ALIVE][1])
        print(f"\ncontracts: customer-2's data removed {removal_seconds:.1f}s after it was killed (contract 60 s)")

    # --- helpers -----------------------------------------------------------------------------

    def customer_row(self, supplier: str, customer_id: str) -> dict | None:
        rows = [r for r in self.api(supplier, "customers_list") if r["customer_id"] == customer_id]
        return rows[0] if rows else None

    def holding(self, customer_id: str) -> list[str]:
        """The suppliers with a contract for ``customer_id`` and blocks of it."""
        return [s for s in SUPPLIERS if (row := self.customer_row(s, customer_id)) and row["files"] > 0]
