"""System test (issue 13.4): a customer killed mid-upload and mid-download resumes both after its restart.

One localnet (identity server, three suppliers, one customer: 2-of-3), the
customer's transfers in 1 MiB segments so that "mid-way" lasts. A 48 MiB file
is uploaded; once a quarter of it is stored, the suppliers are frozen
(SIGSTOP) so the upload is surely still running, and the customer is killed
with ``bitnode localnet stop-node customer-1 --kill`` (SIGKILL: no clean
shutdown). The suppliers are thawed and ``start-node`` brings the customer
back: the upload goes on from the last segment it had recorded (the transfer
list says ``after_restart`` and from which segment) and completes. The same
for a download: killed mid-way, its ``.part`` file is left beside the
destination; after the restart it goes on from its last checkpoint, the file
is byte-identical and no ``.part`` file is left. The test prints how long each
step took.
"""

from __future__ import annotations

import os
import signal
import time

from tests.system.support import LocalnetTestCase, sha256_of, wait_for
from tests.system.test_silent_supplier import write_random_file

CUSTOMER = "customer-1"
MiB = 1024 * 1024
SIZE = 48 * MiB
SETTINGS = {"services/backups/segment-size": MiB, "services/backups/segments-in-flight": 1,
            "services/backups/download-checkpoint": 2 * MiB}


class CrashResumeTests(LocalnetTestCase):
    """Kill -9 mid-transfer, start again: the job goes on and the bytes come back identical."""

    def setUp(self) -> None:
        started = time.monotonic()
        self.start_network(suppliers=3, customers=1, prefix="bitnode-crash-", timeout=90)
        for key, value in SETTINGS.items():
            self.api(CUSTOMER, "config_set", key=key, value=value)
        self.suppliers = [name for name in self.nodes if name.startswith("supplier")]
        self.remote = f"master${self.nodes[CUSTOMER]['global_id']}:big.bin"
        self.local = os.path.join(self.dir, "big.bin")
        self.sha = write_random_file(self.local, SIZE)
        self.timings = {"network": time.monotonic() - started}

    def test_a_killed_customer_resumes_its_upload_and_its_download(self) -> None:
        started = time.monotonic()
        self.api(CUSTOMER, "file_upload_start", local_path=self.local, remote_path=self.remote)
        self.kill_mid_way("upload", SIZE // 4)
        self.restart_customer()
        upload = wait_for(lambda: self.finished("upload"), "the resumed upload to end", timeout=180)
        self.assertEqual(upload["state"], "DONE", upload)
        self.assertTrue(upload["after_restart"], upload)
        self.assertGreater(upload["result"]["resumed_from_segment"], 0, upload)
        info = self.api(CUSTOMER, "file_info", remote_path=self.remote)
        self.assertTrue(info["versions"][0]["restorable"], info)
        self.timings["upload, kill, resume"] = time.monotonic() - started
        self.timings["upload resumed from segment"] = upload["result"]["resumed_from_segment"]

        started = time.monotonic()
        target_dir = os.path.join(self.dir, "restore")
        os.makedirs(target_dir)
        self.api(CUSTOMER, "file_download_start", remote_path=self.remote, destination_path=target_dir)
        self.kill_mid_way("download", 4 * MiB)
        parts = [name for name in os.listdir(target_dir) if name.endswith(".part")]
        self.assertEqual(len(parts), 1, os.listdir(target_dir))  # what a crash leaves, until the restart
        self.restart_customer()
        download = wait_for(lambda: self.finished("download"), "the resumed download to end", timeout=180)
        self.assertEqual(download["state"], "DONE", download)
        self.assertTrue(download["after_restart"], download)
        self.assertGreater(download["result"]["resumed_from_segment"], 0, download)
        self.assertEqual(sha256_of(os.path.join(target_dir, "big.bin")), self.sha)
        self.assertEqual([n for n in os.listdir(target_dir) if n.endswith(".part")], [])
        status = self.api(CUSTOMER, "service_info", service_name="service_backups")["status"]
        self.assertEqual(status["transfers_resumed"], {"downloads_resumed": 1}, status)
        self.timings["download, kill, resume"] = time.monotonic() - started
        self.timings["download resumed from segment"] = download["result"]["resumed_from_segment"]
        print("crash and resume (s, segments):", {k: round(v, 1) for k, v in self.timings.items()})

    # --- steps ---------------------------------------------------------------------------------------

    def kill_mid_way(self, kind: str, at_least: int) -> None:
        """Once ``at_least`` bytes moved, freeze the suppliers (the job cannot end), then kill the customer."""
        job = wait_for(lambda: self.live(kind, at_least), f"the {kind} to pass {at_least} bytes", timeout=120)
        pids = self.freeze(self.suppliers)
        job = self.live(kind, 0)
        self.assertIsNotNone(job, f"the {kind} ended before the kill")
        self.assertLess(job["bytes_done"], job["bytes_total"], job)
        self.kill_node(CUSTOMER)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    def restart_customer(self) -> None:
        self.start_node(CUSTOMER)

    def live(self, kind: str, at_least: int) -> dict | None:
        for job in self.api(CUSTOMER, "transfers_list"):
            if job["kind"] == kind and job["bytes_done"] >= at_least and job["state"] not in ("DONE", "FAILED"):
                return job
        return None

    def finished(self, kind: str) -> dict | None:
        for job in self.api(CUSTOMER, "transfers_list", include_finished=True):
            if job["kind"] == kind and job["after_restart"] and job["state"] in ("DONE", "FAILED", "CANCELLED"):
                return job
        return None
