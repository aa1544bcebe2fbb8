"""System tests: shared folders between real node processes on a localnet, through the public HTTP API.

One network (identity server, two suppliers, three customers, 2048-bit keys)
and one scenario: Alice creates a share, uploads a folder into it and grants
it to Bob; Bob opens the share, lists it and downloads the folder byte for
byte from Alice's suppliers; Carol, not granted, gets clear errors; Alice
deletes the share and Bob's next open is refused. Then system test (b) of
issue 17: Bob, granted read-write, uploads into Alice's share with her
suppliers and Alice downloads it byte for byte; Carol, read-only, is refused;
after Alice revokes Bob he can no longer read what comes after, Carol can.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from tests.system.support import LocalnetTestCase, sha256_of, wait_for

FILES = {"a.txt": b"hello from alice\n", "sub/b.bin": os.urandom(200_000), "sub/c.bin": os.urandom(3000)}


class LocalnetSharesTests(LocalnetTestCase):
    """share_create / file_upload_start / share_grant / share_open / files_list / file_download_start / share_delete."""

    def start_three_customers(self, prefix: str) -> tuple[str, str, str]:
        """A network of two suppliers and three customers: the names of the customers (Alice, Bob, Carol)."""
        self.start_network(suppliers=2, customers=3, prefix=prefix, timeout=60)
        return "customer-1", "customer-2", "customer-3"

    def scratch_dir(self, prefix: str) -> str:
        """A fresh folder, removed at cleanup."""
        path = tempfile.mkdtemp(prefix=prefix)
        self.addCleanup(_remove_tree, path)
        return path

    def test_a_shared_folder_between_processes(self) -> None:
        alice, bob, carol = self.start_three_customers("bitnode-shares-")
        alice_id, bob_id = self.nodes[alice]["global_id"], self.nodes[bob]["global_id"]
        folder = self.scratch_dir("bitnode-shares-src-")
        for name, data in FILES.items():
            os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(data)

        # Alice: a share, a folder in it, Bob granted
        share = self.api(alice, "share_create", key_size=2048, label="holidays")
        key_id = share["key_id"]
        self.assertTrue(key_id.startswith("share_") and key_id.endswith("$" + alice_id), key_id)
        upload = self.api(alice, "file_upload_start", local_path=folder, remote_path=f"{key_id}:trip",
                          wait_result=True, open_share=True)
        self.assertEqual((upload["files"], upload["skipped"]), (3, []), upload)
        granted = self.api(alice, "share_grant", key_id=key_id, trusted_user_id=bob_id, timeout=30)
        self.assertTrue(granted["ready"], granted)
        self.assertEqual([s["grantees"] for s in self.api(alice, "shares_list")], [[bob_id]])

        # Bob: the share is there, opens it (his DHT may need a moment to see Alice's suppliers), reads it
        (listed,) = self.api(bob, "shares_list", include_mine=False)
        self.assertEqual((listed["key_id"], listed["state"]), (key_id, "CLOSED"))
        opened = wait_for(lambda: self._open(bob, key_id), "bob to open the share", timeout=40)
        self.assertEqual((opened["state"], opened["files"]), ("CONNECTED", 3), opened)
        items = self.api(bob, "files_list", key_id=key_id)
        self.assertEqual(sorted(i["path"] for i in items if i["type"] == "file"),
                         sorted(f"trip/{name}" for name in FILES))
        target = self.scratch_dir("bitnode-shares-dst-")
        done = self.api(bob, "file_download_start", remote_path=f"{key_id}:trip", destination_path=target,
                        wait_result=True)
        self.assertEqual(done["skipped"], [], done)
        for name, data in FILES.items():
            with open(os.path.join(target, "trip", name), "rb") as handle:
                self.assertEqual(handle.read(), data, name)
        self.assertEqual([s["state"] for s in self.api(bob, "shares_list", only_active=True)], ["CONNECTED"])

        # Carol was never granted: clear errors, nothing listed
        self.assertIn("not granted", self.api_error(404, carol, "share_open", key_id=key_id))
        self.assertIn("not granted", self.api_error(403, carol, "files_list", key_id=key_id))
        self.assertEqual(self.api(carol, "shares_list"), [])

        # Alice deletes the share: her files under it go, and Alice's suppliers refuse Bob from then on
        deleted = self.api(alice, "share_delete", key_id=key_id)
        self.assertEqual((deleted["deleted"], deleted["files"]["items"]), (True, 1), deleted)
        self.assertEqual(self.api(alice, "shares_list"), [])
        self.assertIn("refuse", self.api_error(403, bob, "share_open", key_id=key_id))
        self.assertEqual([e["event"] for e in self.api(alice, "share_history")], ["created", "granted", "deleted"])
        self.assertEqual([e["event"] for e in self.api(bob, "share_history")][:3], ["received", "opened", "connected"])

    def test_a_writer_uploads_into_the_owners_share_a_reader_cannot_and_a_revoke_stops_the_writer(self) -> None:
        """System test (b): Bob (read-write) uploads into Alice's share, Carol (read-only) cannot, then the revoke."""
        alice, bob, carol = self.start_three_customers("bitnode-shares-rw-")
        bob_id, carol_id = self.nodes[bob]["global_id"], self.nodes[carol]["global_id"]
        work = self.scratch_dir("bitnode-shares-rw-")

        def local(name: str, data: bytes) -> str:
            path = os.path.join(work, name)
            with open(path, "wb") as handle:
                handle.write(data)
            return path

        key_id = self.api(alice, "share_create", key_size=2048, label="team")["key_id"]
        self.api(alice, "file_upload_start", local_path=local("plan.txt", b"alice's plan\n"),
                 remote_path=f"{key_id}:plan.txt", wait_result=True)
        granted = self.api(alice, "share_grant", key_id=key_id, trusted_user_id=bob_id, timeout=30)  # rw: the default
        self.assertEqual((granted["mode"], granted["ready"]), ("rw", True), granted)
        granted = self.api(alice, "share_grant", key_id=key_id, trusted_user_id=carol_id, timeout=30, mode="ro")
        self.assertEqual((granted["writers"], granted["ready"]), ([bob_id], True), granted)

        # Bob uploads into Alice's share, with Alice's suppliers
        opened = wait_for(lambda: self._open(bob, key_id), "bob to open the share", timeout=40)
        self.assertEqual((opened["mode"], opened["files"]), ("rw", 1), opened)
        data = os.urandom(300_000)
        done = self.api(bob, "file_upload_start", local_path=local("bob.bin", data),
                        remote_path=f"{key_id}:from-bob/bob.bin", wait_result=True)
        self.assertEqual(done["state"], "DONE", done)

        # Alice opens her share: Bob's file is taken into her catalog and comes down byte for byte
        mine = self.api(alice, "share_open", key_id=key_id)
        self.assertEqual(mine["absorbed"]["taken"], {bob_id: 1}, mine)
        target = self.scratch_dir("bitnode-shares-rw-dst-")
        self.api(alice, "file_download_start", remote_path=f"{key_id}:from-bob/bob.bin", destination_path=target,
                 wait_result=True)
        self.assertEqual(sha256_of(os.path.join(target, "bob.bin")), hashlib.sha256(data).hexdigest())

        # Carol (read-only) sees it and is refused when she uploads
        opened = wait_for(lambda: self._open(carol, key_id), "carol to open the share", timeout=40)
        self.assertEqual((opened["mode"], opened["files"]), ("ro", 2), opened)
        self.assertIn("read-only", self.api_error(403, carol, "file_upload_start", local_path=local("c.txt", b"no"),
                                                  remote_path=f"{key_id}:from-carol.txt"))

        # Alice revokes Bob: a new key, Carol gets it; Bob is refused and cannot read what comes after
        revoked = self.api(alice, "share_revoke", key_id=key_id, trusted_user_id=bob_id, timeout=30)
        self.assertEqual((revoked["ready"], revoked["regranted"]), (True, {carol_id: "sent"}), revoked)
        self.api(alice, "file_upload_start", local_path=local("late.txt", b"after the revoke\n"),
                 remote_path=f"{key_id}:late.txt", wait_result=True)
        self.assertIn("revoked", self.api_error(403, bob, "share_open", key_id=key_id))
        self.assertIn("revoked", self.api_error(403, bob, "file_download_start", remote_path=f"{key_id}:late.txt",
                                                destination_path=target, wait_result=True))
        self.assertIn("revoked", self.api_error(403, bob, "file_upload_start", local_path=local("b2.txt", b"more"),
                                                remote_path=f"{key_id}:from-bob/more.txt", wait_result=True))
        opened = wait_for(lambda: self._open(carol, key_id, files=3), "carol to see the late file", timeout=40)
        self.api(carol, "file_download_start", remote_path=f"{key_id}:late.txt", destination_path=target,
                 wait_result=True)
        with open(os.path.join(target, "late.txt"), "rb") as handle:
            self.assertEqual(handle.read(), b"after the revoke\n")

    def _open(self, name: str, key_id: str, files: int | None = None) -> dict | None:
        code, envelope = self.call(name, "share_open", key_id=key_id)
        if code != 200 or (files is not None and envelope["result"]["files"] != files):
            return None
        return envelope["result"]


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
