"""System tests (issue 13): the data comes back after outages and pauses, with real processes on a localnet.

Each test runs its own network (identity server, five suppliers, customer-1 hiring
four of them, 2048-bit keys, so 2-of-4; the fifth supplier is a spare fire_hire
could hire) with short fire_hire settings: a supplier silent for 3 s is dead,
pings every 0.5 s. A 6 MiB file is uploaded first; then:

(a) every hired supplier's process is stopped (SIGSTOP) for three times
    dead-after: nobody is fired (every supplier silent at once says *we* may be
    cut off), and after SIGCONT the file downloads byte-identical;
(b) the customer's own process is stopped for three times dead-after: after
    SIGCONT it notices the pause, asks every supplier again before judging
    anyone, fires nobody, and the file downloads byte-identical;
(d) a supplier is killed: it is replaced by the spare, its blocks are rebuilt
    there (it stays a retiring holder until then, and is released after); then
    two more of the original suppliers are killed: the file still downloads.

Stopped processes are always resumed (SIGCONT) at cleanup, before the network is
taken down. Each test prints how long its scenario took.
"""

from __future__ import annotations

import os
import signal
import time

from tests.system.support import LocalnetTestCase, pid_alive, sha256_of, wait_for
from tests.system.test_silent_supplier import process_stopped, write_random_file

CUSTOMER = "customer-1"
SIZE = 6 * 1024 * 1024
DEAD_AFTER = 3.0
FAST_MARKET = {"dead-after": DEAD_AFTER, "ping-interval": 0.5, "check-interval": 1.0, "request-timeout": 2.0,
               "pause-tolerance": 1.5}


