"""System test (issue 18): a customer killed in the middle of a folder upload of small files reports nothing
half-written as done.

One localnet (identity server, three suppliers, one customer: 2-of-3) with packs of at most 64 KiB
(``services/backups/pack-max-bytes``), so a folder of 600 files of 1-12 KiB goes up as about 60 packs, one
after the other. Once a few packs are DONE the suppliers are frozen (SIGSTOP: the running pack cannot end)
and the customer is killed (``bitnode localnet stop-node customer-1 --kill``). After ``start-node``:

- the pack that was uploading is abandoned (``transfers_resumed`` says so; ``service_info`` shows no pack
  uploading), the ones that had not begun are simply gone with the process;
- every file the catalog holds comes back byte for byte in a folder download, every file of a pack that
  was DONE before the kill is among them, and no other file is listed;
- the same folder uploaded again comes back whole.
"""

from __future__ import annotations

import os
import random
import signal
import time

from tests.system.support import LocalnetTestCase, sha256_of, wait_for

CUSTOMER = "customer-1"
FILES = 600
SETTINGS = {"services/backups/pack-max-bytes": 64 * 1024}


class PackCrashTests(LocalnetTestCase):
    """Kill -9 in the middle of a folder upload of packs, start again: only whole packs' files are there."""

    def setUp(self) -> None:
        self.start_network(suppliers=3, customers=1, prefix="bitnode-packcrash-", timeout=90)
        for key, value in SETTINGS.items():
            self.api(CUSTOMER, "config_set", key=key, value=value)
        self.suppliers = [name for name in self.nodes if name.startswith("supplier")]
        self.folder = os.path.join(self.dir, "photos")
        os.makedirs(self.folder)
        rnd = random.Random(18)
        self.digests = {}
        for i in range(FILES):
            name = f"f{i:04d}.bin"
            with open(os.path.join(self.folder, name), "wb") as handle:
                handle.write(rnd.randbytes(rnd.randrange(1024, 12 * 1024)))
            self.digests[name] = sha256_of(os.path.join(self.folder, name))
        self.remote = f"master${self.nodes[CUSTOMER]['global_id']}:photos"

    def test_a_folder_upload_killed_mid_way_leaves_only_whole_packs(self) -> None:
        started = time.monotonic()
        self.api(CUSTOMER, "file_upload_start", local_path=self.folder, remote_path=self.remote)
        wait_for(lambda: len(self.packs_done()) >= 3, "three packs to be DONE", timeout=120)
        pids = self.freeze(self.suppliers)
        done_before = self.packs_done()
        live = [j for j in self.api(CUSTOMER, "transfers_list") if j["kind"] == "upload"]
        self.assertTrue(live, "the folder upload ended before the kill")
        self.kill_node(CUSTOMER)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        self.start_node(CUSTOMER)

        status = wait_for(self.resumed, "the restarted customer to look at what was interrupted", timeout=120)
        self.assertGreaterEqual(status["transfers_resumed"].get("uploads_abandoned", 0), 1, status)
        self.assertEqual(status["packs"].get("uploading"), 0, status)
        kept = self.restored("after-crash")
        files_done = sum(job["files"] for job in done_before)
        self.assertGreaterEqual(len(kept), files_done)
        self.assertLess(len(kept), FILES)
        self.assertEqual({name: self.digests[name] for name in kept}, kept)  # whole, and nothing half-written

        again = self.api(CUSTOMER, "file_upload_start", local_path=self.folder, remote_path=self.remote,
                         wait_result=True, timeout=300)
        self.assertEqual(again["skipped"], [], again)
        self.assertEqual(self.restored("again"), self.digests)
        print(f"pack crash: {files_done} files DONE before the kill, {len(kept)} kept, "
              f"{time.monotonic() - started:.1f} s")

    # --- steps ---------------------------------------------------------------------------------------

    def packs_done(self) -> list[dict]:
        return [j for j in self.api(CUSTOMER, "transfers_list", include_finished=True)
                if j["kind"] == "upload" and j.get("pack") and j["state"] == "DONE"]

    def resumed(self) -> dict | None:
        code, envelope = self.call(CUSTOMER, "service_info", service_name="service_backups")
        if code != 200:
            return None
        status = envelope["result"]["status"]
        return status if status.get("transfers_resumed") and status.get("packs") else None

    def restored(self, label: str) -> dict[str, str]:
        """The folder downloaded into a fresh place: SHA-256 of each file by name."""
        target = os.path.join(self.dir, f"restore-{label}")
        os.makedirs(target)
        done = self.api(CUSTOMER, "file_download_start", remote_path=self.remote, destination_path=target,
                        wait_result=True, timeout=300)
        self.assertEqual(done["skipped"], [], done)
        folder = os.path.join(target, "photos")
        return {name: sha256_of(os.path.join(folder, name)) for name in os.listdir(folder)}
