"""System test: transfers work around a silent supplier instead of waiting for its timeouts.

A supplier whose process is stopped (SIGSTOP) keeps its sockets open but never
answers: every call to it just waits for its timeout (fetch 60 s, store
120 s). One network of real processes (identity server, four suppliers,
customer-1 hiring all four, 2048-bit keys, so 2-of-4) and one test:

1. a 12 MiB file (three 4 MiB segments) goes up while everyone answers;
2. the process of the supplier at position 0 (a data-block holder, asked first
   by every download) is stopped;
3. the file comes back byte for byte, far sooner than one fetch timeout: the
   downloader fetches a spare block beside the silent one;
4. a second 12 MiB file goes up, far sooner than one store timeout: the
   uploader gives the silent supplier's blocks up once each segment has its k
   acks, and the catalog shows that supplier holds none of them; the second
   file still comes back byte for byte.

The stopped process is always resumed (SIGCONT) at cleanup, before the network
is taken down. The times measured are printed for the record. The network's
directory is removed when the test passes and kept (its path printed) when it
fails, for its node logs.
"""

from __future__ import annotations

import os
import signal
import time

from tests.system.support import LocalnetTestCase, pid_alive, sha256_of, wait_for

CUSTOMER = "customer-1"
SUPPLIERS = 4
SIZE = 12 * 1024 * 1024
#: Far below the 60 s fetch timeout: a download that waited for the silent supplier once would miss it.
DOWNLOAD_LIMIT = 30.0
#: Far below the 120 s store timeout: an upload that waited for the silent supplier once would miss it.
UPLOAD_LIMIT = 60.0


