"""System test (c): the customer's machine is lost for longer than its suppliers record lives; the key backup
alone brings every file back.

One network of real processes (identity server, four suppliers, one customer,
2048-bit keys). The customer signs its suppliers record with a 20-second
lifetime (``services/customer/suppliers-record-ttl``), uploads a file (done
means the catalog backup naming it is on k suppliers), writes an identity
backup, and is killed. The test waits well past the lifetime — three times
it, and until the record a supplier finds was stored by a supplier long after
the customer died — then a brand-new node (``localnet add-node``) recovers
the identity from the backup file: it must find the old suppliers, list the
file and download it byte-identical. The times are printed for the record.
"""

from __future__ import annotations

import os
import time

from tests.system.support import LocalnetTestCase, sha256_of, wait_for

CUSTOMER = "customer-1"
NEW_MACHINE = "newlaptop"
TTL = 20
SIZE = 3 * 1024 * 1024


class RecordOutlivesTheCustomerTests(LocalnetTestCase):
    """Kill the customer, wait past its record's lifetime, recover from the key backup on a new node."""

    def test_files_come_back_from_the_key_backup_long_after_the_record_would_have_expired(self) -> None:
        started = time.monotonic()
        self.start_network(suppliers=4, customers=1, prefix="bitnode-record-", timeout=120)
        me = self.nodes[CUSTOMER]["global_id"]
        remote = f"master${me}:docs/report.bin"
        self.api(CUSTOMER, "config_set", key="services/customer/suppliers-record-ttl", value=TTL)
        positions = wait_for(lambda: self.record_with_ttl(CUSTOMER, me), "the record signed with the new ttl",
                             timeout=60)["suppliers"]
        self.assertEqual(len([p for p in positions if p]), 4)

        source = os.path.join(self.dir, "report.bin")
        with open(source, "wb") as handle:
            handle.write(os.urandom(SIZE))
        upload_started = time.monotonic()
        done = self.api(CUSTOMER, "file_upload_start", local_path=source, remote_path=remote, wait_finish=True,
                        timeout=120)
        upload_seconds = time.monotonic() - upload_started
        self.assertEqual(done["state"], "DONE", done)
        info = self.api(CUSTOMER, "file_info", remote_path=remote)
        self.assertTrue(info["catalog_backup"]["current"], info["catalog_backup"])  # done means findable
        backup_file = os.path.join(self.dir, "customer-1.key-backup")
        self.api(CUSTOMER, "identity_backup", destination_filepath=backup_file)

        # The machine is lost.
        self.net.stop_node(CUSTOMER, kill=True)
        killed = time.time()
        killed_mono = time.monotonic()
        supplier = next(name for name, node in self.nodes.items() if node["global_id"] == positions[0])

        def republished_long_after():
            found = self.record_with_ttl(supplier, me)
            return found if found and found["created"] > killed + 2 * TTL else None

        found = wait_for(republished_long_after, "a copy of the record stored by a supplier after the customer died",
                         timeout=8 * TTL)
        self.assertEqual(found["suppliers"], positions)
        wait_for(lambda: time.monotonic() - killed_mono > 3 * TTL, "three lifetimes of the record", timeout=4 * TTL)
        gone_seconds = time.monotonic() - killed_mono

        # A new machine with nothing but the key backup.
        recover_started = time.monotonic()
        self.nodes[NEW_MACHINE] = self.net.add_node(NEW_MACHINE)
        recovered = self.api(NEW_MACHINE, "identity_recover", private_key_source=backup_file, timeout=60)
        self.assertEqual(recovered["global_id"], me)

        def listed():
            code, envelope = self.call(NEW_MACHINE, "files_list", remote_path=f"master${me}:docs")
            names = [row["name"] for row in envelope.get("result") or []] if code == 200 else []
            return names if "report.bin" in names else None

        wait_for(listed, "the file to be listed on the new machine", timeout=120)
        list_seconds = time.monotonic() - recover_started
        rows = self.api(NEW_MACHINE, "suppliers_list")
        self.assertEqual([r["supplier_id"] for r in rows], positions)  # the old suppliers, at their positions
        target = os.path.join(self.dir, "recovered.bin")
        self.api(NEW_MACHINE, "file_download_start", remote_path=remote, destination_path=target, wait_result=True,
                 timeout=120)
        self.assertEqual(sha256_of(target), sha256_of(source))
        total = time.monotonic() - recover_started
        print(f"\nrecord outlives the customer (ttl {TTL}s, {SIZE >> 20} MiB): upload {upload_seconds:.1f}s, "
              f"customer gone {gone_seconds:.0f}s, recovered and listed in {list_seconds:.1f}s, "
              f"downloaded byte-identical {total:.1f}s after the recovery began; whole test "
              f"{time.monotonic() - started:.0f}s")

    def record_with_ttl(self, name: str, customer_id: str) -> dict | None:
        """The suppliers record node ``name`` finds for ``customer_id``, once it carries the test's lifetime."""
        code, envelope = self.call(name, "suppliers_dht_lookup", customer_id=customer_id, timeout=30)
        found = envelope.get("result") if code == 200 else None
        return found if found and found.get("ttl") == TTL else None
