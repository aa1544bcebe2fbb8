"""System test: encrypted storage on real suppliers (issue 7), end to end through the HTTP API.

One network (identity server, five suppliers, one customer, 2048-bit keys)
and one test: the customer keeps 3-of-5 (five suppliers, any three restore a
segment); a 64 MiB random file and a small folder go up; two suppliers are
killed and the file still comes back byte for byte; then the identity is
backed up, the customer's machine is "lost" (killed) and a brand-new node
recovers the identity from the backup text alone, finds its suppliers (and
their 3-of-5) in the DHT, restores the catalog from them and downloads the
file and the folder.
Bad input is checked on the way: a missing local file is 404, a destination
that cannot be written is 400 and nothing is left there.

The upload, download and recovery times are printed for the record.
"""

from __future__ import annotations

import os
import time

from tests.system.support import LocalnetTestCase, sha256_of, wait_for

CUSTOMER = "customer-1"
RESTORED = "restored"
BIG = 64 * 1024 * 1024
N, K = 5, 3
FOLDER = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(100 * 1024), "sub/deeper/c.txt": b""}


class StorageTests(LocalnetTestCase):
    """Upload, survive two dead suppliers, download, recover on a new node."""

    def test_upload_lose_two_suppliers_download_and_recover_elsewhere(self) -> None:
        self.start_network(suppliers=N, customers=1, prefix="bitnode-storage-")
        me = self.nodes[CUSTOMER]["global_id"]
        self.master = f"master${me}"
        self.big_remote = f"{self.master}:big.bin"
        self.keep_three_of_five(CUSTOMER)
        wait_for(lambda: self.connected(CUSTOMER) == N, f"{N} suppliers to be connected", timeout=30)
        timings = {}
        timings["upload"] = self.upload_the_big_file()
        self.upload_a_folder()
        self.check_bad_input()
        wait_for(self.catalog_backed_up, "the catalog backup to reach the suppliers", timeout=30)

        positions = [r["supplier_id"] for r in self.api(CUSTOMER, "suppliers_list")]
        for supplier_id in (positions[0], positions[3]):
            self.net.stop_node(supplier_id.split("@")[0], kill=True)
        timings["download, 2 of 5 suppliers dead"] = self.download_the_big_file(CUSTOMER, "after-kill.bin")

        timings["recover"] = self.recover_on_a_new_node()
        timings["download on the new node"] = self.download_the_big_file(RESTORED, "recovered.bin")
        self.download_the_folder(RESTORED)
        self.check_a_third_dead_supplier_is_one_too_many()
        print("\nstorage timings (64 MiB, 3-of-5): " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))

    # --- steps ----------------------------------------------------------------------------------

    def keep_three_of_five(self, name: str) -> None:
        self.api(name, "config_set", key="services/backups/data-blocks", value=K)
        self.api(name, "config_set", key="services/customer/suppliers-number", value=N)
        self.api(name, "config_set", key="services/backups/catalog-backup-delay", value=0.0)

    def upload_the_big_file(self) -> float:
        local = os.path.join(self.dir, "big.bin")
        with open(local, "wb") as handle:
            for _ in range(BIG // (1 << 20)):
                handle.write(os.urandom(1 << 20))
        self.big_sha = sha256_of(local)
        started = time.monotonic()
        job = self.api(CUSTOMER, "file_upload_start", local_path=local, remote_path=self.big_remote)
        for field in ("id", "state", "bytes_done", "bytes_total", "progress", "segments_total", "speed", "eta"):
            self.assertIn(field, job)
        seen = []

        def finished():
            for row in self.api(CUSTOMER, "transfers_list"):
                if row["remote_path"] == self.big_remote:
                    seen.append(row)
            uploads = self.api(CUSTOMER, "files_uploads")
            return not uploads["running"] and not uploads["pending"]

        wait_for(finished, "the 64 MiB upload", timeout=120)
        seconds = time.monotonic() - started
        (item,) = self.api(CUSTOMER, "files_list", remote_path=self.big_remote)
        self.assertEqual((item["size"], item["type"]), (BIG, "file"))
        self.assertIsNotNone(item["latest_version"], item)
        uploading = [row for row in seen if row["state"] == "UPLOADING"]
        self.assertTrue(uploading, f"transfers_list never showed the upload running: {seen}")
        for row in uploading:
            self.assertEqual(row["bytes_total"], BIG)
            self.assertTrue(0 <= row["bytes_done"] <= BIG and 0.0 <= row["progress"] <= 1.0, row)
        info = self.api(CUSTOMER, "file_info", remote_path=self.big_remote)
        (version,) = info["versions"]
        self.assertEqual((version["k"], version["n"], version["restorable"]), (K, N, True))
        return seconds

    def upload_a_folder(self) -> None:
        root = os.path.join(self.dir, "docs")
        for relative, data in FOLDER.items():
            os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
            with open(os.path.join(root, relative), "wb") as handle:
                handle.write(data)
        done = self.api(CUSTOMER, "file_upload_start", local_path=root, remote_path=f"{self.master}:docs",
                        wait_result=True)
        self.assertEqual((done["files"], done["skipped"]), (len(FOLDER), []), done)
        self.assertEqual({t["state"] for t in done["transfers"]}, {"DONE"})

    def check_bad_input(self) -> None:
        missing = os.path.join(self.dir, "no-such-file.bin")
        self.assertIn("does not exist", self.api_error(404, CUSTOMER, "file_upload_start", local_path=missing,
                                                       remote_path=f"{self.master}:missing.bin"))
        self.assertEqual(self.api(CUSTOMER, "file_exists", remote_path=f"{self.master}:missing.bin")["exist"],
                         False)
        a_file = os.path.join(self.dir, "docs", "a.txt")
        unwritable = [os.path.join(self.dir, "no-such-folder", "out.bin"), os.path.join(a_file, "out.bin")]
        locked = os.path.join(self.dir, "locked")
        os.mkdir(locked, 0o500)
        if os.geteuid() != 0:  # root writes anywhere: a read-only folder stops only others
            unwritable.append(os.path.join(locked, "out.bin"))
        for destination in unwritable:
            self.api_error(400, CUSTOMER, "file_download_start", remote_path=self.big_remote,
                           destination_path=destination, wait_result=True)
            self.assertFalse(os.path.exists(destination), destination)
        self.assertEqual(os.listdir(locked), [])
        self.assertEqual(self.api(CUSTOMER, "files_downloads"), [])

    def download_the_big_file(self, name: str, target_name: str) -> float:
        target = os.path.join(self.dir, target_name)
        started = time.monotonic()
        done = self.api(name, "file_download_start", remote_path=self.big_remote, destination_path=target,
                        wait_result=True, timeout=180)
        seconds = time.monotonic() - started
        self.assertEqual((done["state"], done["bytes_done"]), ("DONE", BIG), done)
        self.assertEqual(sha256_of(target), self.big_sha)
        return seconds

    def recover_on_a_new_node(self) -> float:
        backup_file = os.path.join(self.dir, "identity.backup")
        self.api(CUSTOMER, "identity_backup", destination_filepath=backup_file)
        with open(backup_file, encoding="utf-8") as handle:
            backup_text = handle.read()
        self.net.stop_node(CUSTOMER, kill=True)  # the old machine is gone
        self.nodes[RESTORED] = self.net.add_node(RESTORED, key_size=2048)
        self.assertIsNone(self.nodes[RESTORED]["global_id"])
        # Nothing configured on the new node: it wants localnet's 4 suppliers until the DHT record says 3-of-5.
        self.assertEqual(self.api(RESTORED, "config_get", key="services/customer/suppliers-number")["value"], 4)
        started = time.monotonic()
        me = self.api(RESTORED, "identity_recover", private_key_source=backup_text)
        self.assertEqual(me["global_id"], self.nodes[CUSTOMER]["global_id"])

        def restored():
            code, envelope = self.call(RESTORED, "files_list")
            names = {item["path"] for item in envelope["result"]} if code == 200 else set()
            return {"big.bin", "docs/a.txt", "docs/sub/b.bin"} <= names

        # Seconds here; the suppliers record names two dead suppliers, fired only after dead-after (30 s).
        wait_for(restored, "the catalog to come back from the suppliers", timeout=20)
        seconds = time.monotonic() - started
        status = self.api(RESTORED, "service_info", service_name="service_customer")["status"]
        self.assertTrue(status["recovered_from_dht"], status)
        self.assertEqual(self.api(RESTORED, "config_get", key="services/customer/suppliers-number")["value"], N)
        self.assertEqual(len(self.api(RESTORED, "suppliers_list")), N)
        return seconds

    def download_the_folder(self, name: str) -> None:
        target = os.path.join(self.dir, "docs-back")
        os.mkdir(target)
        done = self.api(name, "file_download_start", remote_path=f"{self.master}:docs", destination_path=target,
                        wait_result=True, timeout=60)
        self.assertEqual((done["files"], done["skipped"]), (len(FOLDER), []), done)
        for relative, data in FOLDER.items():
            with open(os.path.join(target, "docs", relative), "rb") as handle:
                self.assertEqual(handle.read(), data, relative)

    def check_a_third_dead_supplier_is_one_too_many(self) -> None:
        alive = [r["supplier_id"] for r in self.api(RESTORED, "suppliers_list", verbose=True)
                 if r["state"] == "CONNECTED"]
        self.assertEqual(len(alive), K, alive)
        self.net.stop_node(alive[0].split("@")[0], kill=True)
        target = os.path.join(self.dir, "never.bin")
        code, envelope = self.call(RESTORED, "file_download_start", remote_path=self.big_remote,
                                   destination_path=target, wait_result=True, timeout=180)
        self.assertEqual(code, 503, envelope)
        self.assertFalse(os.path.exists(target))
        self.assertFalse([name for name in os.listdir(self.dir) if name.startswith("never.bin")])

    # --- helpers ---------------------------------------------------------------------------------

    def connected(self, name: str) -> int:
        return sum(1 for r in self.api(name, "suppliers_list") if r["state"] == "CONNECTED")

    def catalog_backed_up(self) -> bool:
        status = self.api(CUSTOMER, "service_info", service_name="service_backups")["status"]
        backup = status["catalog_backup"]
        return not status["catalog_backup_pending"] and backup.get("serial", 0) >= 1 and not backup["error"]
