"""System test: the supplier market (issue 6) with real node processes on a localnet.

One network (identity server, five suppliers, one customer, 2048-bit keys;
localnet makes a customer hire four) and one test walking through it: the
customer hires four live suppliers and its market machines are in real
states; with short fire_hire timeouts a killed supplier is replaced by the
spare one (and the blocks it held are rebuilt there); a supplier that rejects
the customer deletes the customer's data and the customer fires it.

The times measured (network up to all suppliers hired, kill to replacement)
are printed for the record.
"""

from __future__ import annotations

import os
import time

from bitnode.localnet.network import LOCALNET_SUPPLIERS_NUMBER
from bitnode.main.basedir import Basedir
from tests.system.support import LocalnetTestCase, wait_for

CUSTOMER = "customer-1"
SUPPLIERS = [f"supplier-{i}" for i in range(1, 6)]
#: fire_hire settings that make a dead supplier go within seconds (a real node waits minutes).
FAST_MARKET = {"dead-after": 2.0, "ping-interval": 0.5, "check-interval": 1.0, "request-timeout": 3.0}


class MarketTests(LocalnetTestCase):
    """Hiring, replacing a dead supplier, customer_reject — across processes."""

    def test_hire_replace_and_reject(self) -> None:
        started = time.monotonic()
        self.start_network(suppliers=5, customers=1, prefix="bitnode-market-")
        hire_seconds = time.monotonic() - started
        self.by_id = {self.nodes[name]["global_id"]: name for name in SUPPLIERS}
        self.check_four_live_suppliers_and_the_market_machines()
        self.use_fast_market_settings()
        self.upload_a_small_file()
        replace_seconds = self.check_a_killed_supplier_is_replaced()
        self.check_customer_reject_deletes_the_data_and_the_customer_fires_it()
        print(f"\nmarket timings: up until {LOCALNET_SUPPLIERS_NUMBER} suppliers hired {hire_seconds:.1f}s, "
              f"killed supplier replaced in {replace_seconds:.1f}s")

    # --- steps -----------------------------------------------------------------------------

    def suppliers(self) -> list[dict]:
        """The position rows of suppliers_list (former holders, still retiring, follow them)."""
        return [r for r in self.api(CUSTOMER, "suppliers_list", verbose=True) if not r["retiring"]]

    def connected(self) -> list[str] | None:
        """The hired suppliers by position once all four are CONNECTED, else None."""
        rows = self.suppliers()
        if len(rows) == LOCALNET_SUPPLIERS_NUMBER and all(r["state"] == "CONNECTED" for r in rows):
            return [r["supplier_id"] for r in rows]
        return None

    def check_four_live_suppliers_and_the_market_machines(self) -> None:
        rows = self.suppliers()
        self.assertEqual([r["position"] for r in rows], list(range(LOCALNET_SUPPLIERS_NUMBER)))
        for row in rows:
            self.assertEqual((row["state"], row["online"]), ("CONNECTED", True), row)
            self.assertIn(row["supplier_id"], self.by_id)
            self.assertGreater(row["quota_bytes"], 0)
            self.assertEqual(row["used_bytes"], 0)
            self.assertTrue(row["automat"].startswith("supplier_connector"), row)
        self.assertEqual(len({r["supplier_id"] for r in rows}), LOCALNET_SUPPLIERS_NUMBER)
        machines = self.api(CUSTOMER, "automats_list")
        states = {}
        for machine in machines:
            states.setdefault(machine["name"], []).append(machine["state"])
        self.assertEqual(states["fire_hire"], ["READY"])
        self.assertEqual(states["supplier_finder"], ["READY"])
        self.assertEqual(states["supplier_connector"].count("CONNECTED"), LOCALNET_SUPPLIERS_NUMBER, states)
        (fire_hire,) = [m for m in machines if m["name"] == "fire_hire"]
        events = [t["event"] for t in fire_hire["transitions"]]
        self.assertEqual(events.count("hired"), LOCALNET_SUPPLIERS_NUMBER, events)
        for row in rows:
            # Each supplier has the contract on its side too.
            customers = self.api(self.by_id[row["supplier_id"]], "customers_list")
            self.assertEqual([c["customer_id"] for c in customers], [self.nodes[CUSTOMER]["global_id"]])

    def use_fast_market_settings(self) -> None:
        for key, value in FAST_MARKET.items():
            self.api(CUSTOMER, "config_set", key=f"services/customer/{key}", value=value)
        # ping-interval and check-interval are read when the machines are built.
        self.api(CUSTOMER, "service_restart", service_name="service_customer")
        wait_for(self.connected, "the suppliers to be CONNECTED again after the restart", timeout=30)

    def upload_a_small_file(self) -> None:
        local = os.path.join(self.dir, "small.bin")
        with open(local, "wb") as handle:
            handle.write(os.urandom(300 * 1024))
        me = self.nodes[CUSTOMER]["global_id"]
        done = self.api(CUSTOMER, "file_upload_start", local_path=local, remote_path=f"master${me}:small.bin",
                        wait_result=True, timeout=60)
        self.assertEqual(done["state"], "DONE", done)

    def check_a_killed_supplier_is_replaced(self) -> float:
        before = self.connected()
        victim = before[0]
        (spare,) = set(self.by_id) - set(before)
        started = time.monotonic()
        self.net.stop_node(self.by_id[victim], kill=True)

        def replaced():
            now = self.connected()
            return now is not None and victim not in now and now

        # dead-after 2 s, pings every 0.5 s, then a DHT lookup that waits out the dead node (rpc-timeout 5 s).
        after = wait_for(replaced, f"{victim} to be replaced", timeout=30)
        seconds = time.monotonic() - started
        self.assertEqual(after, [spare] + before[1:])  # the spare takes the dead one's position
        fired = [e for e in self.events() if e["event_id"] == "suppliers-changed"]
        reasons = " ".join(e["data"]["reason"] for e in fired)
        self.assertIn(f"fired {victim} at 0: offline for", reasons)
        self.assertIn(f"hired {spare} at 0", reasons)
        # backup_monitor rebuilds the blocks of position 0 on the new supplier.
        wait_for(lambda: self.used_on(self.by_id[spare]) > 0, f"blocks to be rebuilt on {spare}", timeout=60)
        return seconds

    def check_customer_reject_deletes_the_data_and_the_customer_fires_it(self) -> None:
        me = self.nodes[CUSTOMER]["global_id"]
        rejecter_id = self.connected()[1]
        rejecter = self.by_id[rejecter_id]
        held = self.used_on(rejecter)
        self.assertGreater(held, 0)
        folder = os.path.join(Basedir.at(self.nodes[rejecter]["basedir"]).root, "customers")
        self.assertTrue(os.listdir(folder))

        answer = self.api(rejecter, "customer_reject", customer_id=me)
        self.assertEqual((answer["customer_id"], answer["rejected"], answer["notified"]), (me, True, True))
        self.assertGreaterEqual(answer["freed_bytes"], held)
        self.assertEqual(self.api(rejecter, "customers_list"), [])
        space = self.api(rejecter, "space_donated")
        self.assertEqual((space["customers_num"], space["used_bytes"], space["allocated_bytes"]), (0, 0, 0))
        self.assertEqual(os.listdir(folder), [])

        # The customer heard the notice and fired it; no spare supplier is left, so its position stays empty.
        def fired():
            rows = self.suppliers()
            return rejecter_id not in [r["supplier_id"] for r in rows] and rows

        rows = wait_for(fired, f"{CUSTOMER} to fire {rejecter_id}", timeout=20)
        self.assertEqual(rows[1]["state"], "EMPTY", rows)
        reasons = " ".join(e["data"]["reason"] for e in self.events() if e["event_id"] == "suppliers-changed")
        self.assertIn(f"fired {rejecter_id} at 1: refused: rejected", reasons)

    # --- helpers ------------------------------------------------------------------------------

    def events(self) -> list[dict]:
        return self.api(CUSTOMER, "event_listen", consumer_callback_id="market-test", since=0,
                        polling_timeout=0)["events"]

    def used_on(self, supplier: str) -> int:
        """Bytes of customers' blocks on ``supplier`` (used_bytes adds the minimum charges per file and folder)."""
        rows = self.api(supplier, "customers_list")
        return sum(r["stored_bytes"] for r in rows)