def write_random_file(path: str, size: int) -> str:
    """A file of ``size`` random bytes; its SHA-256."""
    with open(path, "wb") as handle:
        for _ in range(size // (1 << 20)):
            handle.write(os.urandom(1 << 20))
    return sha256_of(path)


def process_stopped(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


class SilentSupplierTests(LocalnetTestCase):
    """Download and upload with the process of one data-block supplier stopped."""

    def test_transfers_do_not_stall_on_a_stopped_supplier(self) -> None:
        self.start_network(suppliers=SUPPLIERS, customers=1, prefix="bitnode-silent-", timeout=60)
        me = self.nodes[CUSTOMER]["global_id"]
        master = f"master${me}"
        wait_for(lambda: self.connected() == SUPPLIERS, f"{SUPPLIERS} suppliers to be connected", timeout=30)
        timings = {}

        first_local = os.path.join(self.dir, "first.bin")
        first_sha = write_random_file(first_local, SIZE)
        first_remote = f"{master}:first.bin"
        timings["upload, all answering"] = self.upload(first_local, first_remote, 60.0)
        version = self.latest_version(first_remote)
        self.assertEqual(version["restorable"], True, version)
        self.assertEqual(version["segments_total"], 3, version)
        k, n = version["k"], version["n"]
        self.assertEqual((k, n), (2, SUPPLIERS), version)

        # Stop the supplier at position 0: block 0 of every segment is a data block, fetched first.
        rows = self.api(CUSTOMER, "suppliers_list")
        self.assertEqual(rows[0]["position"], 0, rows)
        silent_id = rows[0]["supplier_id"]
        self.assertEqual(version["positions"][0]["supplier"], silent_id, version)
        self.assertEqual(version["positions"][0]["blocks_held"], 3, version)
        (silent_name,) = [name for name, node in self.nodes.items() if node["global_id"] == silent_id]
        pid = self.nodes[silent_name]["pid"]
        self.assertTrue(pid and pid_alive(pid), (silent_name, pid))
        self.addCleanup(self.resume, pid)  # registered after the network: runs before it is taken down
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: process_stopped(pid), f"{silent_name} (pid {pid}) to be stopped", timeout=5)

        # 1. download the first file while the data-block holder at position 0 says nothing
        seconds, done = self.download(first_remote, "first-back.bin", DOWNLOAD_LIMIT)
        timings["download, position 0 stopped"] = seconds
        self.assertEqual((done["state"], done["bytes_done"]), ("DONE", SIZE), done)
        self.assertEqual(sha256_of(os.path.join(self.dir, "first-back.bin")), first_sha)

        # 2. upload a second file: the silent supplier's blocks are given up, not waited for
        second_local = os.path.join(self.dir, "second.bin")
        second_sha = write_random_file(second_local, SIZE)
        second_remote = f"{master}:second.bin"
        timings["upload, position 0 stopped"] = self.upload(second_local, second_remote, UPLOAD_LIMIT)
        version = self.latest_version(second_remote)
        self.assertEqual(version["restorable"], True, version)
        # The stopped process cannot have acknowledged anything: proof it really was silent.
        self.assertEqual(version["positions"][0]["blocks_held"], 0, version)
        self.assertTrue(process_stopped(pid), f"{silent_name} is no longer stopped")

        # and it comes back, still without the silent supplier
        seconds, done = self.download(second_remote, "second-back.bin", DOWNLOAD_LIMIT)
        timings["download of the second file"] = seconds
        self.assertEqual((done["state"], done["bytes_done"]), ("DONE", SIZE), done)
        self.assertEqual(sha256_of(os.path.join(self.dir, "second-back.bin")), second_sha)

        state = self.api(CUSTOMER, "suppliers_list", verbose=True)[0]
        print(f"\nsilent supplier timings (12 MiB, {k}-of-{n}, {silent_name} stopped): "
              + ", ".join(f"{name} {value:.1f}s" for name, value in timings.items())
              + f"; position 0 now {state['supplier_id'].split('@')[0]} {state['state']}")

    # --- steps ----------------------------------------------------------------------------------

    def upload(self, local: str, remote: str, limit: float) -> float:
        """Upload with wait_result; the seconds it took, which must stay under ``limit``."""
        started = time.monotonic()
        try:
            code, envelope = self.call(CUSTOMER, "file_upload_start", local_path=local, remote_path=remote,
                                       wait_result=True, timeout=limit + 15)
        except OSError as err:
            self.fail(f"upload of {remote} did not answer in {time.monotonic() - started:.1f}s: {err!r}")
        seconds = time.monotonic() - started
        self.assertEqual(code, 200, (remote, f"{seconds:.1f}s", envelope))
        job = envelope["result"]
        self.assertEqual((job["state"], job["bytes_done"]), ("DONE", SIZE), job)
        self.assertLess(seconds, limit, f"upload of {remote} took {seconds:.1f}s")
        return seconds

    def download(self, remote: str, target_name: str, limit: float) -> tuple[float, dict]:
        """Download with wait_result to a new file; (seconds, the job), the seconds under ``limit``."""
        target = os.path.join(self.dir, target_name)
        self.assertFalse(os.path.exists(target))
        started = time.monotonic()
        try:
            code, envelope = self.call(CUSTOMER, "file_download_start", remote_path=remote,
                                       destination_path=target, wait_result=True, timeout=limit + 15)
        except OSError as err:
            self.fail(f"download of {remote} did not answer in {time.monotonic() - started:.1f}s: {err!r}")
        seconds = time.monotonic() - started
        self.assertEqual(code, 200, (remote, f"{seconds:.1f}s", envelope))
        self.assertLess(seconds, limit, f"download of {remote} took {seconds:.1f}s")
        return seconds, envelope["result"]

    def latest_version(self, remote: str) -> dict:
        info = self.api(CUSTOMER, "file_info", remote_path=remote)
        (version,) = info["versions"]
        return version

    # --- helpers ---------------------------------------------------------------------------------

    def connected(self) -> int:
        return sum(1 for r in self.api(CUSTOMER, "suppliers_list") if r["state"] == "CONNECTED")

    def resume(self, pid: int) -> None:
        """SIGCONT a stopped node, so that the network can be taken down cleanly."""
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
            wait_for(lambda: not process_stopped(pid), f"pid {pid} to run again", timeout=5)

