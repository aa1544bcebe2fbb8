"""In-process network: Alice shares a folder with Bob through her suppliers; Carol, not granted, cannot read.

An identity server that is also the DHT seed, three supplier nodes and three
users in one reactor on loopback with 2048-bit keys. Alice hires two
suppliers (real service_customer, service_backups, service_supplier),
creates a share, uploads a folder into it and grants it to Bob; Bob opens
it (DHT lookup of Alice's suppliers, index read from them) and downloads the
files from Alice's suppliers. Carol is refused by the suppliers themselves.
Then the revoke and delete paths. Everything goes through the API
dispatcher, the way a client calls it, except Carol's forged reads.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest

from bitnode.access import share_absorb, share_index
from bitnode.access.key_exchange_service import KeyExchangeService
from bitnode.access.share_reader import ShareReader
from bitnode.access.shares_service import SharesService
from bitnode.app import api_server
from bitnode.customer.customer_service import CustomerService
from bitnode.customer.suppliers_record import lookup_suppliers
from bitnode.dht.dht_service import DHTService
from bitnode.errors import Forbidden
from bitnode.p2p.network_service import NetworkService
from bitnode.storage import share_scope
from bitnode.storage.backups_service import BackupsService
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService
from tests.customer.test_customer_service import FAST_MARKET
from tests.interface.support import start_node
from tests.storage.test_backups_service import read
from tests.supplier.test_supplier_service import Net, gid, ok, until

READER = [IdentityService, GatewayService, NetworkService, DHTService, KeyExchangeService, BackupsService,
          SharesService]
OWNER = [*READER[:4], CustomerService, *READER[4:]]
USER_SETTINGS = {"services/backups/segment-size": 64 * 1024, "services/backups/catalog-backup-delay": 3600.0,
                 "services/shares/index-delay": 0.05, "services/shares/request-timeout": 5.0}
FILES = {"a.txt": os.urandom(1000), "sub/b.bin": os.urandom(150_000), "sub/deeper/c.bin": b""}


class ShareNetworkCase(unittest.TestCase):
    """Three suppliers; Alice (hires two of them), Bob and Carol; helpers. No tests of its own."""

    timeout = 240

    @inlineCallbacks
    def setUp(self):
        self.net = net = Net()
        self.suppliers = yield net.start_market(self, 3)
        self.alice = yield net.node(self, "alice", OWNER, dict(FAST_MARKET, **USER_SETTINGS), wait_for="service_shares")
        self.bob = yield net.node(self, "bob", READER, USER_SETTINGS, wait_for="service_shares")
        self.carol = yield net.node(self, "carol", READER, USER_SETTINGS, wait_for="service_shares")
        customer = self.alice.service_driver.get("service_customer")
        storage = self.alice.service_driver.get("service_backups")

        def hired():
            roster = customer.roster
            return (roster is not None and len([s for s in roster.positions if s]) == 2
                    and customer.dht_revision == roster.revision and storage.transfers is not None)

        yield until(hired, "alice to hire two suppliers and publish them", seconds=90)
        self.folder = os.path.abspath(self.mktemp())
        for name, data in FILES.items():
            os.makedirs(os.path.dirname(os.path.join(self.folder, name)), exist_ok=True)
            with open(os.path.join(self.folder, name), "wb") as handle:
                handle.write(data)

    @inlineCallbacks
    def error(self, node, code, method, **kwargs):
        answer = yield api_server(node).dispatcher.execute_by_name(method, kwargs)
        self.assertEqual(answer.code, code, (method, answer.envelope))
        return " ".join(answer.envelope["errors"])

    @inlineCallbacks
    def shared_folder(self, mode="ro"):
        """Alice creates a share, uploads the folder into it and grants it to Bob (``mode``); the share's key id."""
        share = yield ok(self, self.alice, "share_create", key_size=2048, label="holidays")
        key_id = share["key_id"]
        self.assertTrue(key_id.startswith("share_") and key_id.endswith("$" + gid(self.alice)), key_id)
        self.assertEqual((share["mine"], share["state"], share["label"]), (True, "CONNECTED", "holidays"))
        upload = yield ok(self, self.alice, "file_upload_start", local_path=self.folder,
                          remote_path=f"{key_id}:photos", wait_result=True, open_share=True)
        self.assertEqual((upload["files"], upload["skipped"]), (3, []))
        granted = yield ok(self, self.alice, "share_grant", key_id=key_id, trusted_user_id=gid(self.bob), timeout=20,
                           mode=mode)
        self.assertEqual((granted["trusted_user_id"], granted["ready"], granted["suppliers"]["stored"], granted["mode"]),
                         (gid(self.bob), True, 2, mode), granted)
        return key_id

    def local_file(self, data: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    @inlineCallbacks
    def download(self, node, remote_path):
        target = os.path.abspath(self.mktemp())
        os.makedirs(target)
        yield ok(self, node, "file_download_start", remote_path=remote_path, destination_path=target, wait_result=True)
        return target

    def assert_same_folder(self, downloaded):
        for name, data in FILES.items():
            self.assertEqual(read(os.path.join(downloaded, "photos", name)), data, name)

    def reader(self, node, key_id):
        """A ShareReader over ``node``'s gateway, the way a coordinator reads (used to knock on doors directly)."""
        driver = node.service_driver
        keystore = driver.get("service_identity").keystore
        return ShareReader(node.clock, node.run_in_thread, driver.get("service_gateway").require_gateway, key_id,
                           lambda owner: lookup_suppliers(driver.get("service_entangled_dht"), driver.get("service_identity"),
                                                          owner),
                           driver.get("service_identity").fetch_identity,
                           lambda: keystore.private_key(key_id), lambda: 5.0)


class SharesNetworkTests(ShareNetworkCase):
    """A read-only member, a stranger, revoking and deleting."""

    @inlineCallbacks
    def test_bob_reads_the_shared_folder_carol_is_refused_and_revoking_stops_bob(self):
        key_id = yield self.shared_folder()
        alice_id = gid(self.alice)

        # Bob got the key: the share is listed, closed until he opens it
        (listed,) = yield ok(self, self.bob, "shares_list")
        self.assertEqual((listed["key_id"], listed["mine"], listed["state"], listed["granted_by"]),
                         (key_id, False, "CLOSED", alice_id))
        self.assertIn("not open", (yield self.error(self.bob, 409, "files_list", key_id=key_id)))
        opened = yield ok(self, self.bob, "share_open", key_id=key_id)
        self.assertEqual((opened["state"], opened["files"]), ("CONNECTED", 3), opened)
        items = yield ok(self, self.bob, "files_list", key_id=key_id)
        self.assertEqual(sorted(i["path"] for i in items if i["type"] == "file"),
                         sorted(f"photos/{name}" for name in FILES))
        self.assertEqual(sum(i["size"] for i in items), sum(len(d) for d in FILES.values()))
        # all_customers: my own files, then those of the shares granted to me and open
        mine = yield ok(self, self.bob, "files_list")
        everything = yield ok(self, self.bob, "files_list", all_customers=True)
        self.assertEqual(everything, mine + items)
        self.assertEqual((yield ok(self, self.bob, "files_list", all_customers=True, offset=len(mine), limit=2)),
                         items[:2])
        self.assertEqual((yield ok(self, self.bob, "files_list", key_id=key_id, all_customers=True)), items)
        info = yield ok(self, self.bob, "file_info", remote_path=f"{key_id}:photos/sub/b.bin")
        self.assertTrue(info["versions"][0]["restorable"])
        self.assert_same_folder((yield self.download(self.bob, f"{key_id}:photos")))
        self.assertIn(("shared_access_coordinator", "CONNECTED"),
                      {(m["name"], m["state"]) for m in (yield ok(self, self.bob, "automats_list"))})
        # a read-only member reads: uploading into Alice's share from Bob's node is refused, so is deleting
        text = yield self.error(self.bob, 403, "file_upload_start", local_path=self.folder, remote_path=f"{key_id}:mine")
        self.assertIn("read-only", text)
        yield self.error(self.bob, 403, "file_delete", remote_path=f"{key_id}:photos/a.txt")
        served = sum(s.service_driver.get("service_supplier").served["shared_Retrieve"] for s in self.suppliers)
        self.assertGreater(served, 0)

        # Carol holds no key: a clear error through the API ...
        self.assertIn("not granted", (yield self.error(self.carol, 404, "share_open", key_id=key_id)))
        self.assertIn("not granted", (yield self.error(self.carol, 403, "files_list", key_id=key_id)))
        # ... and Alice's suppliers refuse her reads even when she asks them directly
        reader = self.reader(self.carol, key_id)
        positions = yield reader.find_suppliers()
        yield reader.connect(positions)
        failure = yield self.assertFailure(reader.fetch_index(positions), Forbidden)
        self.assertIn("not granted, or revoked", str(failure))
        storage = self.alice.service_driver.get("service_backups")
        version = (yield self.alice.run_in_thread(storage.catalog.latest_complete, key_id, "photos/a.txt"))
        self.assertTrue(version["version_id"].startswith(key_id.split("$")[0] + "."))
        block = f"{version['version_id']}/0/0"
        yield self.assertFailure(reader.server(positions[0]).fetch_block(alice_id, block), Forbidden)
        yield self.assertFailure(reader.server(positions[0]).fetch_block(alice_id, "catalog-1/manifest"), Forbidden)
        refused = sum(s.service_driver.get("service_supplier").refused["share_denied"] for s in self.suppliers)
        self.assertGreaterEqual(refused, 4)

        # a new file in the share: the index is published again and Bob sees it when he reads again
        extra = os.path.abspath(self.mktemp())
        with open(extra, "wb") as handle:
            handle.write(b"one more")
        yield ok(self, self.alice, "file_upload_start", local_path=extra, remote_path=f"{key_id}:photos/new.txt",
                 wait_result=True)
        shares = self.alice.service_driver.get("service_shares")

        yield until(lambda: shares.registry.get(key_id)["index_sha256"] == _published_digest(storage, shares, key_id),
                    "the index with the new file to be published")
        # Bob's download of a file his copy of the index does not list yet reads the index again first
        target = yield self.download(self.bob, f"{key_id}:photos/new.txt")
        self.assertEqual(read(os.path.join(target, "new.txt")), b"one more")
        self.assertEqual([s["files"] for s in (yield ok(self, self.bob, "shares_list"))], [4])

        # Alice revokes Bob: the suppliers refuse him from the next read on
        revoked = yield shares.revoke(key_id, gid(self.bob))
        self.assertEqual((revoked["grantees"], revoked["ready"]), ([], True))
        self.assertIn("not granted, or revoked", (yield self.error(self.bob, 403, "share_open", key_id=key_id)))
        failed = yield self.error(self.bob, 403, "file_download_start", remote_path=f"{key_id}:photos/a.txt",
                                  destination_path=os.path.abspath(self.mktemp()), wait_result=True)
        self.assertIn("not granted, or revoked", failed)
        (listed,) = yield ok(self, self.bob, "shares_list")
        self.assertEqual(listed["state"], "DISCONNECTED")
        yield ok(self, self.bob, "share_close", key_id=key_id)
        self.assertEqual((yield ok(self, self.bob, "shares_list", only_active=True)), [])

        events = [e["event"] for e in (yield ok(self, self.alice, "share_history"))]
        self.assertEqual(events, ["created", "granted", "revoked"])
        events = [(e["event"], e["user"]) for e in (yield ok(self, self.bob, "share_history"))]
        self.assertEqual(events, [("received", alice_id), ("opened", alice_id), ("connected", alice_id),
                                  ("disconnected", alice_id), ("closed", gid(self.bob))])

    @inlineCallbacks
    def test_deleting_a_share_removes_its_files_and_every_grant(self):
        key_id = yield self.shared_folder()
        yield ok(self, self.bob, "share_open", key_id=key_id)
        positions = list(self.bob.service_driver.get("service_shares").views[key_id].positions)

        deleted = yield ok(self, self.alice, "share_delete", key_id=key_id)
        self.assertEqual((deleted["deleted"], deleted["files"]["items"], deleted["suppliers"]["removed"]),
                         (True, 1, 2), deleted)
        self.assertEqual((yield ok(self, self.alice, "shares_list")), [])
        self.assertIn("not one of my keys", (yield self.error(self.alice, 403, "files_list", key_id=key_id)))
        self.assertFalse(self.alice.service_driver.get("service_identity").keystore.has(key_id))
        for supplier in self.suppliers:
            held = yield supplier.service_driver.get("service_supplier").desk.store.list_blocks(gid(self.alice), "")
            self.assertEqual([p for p in held if p.startswith("share_") or p.startswith("acl.")], [])

        # Bob's suppliers' answers change: the grant is gone with the share
        failure = yield self.assertFailure(self.reader(self.bob, key_id).fetch_index(positions), Forbidden)
        self.assertIn(key_id, str(failure))
        self.assertIn("refuse", (yield self.error(self.bob, 403, "share_open", key_id=key_id)))
        # Bob deletes his copy of the key: the share is gone from his list too
        yield ok(self, self.bob, "share_delete", key_id=key_id)
        self.assertEqual((yield ok(self, self.bob, "shares_list")), [])
        self.assertIn("not a share key", (yield self.error(self.bob, 400, "share_open", key_id="master$" + gid(self.bob))))
        self.assertEqual([e["event"] for e in (yield ok(self, self.alice, "share_history"))],
                         ["created", "granted", "deleted"])

    @inlineCallbacks
    def test_downloads_from_an_open_share_are_listed_with_their_progress_like_my_own(self):
        key_id = yield self.shared_folder()
        yield ok(self, self.bob, "share_open", key_id=key_id)
        held = HoldLaterSegments(self.bob.service_driver.get("service_shares").views[key_id].reader)
        remote = f"{key_id}:photos/sub/b.bin"
        target = os.path.abspath(self.mktemp())
        os.makedirs(target)
        yield ok(self, self.bob, "file_download_start", remote_path=remote, destination_path=target)
        segment = USER_SETTINGS["services/backups/segment-size"]

        @inlineCallbacks
        def first_segment_written():
            rows = yield ok(self, self.bob, "files_downloads")
            return rows and rows[0]["bytes_done"] == segment and held.waiting

        yield until(first_segment_written, "the first segment of the shared file to be written")
        (listed,) = yield ok(self, self.bob, "files_downloads")
        live = yield ok(self, self.bob, "transfers_list")
        self.assertEqual([(t["id"], t["remote_path"]) for t in live], [(listed["id"], remote)])
        size = len(FILES["sub/b.bin"])
        self.assertEqual((listed["kind"], listed["state"], listed["bytes_done"], listed["bytes_total"],
                          listed["segments_done"], listed["segments_total"], listed["progress"]),
                         ("download", "DOWNLOADING", segment, size, 1, 3, round(segment / size, 4)))
        self.assertIsNotNone(listed["speed"])
        self.assertIsNotNone(listed["eta"])
        own = self.alice.service_driver.get("service_backups")
        self.assertEqual(set(listed), set(own.transfers.recent()[0]))  # the same figures as my own transfers
        held.release()
        view = self.bob.service_driver.get("service_shares").views[key_id]
        yield until(lambda: not view.transfers.jobs(), "the download to finish")
        self.assertEqual(view.transfers.recent()[0]["state"], "DONE")
        self.assertEqual(read(os.path.join(target, "b.bin")), FILES["sub/b.bin"])
        self.assertEqual((yield ok(self, self.bob, "files_downloads")), [])

    @inlineCallbacks
    def test_the_owner_recovered_on_a_new_machine_gets_its_share_back_and_goes_on_publishing_it(self):
        key_id = yield self.shared_folder()
        yield self.alice.service_driver.get("service_backups").backup_catalog()
        key_file = os.path.abspath(self.mktemp())
        yield ok(self, self.alice, "identity_backup", destination_filepath=key_file)
        yield self.alice.stopService()

        # a new machine: nothing but the file with the master key
        alice = yield start_node(self, service_classes=OWNER,
                                 overrides=dict(self.net.base, **FAST_MARKET, **USER_SETTINGS))
        yield ok(self, alice, "identity_recover", private_key_source=key_file)
        storage = alice.service_driver.get("service_backups")
        yield until(lambda: storage.last_restore.get("serial"), "the catalog to be restored", seconds=90)

        def records_back():
            shares = alice.service_driver.get("service_shares")
            return alice.service_driver.is_on("service_shares") and shares.registry.get(key_id) is not None

        yield until(records_back, "the share records to come back with the catalog backup", seconds=90)
        (share,) = yield ok(self, alice, "shares_list")
        self.assertEqual((share["key_id"], share["mine"], share["label"], share["grantees"]),
                         (key_id, True, "holidays", [gid(self.bob)]))
        self.assert_same_folder((yield self.download(alice, f"{key_id}:photos")))

        # a new file in the share still reaches Bob: the recovered owner publishes the index again
        extra = os.path.abspath(self.mktemp())
        with open(extra, "wb") as handle:
            handle.write(b"after the recovery")
        yield until(lambda: alice.service_driver.is_on("service_shares"), "service_shares on the new machine")
        yield ok(self, alice, "file_upload_start", local_path=extra, remote_path=f"{key_id}:photos/late.txt",
                 wait_result=True)
        shares = alice.service_driver.get("service_shares")
        yield until(lambda: shares.registry.get(key_id)["index_serial"] > share["index_serial"],
                    "the index with the new file to be published")
        opened = yield ok(self, self.bob, "share_open", key_id=key_id)
        self.assertEqual(opened["files"], 4)
        target = yield self.download(self.bob, f"{key_id}:photos/late.txt")
        self.assertEqual(read(os.path.join(target, "late.txt")), b"after the recovery")

class HoldLaterSegments:
    """Wraps a ShareReader's servers: blocks of segment 1 and later wait until :meth:`release`."""

    def __init__(self, reader):
        self.reader = reader
        self.waiting: list = []
        self.holding = True
        real_server = reader.server

        def server(supplier_id):
            return _HeldServer(self, real_server(supplier_id))

        reader.server = server

    def release(self):
        self.holding = False
        waiting, self.waiting = self.waiting, []
        for d, server, customer_id, path, expected_sha256 in waiting:
            server.fetch_block(customer_id, path, expected_sha256).chainDeferred(d)


class _HeldServer:
    def __init__(self, hold, server):
        self.hold, self.server = hold, server

    def fetch_block(self, customer_id, path, expected_sha256=None):
        if self.hold.holding and int(path.split("/")[-2]) >= 1:
            d = Deferred()
            self.hold.waiting.append((d, self.server, customer_id, path, expected_sha256))
            return d
        return self.server.fetch_block(customer_id, path, expected_sha256)

    def __getattr__(self, name):
        return getattr(self.server, name)


class WritableShareTests(ShareNetworkCase):
    """Bob (read-write) uploads into Alice's share with her suppliers; Carol (read-only) reads it, Alice takes it in."""

    @inlineCallbacks
    def test_a_writer_uploads_readers_and_the_owner_get_it_and_concurrent_edits_are_kept(self):
        key_id = yield self.shared_folder(mode="rw")
        yield ok(self, self.alice, "share_grant", key_id=key_id, trusted_user_id=gid(self.carol), mode="ro")
        storage = self.alice.service_driver.get("service_backups")
        opened = yield ok(self, self.bob, "share_open", key_id=key_id)
        self.assertEqual((opened["mode"], opened["writers"]), ("rw", [gid(self.bob)]))
        # the owner's rule (the default: writers) lets Bob pass the share's key on; it gives a key, not access
        passed = yield ok(self, self.bob, "key_share", key_id=key_id, trusted_user_id=gid(self.carol),
                          include_private=True)
        self.assertEqual(passed["fingerprint"], self.alice.service_driver.get("service_identity").keystore.get(
            key_id).fingerprint)

        # Bob uploads with Alice's suppliers; his upload answers once his entries are published
        data = os.urandom(150_000)
        done = yield ok(self, self.bob, "file_upload_start", local_path=self.local_file(data),
                        remote_path=f"{key_id}:from-bob/x.bin", wait_result=True, open_share=True)
        self.assertEqual(done["state"], "DONE")
        version_id = done["version_id"]
        self.assertTrue(version_id.startswith(share_scope.writer_prefix(share_scope.share_alias(key_id), gid(self.bob))))
        held = 0
        for supplier in self.suppliers:
            held += len((yield supplier.service_driver.get("service_supplier").desk.store.list_blocks(
                gid(self.alice), version_id + "/")))
        self.assertEqual(held, 3 * 2)  # three segments, a block on each of Alice's two suppliers, in her space
        self.assertIn("from-bob/x.bin", [i["path"] for i in (yield ok(self, self.bob, "files_list", key_id=key_id))])
        self.assertFalse((yield self.alice.run_in_thread(storage.catalog.exists, key_id, "from-bob/x.bin")))

        # Carol, read-only, sees it before Alice took it in (Alice may be away) and downloads it whole
        opened = yield ok(self, self.carol, "share_open", key_id=key_id)
        self.assertEqual((opened["mode"], opened["files"]), ("ro", 4))
        target = yield self.download(self.carol, f"{key_id}:from-bob/x.bin")
        self.assertEqual(read(os.path.join(target, "x.bin")), data)
        text = yield self.error(self.carol, 403, "file_upload_start", local_path=self.local_file(b"no"),
                                remote_path=f"{key_id}:from-carol.txt")
        self.assertIn("read-only", text)

        # Alice opens her share: Bob's file is taken into her catalog and comes down byte for byte
        mine = yield ok(self, self.alice, "share_open", key_id=key_id)
        self.assertEqual(mine["absorbed"]["taken"], {gid(self.bob): 1})
        target = yield self.download(self.alice, f"{key_id}:from-bob/x.bin")
        self.assertEqual(read(os.path.join(target, "x.bin")), data)

        # concurrent edits of one path: both versions are kept, the newest is listed
        yield ok(self, self.alice, "file_upload_start", local_path=self.local_file(b"alice's plan"),
                 remote_path=f"{key_id}:plan.txt", wait_result=True)
        later = yield ok(self, self.bob, "file_upload_start", local_path=self.local_file(b"bob's plan"),
                         remote_path=f"{key_id}:plan.txt", wait_result=True)
        shares = self.alice.service_driver.get("service_shares")
        yield until(lambda: shares.registry.get(key_id)["index_sha256"] == _published_digest(storage, shares, key_id),
                    "alice's index with her plan to be published")
        yield ok(self, self.carol, "share_open", key_id=key_id)
        info = yield ok(self, self.carol, "file_info", remote_path=f"{key_id}:plan.txt")
        self.assertEqual(len(info["versions"]), 2)
        self.assertEqual(info["versions"][0]["version_id"], later["version_id"])  # newest first: what is listed
        target = yield self.download(self.carol, f"{key_id}:plan.txt")
        self.assertEqual(read(os.path.join(target, "plan.txt")), b"bob's plan")

        # Bob deletes what he wrote: gone from the readers' view, and Alice forgets it at her next look
        yield ok(self, self.bob, "file_delete", remote_path=f"{key_id}:from-bob")
        reopened = yield ok(self, self.carol, "share_open", key_id=key_id)
        self.assertNotIn("from-bob/x.bin", [i["path"] for i in (yield ok(self, self.carol, "files_list", key_id=key_id))])
        self.assertEqual(reopened["files"], 4)  # the three photos and plan.txt
        mine = yield ok(self, self.alice, "share_open", key_id=key_id)
        self.assertEqual(mine["absorbed"]["forgotten"], {gid(self.bob): 1})
        self.assertFalse((yield self.alice.run_in_thread(storage.catalog.exists, key_id, "from-bob/x.bin")))
        status = self.alice.service_driver.info("service_shares")["status"]
        self.assertEqual((status["absorbed_versions"], status["forgotten_versions"]), (2, 1))

    @inlineCallbacks
    def test_a_read_only_member_cannot_write_nor_forge_a_writers_entries(self):
        key_id = yield self.shared_folder(mode="ro")
        yield ok(self, self.bob, "share_open", key_id=key_id)
        alias, alice_id = share_scope.share_alias(key_id), gid(self.alice)
        reader = self.reader(self.bob, key_id)
        positions = yield reader.find_suppliers()
        yield reader.connect(positions)
        # Bob (read-only) stores blocks or entries in Alice's space directly: the suppliers refuse
        forged = f"{share_scope.writer_prefix(alias, gid(self.bob))}F1-aa/0/0"
        for path in (forged, share_scope.entries_path(alias, gid(self.bob)), share_scope.index_path(alias)):
            failure = yield self.assertFailure(reader.server(positions[0]).store_block(alice_id, path, b"x"), Forbidden)
            self.assertIn("not writable by you", str(failure))
        denied = sum(s.service_driver.get("service_supplier").refused["share_write_denied"] for s in self.suppliers)
        self.assertEqual(denied, 3)
        # a passing of the key on is refused too: the owner's rule lets only writers do it
        text = yield self.error(self.bob, 403, "key_share", key_id=key_id, trusted_user_id=gid(self.carol),
                                include_private=True)
        self.assertIn("only its read-write members", text)
        yield ok(self, self.bob, "key_share", key_id=key_id, trusted_user_id=gid(self.carol))  # the public half


def _published_digest(storage, shares, key_id):
    """The digest the owner's next index would carry (unchanged: it is published)."""
    subset = share_index.share_subset(storage.catalog.export(), key_id)
    record = shares.registry.get(key_id)
    members = {g: "rw" if g in record["writers"] else "ro" for g in record["grantees"]}
    removed = share_absorb.removed_versions(storage.catalog, key_id, record["absorbed"])
    return share_index.subset_digest({"catalog": subset, "members": members, "reshare": "writers",
                                      "removed": removed,
                                      "key": shares._keystore().public_key(key_id).fingerprint()})