class DurabilityTests(LocalnetTestCase):
    """Outages and pauses are waited out; a dead supplier is replaced without dropping a copy."""

    def setUp(self) -> None:
        started = time.monotonic()
        self.start_network(suppliers=5, customers=1, prefix="bitnode-durability-", timeout=90)
        self.by_id = {node["global_id"]: name for name, node in self.nodes.items() if name.startswith("supplier")}
        for key, value in FAST_MARKET.items():
            self.api(CUSTOMER, "config_set", key=f"services/customer/{key}", value=value)
        # ping-interval and check-interval are read when the machines are built.
        self.api(CUSTOMER, "service_restart", service_name="service_customer")
        self.first = wait_for(self.connected, "four connected suppliers after the restart", timeout=30)
        self.remote = f"master${self.nodes[CUSTOMER]['global_id']}:durable.bin"
        self.local = os.path.join(self.dir, "durable.bin")
        self.sha = write_random_file(self.local, SIZE)
        done = self.api(CUSTOMER, "file_upload_start", local_path=self.local, remote_path=self.remote,
                        wait_result=True, timeout=90)
        self.assertEqual(done["state"], "DONE", done)
        wait_for(self.catalog_backed_up, "the catalog backup to reach the suppliers", timeout=30)
        self.setup_seconds = time.monotonic() - started

    # --- (a) -------------------------------------------------------------------------------------

    def test_a_every_supplier_stopped_longer_than_dead_after_is_waited_out(self) -> None:
        started = time.monotonic()
        pids = [self.pid_of(self.by_id[s]) for s in self.first]
        for pid in pids:
            self.addCleanup(self.resume, pid)
            os.kill(pid, signal.SIGSTOP)
        for pid in pids:
            wait_for(lambda p=pid: process_stopped(p), f"pid {pid} to be stopped", timeout=5)
        waiting = wait_for(lambda: self.fire_hire()["info"]["waiting"], "fire_hire to wait", timeout=15)
        time.sleep(3 * DEAD_AFTER)  # the outage itself: a real process stays stopped this long
        machine = self.fire_hire()
        self.assertEqual(machine["state"], "WAITING", machine)
        self.assertIn("no supplier answers", machine["info"]["waiting"], waiting)
        self.assertEqual(self.positions(), self.first)
        self.assertEqual(self.fired(), [])
        rows = self.api(CUSTOMER, "suppliers_list")
        self.assertIn("no supplier answers", rows[0]["waiting"])
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: self.connected() == self.first, "the same four suppliers to answer again", timeout=30)
        wait_for(lambda: self.fire_hire()["state"] == "READY", "fire_hire to be READY", timeout=15)
        self.download_byte_identical("after-outage.bin")
        self.assertEqual((self.positions(), self.fired(), self.retiring()), (self.first, [], []))
        print(f"\n(a) all suppliers stopped {3 * DEAD_AFTER:.0f}s (dead-after {DEAD_AFTER:.0f}s): nobody fired, "
              f"file back byte-identical; scenario {time.monotonic() - started:.1f}s "
              f"(network and upload {self.setup_seconds:.1f}s)")

    # --- (b) -------------------------------------------------------------------------------------

    def test_b_the_customer_stopped_longer_than_dead_after_asks_everyone_again(self) -> None:
        started = time.monotonic()
        before = self.fire_hire()["info"]
        pid = self.pid_of(CUSTOMER)
        self.addCleanup(self.resume, pid)
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: process_stopped(pid), f"the customer (pid {pid}) to be stopped", timeout=5)
        time.sleep(3 * DEAD_AFTER)  # the pause itself: a laptop lid closed, a SIGSTOP
        os.kill(pid, signal.SIGCONT)
        info = wait_for(lambda: (lambda i: i if i["pauses"] > before["pauses"] else None)(self.fire_hire()["info"]),
                        "the customer to notice its pause", timeout=15)
        self.assertIn("nothing ran for", info["last_pause"])
        self.assertGreater(info["reprobes"], before["reprobes"])
        wait_for(lambda: self.connected() == self.first, "the four suppliers to answer the customer", timeout=30)
        self.download_byte_identical("after-pause.bin")
        self.assertEqual((self.positions(), self.fired(), self.retiring()), (self.first, [], []))
        print(f"\n(b) customer stopped {3 * DEAD_AFTER:.0f}s (dead-after {DEAD_AFTER:.0f}s): pause seen, everyone "
              f"asked again, nobody fired, file back byte-identical; scenario {time.monotonic() - started:.1f}s "
              f"(network and upload {self.setup_seconds:.1f}s)")

    # --- (d) -------------------------------------------------------------------------------------

    def test_d_a_dead_supplier_is_replaced_and_rebuilt_then_two_more_may_die(self) -> None:
        started = time.monotonic()
        victim = self.first[1]
        (spare,) = set(self.by_id) - set(self.first)
        self.net.stop_node(self.by_id[victim], kill=True)
        wait_for(lambda: self.connected() == [self.first[0], spare, *self.first[2:]],
                 f"{victim} to be replaced by {spare} at position 1", timeout=40)
        replaced = time.monotonic() - started
        self.assertEqual(self.fired(), [f"fired {victim} at 1"])
        # until its blocks are on the spare it is a retiring holder; then released (its CancelService
        # waits to be delivered: it is dead)
        released = wait_for(lambda: self.former(victim, "RELEASING"), f"{victim} to be released", timeout=60)
        rebuilt = time.monotonic() - started
        self.assertGreater(self.used_on(spare), 0)
        (row,) = [r for r in self.api(CUSTOMER, "suppliers_list") if r["position"] == 1 and not r["retiring"]]
        self.assertEqual((row["supplier_id"], row["rebuild"]), (spare, []))  # nothing left to rebuild there
        for other in self.first[2:]:
            self.net.stop_node(self.by_id[other], kill=True)
        self.download_byte_identical("after-three-losses.bin")
        info = self.api(CUSTOMER, "file_info", remote_path=self.remote)
        self.assertTrue(info["versions"][0]["restorable"], info)
        print(f"\n(d) killed {self.by_id[victim]}: replaced in {replaced:.1f}s, rebuilt and released in "
              f"{rebuilt:.1f}s ({released['state']}); two more originals killed, file back byte-identical; "
              f"scenario {time.monotonic() - started:.1f}s (network and upload {self.setup_seconds:.1f}s)")

    # --- helpers ---------------------------------------------------------------------------------

    def connected(self) -> list[str] | None:
        """The suppliers by position once every position answers (CONNECTED), else None."""
        rows = [r for r in self.api(CUSTOMER, "suppliers_list") if not r["retiring"]]
        if len(rows) == 4 and all(r["state"] == "CONNECTED" for r in rows):
            return [r["supplier_id"] for r in rows]
        return None

    def positions(self) -> list[str]:
        return [r["supplier_id"] for r in self.api(CUSTOMER, "suppliers_list") if not r["retiring"]]

    def retiring(self) -> list[dict]:
        return [r for r in self.api(CUSTOMER, "suppliers_list") if r["retiring"]]

    def former(self, supplier_id: str, state: str) -> dict | None:
        return next((r for r in self.retiring() if r["supplier_id"] == supplier_id and r["state"] == state), None)

    def fire_hire(self) -> dict:
        (machine,) = [m for m in self.api(CUSTOMER, "automats_list") if m["name"] == "fire_hire"]
        return machine

    def fired(self) -> list[str]:
        events = self.api(CUSTOMER, "event_listen", consumer_callback_id=f"durability-{id(self)}", since=0,
                          polling_timeout=0)["events"]
        reasons = [e["data"]["reason"] for e in events if e["event_id"] == "suppliers-changed"]
        return [r.split(":")[0] for r in reasons if r.startswith("fired")]

    def catalog_backed_up(self) -> bool:
        status = self.api(CUSTOMER, "service_info", service_name="service_backups")["status"]
        return not status["catalog_backup_pending"] and status["catalog_backup"].get("serial", 0) >= 1

    def used_on(self, supplier_id: str) -> int:
        return sum(r["used_bytes"] for r in self.api(self.by_id[supplier_id], "customers_list"))

    def pid_of(self, name: str) -> int:
        pid = self.nodes[name]["pid"]
        self.assertTrue(pid and pid_alive(pid), (name, pid))
        return pid

    def download_byte_identical(self, name: str) -> None:
        target = os.path.join(self.dir, name)
        done = self.api(CUSTOMER, "file_download_start", remote_path=self.remote, destination_path=target,
                        wait_result=True, timeout=120)
        self.assertEqual((done["state"], done["bytes_done"]), ("DONE", SIZE), done)
        self.assertEqual(sha256_of(target), self.sha)

    def resume(self, pid: int) -> None:
        """SIGCONT a stopped node, so that the network can be taken down cleanly."""
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
            wait_for(lambda: not process_stopped(pid), f"pid {pid} to run again", timeout=5)
