"""Tests for bitnode.storage.backups_service: service_backups in real Nodes over an in-memory grid.

Nodes are real (reactor, thread pool, API listeners on port 0); identities use
the fake identity servers of tests/userid/fakes.py with 2048-bit keys; the
suppliers are MemoryStorageServers behind a fake supplier provider (the
customer service that will provide real ones is not part of this test).
"""

from __future__ import annotations

import os
import random
import sqlite3

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from bitnode.app import api_server
from bitnode.errors import Conflict, Forbidden, Unavailable
from bitnode.storage.backups_service import NO_SUPPLIERS, BackupsService
from bitnode.storage.catalog import COMPLETE
from bitnode.storage.memory_grid import MemoryStorageServer
from bitnode.storage.ports import IStorageServer
from bitnode.userid.id_service import IdentityService
from tests.interface.support import start_node, wait_until
from tests.storage.test_jobs import read, write
from tests.storage.test_local_files import parts_beside
from tests.userid.fakes import SERVER, FakeClient, FakeServers

ME = "alice@id.example.net_8084"
MASTER = "master$" + ME
SEG = 64 * 1024
SETTINGS = {"personal/private-key-size": 2048, "personal/identity-servers": [SERVER],
            "services/backups/segment-size": SEG, "services/backups/segments-in-flight": 1,
            "services/backups/catalog-backup-delay": 3600.0}


@implementer(IStorageServer)
class Gate:
    """A supplier that can stop answering stores after ``budget`` of them, or go offline; counts stores."""

    def __init__(self, store: MemoryStorageServer):
        self.store = store
        self.budget: int | None = None
        self.fetch_budget: int | None = None  # fetches answered before the next ones hang
        self.offline = False
        self.stores = 0
        #: paths starting with this are refused (a supplier that takes no catalog backup)
        self.refuse_prefix: str | None = None
        self.paths: list[str] = []
        self.held: list[defer.Deferred] = []

    def _check(self):
        if self.offline:
            raise Unavailable("supplier offline")

    def _spend(self, budget: str) -> defer.Deferred | None:
        """None while the budget named lasts (or there is none); else a call that never answers."""
        left = getattr(self, budget)
        if left is None:
            return None
        if left <= 0:
            held = defer.Deferred()
            self.held.append(held)
            return held
        setattr(self, budget, left - 1)
        return None

    def store_block(self, customer_id, path, data, data_payload=None):
        self.stores += 1
        self.paths.append(path)
        if self.offline or (self.refuse_prefix is not None and path.startswith(self.refuse_prefix)):
            return defer.fail(Unavailable("supplier offline"))
        return self._spend("budget") or self.store.store_block(customer_id, path, data)

    def fetch_block(self, customer_id, path, expected_sha256=None):
        return self._spend("fetch_budget") or defer.maybeDeferred(self._check).addCallback(
            lambda _: self.store.fetch_block(customer_id, path))

    def list_blocks(self, customer_id, prefix):
        return defer.maybeDeferred(self._check).addCallback(lambda _: self.store.list_blocks(customer_id, prefix))

    def delete(self, customer_id, path):
        return defer.maybeDeferred(self._check).addCallback(lambda _: self.store.delete(customer_id, path))


class GridProvider:
    """A supplier provider over in-memory suppliers; ``replace`` hires a new one at a position."""

    def __init__(self, stores: list[MemoryStorageServer] | None = None):
        self.stores = stores if stores is not None else [MemoryStorageServer() for _ in range(5)]
        self.ids = [f"s{i}@id.example.net_8084" for i in range(len(self.stores))]
        self.gates = {sid: Gate(store) for sid, store in zip(self.ids, self.stores, strict=True)}
        self.listeners: list = []

    def positions(self):
        return list(self.ids)

    def server(self, supplier_id):
        if supplier_id not in self.gates:
            raise Unavailable(f"{supplier_id} is not connected")
        return self.gates[supplier_id]

    def subscribe(self, callback):
        self.listeners.append(callback)
        return lambda: self.listeners.remove(callback)

    def replace(self, position: int, supplier_id: str) -> MemoryStorageServer:
        store = MemoryStorageServer()
        self.stores[position] = store
        self.ids[position] = supplier_id
        self.gates[supplier_id] = Gate(store)
        for callback in list(self.listeners):
            callback()
        return store

    def stores_sent(self, prefix: str = "") -> int:
        return sum(1 for gate in self.gates.values() for path in gate.paths if path.startswith(prefix))


def files_held(store) -> dict:
    """The blocks of my files a memory store holds (the catalog backups aside)."""
    return {path: block for path, block in store._spaces[ME].items() if not path.startswith("catalog-")}


def identity_service(servers: FakeServers):
    class FakeNetworkIdentityService(IdentityService):
        def make_client(self):
            return FakeClient(servers)

    return FakeNetworkIdentityService


def storage_service(provider):
    class GridStorageService(BackupsService):
        def make_provider(self):
            return provider

    return GridStorageService


class StorageNodeTestCase(unittest.TestCase):
    """Helpers to run nodes with service_identity (fake identity servers) and service_backups."""

    def setUp(self):
        self.servers = FakeServers()
        self.provider = GridProvider()

    @defer.inlineCallbacks
    def start(self, basedir=None, provider="default", storage=None, overrides=None, identity=True):
        provider = self.provider if provider == "default" else provider
        settings = dict(SETTINGS)
        settings.update(overrides or {})
        classes = [identity_service(self.servers), storage or storage_service(provider)]
        node = yield start_node(self, service_classes=classes, overrides=settings, basedir=basedir or self.mktemp())
        service = node.service_driver.get("service_backups")
        if identity and node.service_driver.get("service_identity").my_identity() is None:
            yield node.service_driver.get("service_identity").create_identity("alice")
        if identity:
            yield wait_until(lambda: service.transfers is not None)
        return node, service

    @defer.inlineCallbacks
    def upload(self, service, size: int = 3 * SEG, remote: str = MASTER + ":docs/a.bin", seed: int = 1):
        source, data = write(self, size, seed)
        job = service.transfers.start_upload(source, remote)
        yield job.wait()
        return job, source, data

    @defer.inlineCallbacks
    def download(self, service, remote: str = MASTER + ":docs/a.bin"):
        target = os.path.join(self.mktemp(), "out.bin")
        job = service.transfers.start_download(remote, target)
        yield job.wait()
        return read(target)


class OtherCatalogsTests(StorageNodeTestCase):
    """A remote path under another user's key is opened through the source that serves such catalogs (the
    shares service registers itself), so the API never reaches for the sharing code."""

    @defer.inlineCallbacks
    def test_a_granted_catalog_not_open_yet_is_opened_through_its_source(self):
        _, service = yield self.start()
        granted = "share_0123456789abcdef0123456789abcdef$bob@id.example.net_8084"
        self.assertFalse(service.other_catalog_to_open(granted + ":docs/a.bin"))  # no source: nothing to open
        self.failureResultOf(service.open_other_catalog(granted), Unavailable)
        opened = []

        class Source:
            def view_for(self, where):
                if where.startswith(granted):
                    raise Conflict("not open: call share_open first")
                if where.startswith("share_"):
                    raise Forbidden("not granted to this node")
                return None

            def open(self, key_id):
                opened.append(key_id)
                return {"key_id": key_id}

        unregister = service.add_other_catalogs(Source())
        self.assertTrue(service.other_catalog_to_open(granted + ":docs/a.bin"))
        self.assertFalse(service.other_catalog_to_open("share_ffff$carol@id.example.net_8084:x"))  # 403 later
        self.assertFalse(service.other_catalog_to_open(MASTER + ":docs/a.bin"))  # mine
        self.assertEqual(self.successResultOf(service.open_other_catalog(granted + ":docs/a.bin")),
                         {"key_id": granted})
        self.assertEqual(opened, [granted])
        unregister()
        self.assertFalse(service.other_catalog_to_open(granted))


class ServiceTests(StorageNodeTestCase):
    @defer.inlineCallbacks
    def test_upload_and_download_through_the_service(self):
        node, service = yield self.start()
        _, _, data = yield self.upload(service)
        self.assertEqual((yield self.download(service)), data)
        self.assertTrue(os.path.exists(os.path.join(node.basedir.metadata, "catalog.sqlite")))
        names = [m["name"] for m in node.automats.list()]
        self.assertIn("backup_monitor", names)
        info = node.service_driver.info("service_backups")
        self.assertEqual(info["state"], "ON")
        self.assertTrue(info["status"]["ready"])
        self.assertEqual(node.settings.get("services/backups/data-blocks"), 0)

    @defer.inlineCallbacks
    def test_a_paused_upload_goes_on_as_soon_as_the_node_is_connected_again(self):
        # e.g. a node behind NAT whose router died: its packets failed, then a new router carries them
        node, service = yield self.start()
        for gate in list(self.provider.gates.values())[:3]:
            gate.offline = True
        source, data = write(self, 2 * SEG)
        job = service.transfers.start_upload(source, MASTER + ":docs/b.bin")
        yield wait_until(lambda: job.state == "PAUSED")
        for gate in self.provider.gates.values():
            gate.offline = False
        node.events.publish("network-connected", {"reason": "routed through router-2"})
        yield wait_until(lambda: job.state == "DONE")  # not after its one-minute timer
        self.assertEqual((yield self.download(service, MASTER + ":docs/b.bin")), data)

    @defer.inlineCallbacks
    def test_without_a_supplier_provider_nothing_pretends_to_work(self):
        node, service = yield self.start(storage=BackupsService)
        source, _ = write(self, 10)
        error = self.assertRaises(Unavailable, service.transfers.start_upload, source, MASTER + ":a")
        self.assertEqual(str(error), NO_SUPPLIERS)
        self.assertRaises(Unavailable, service.placement)
        yield wait_until(lambda: "error" in service.last_restore)
        self.assertIn("service_customer is off", service.last_restore["error"])
        service.sync()
        yield wait_until(lambda: service.monitor.last_error != "")
        self.assertIn("service_customer is off", service.monitor.last_error)

    @defer.inlineCallbacks
    def test_parts_wait_for_an_identity(self):
        node, service = yield self.start(identity=False)
        self.assertIsNone(service.transfers)
        yield node.service_driver.get("service_identity").create_identity("alice")
        yield wait_until(lambda: service.transfers is not None)
        self.assertEqual(service.master_key_id(), MASTER)

    @defer.inlineCallbacks
    def test_k_setting_is_used(self):
        node, service = yield self.start(overrides={"services/backups/data-blocks": 2})
        job, _, _ = yield self.upload(service, size=10)
        version = service.catalog.version(job.version_id)
        self.assertEqual((version["k"], version["n"]), (2, 5))

    @defer.inlineCallbacks
    def test_new_supplier_gets_its_blocks_rebuilt(self):
        node, service = yield self.start()
        job, _, data = yield self.upload(service)
        yield wait_until(lambda: service.monitor.state == "READY")
        runs = service.monitor.runs
        new_store = self.provider.replace(2, "s9@id.example.net_8084")
        yield wait_until(lambda: service.monitor.runs > runs and service.monitor.state == "READY")
        self.assertEqual(service.monitor.status()["blocks_rebuilt"], 3)
        self.assertEqual(len(new_store._spaces[ME]), 3)
        self.assertEqual(service.catalog.missing_blocks(), [])
        self.provider.gates[self.provider.ids[0]].offline = True
        self.provider.gates[self.provider.ids[1]].offline = True
        self.assertEqual((yield self.download(service)), data)

    @defer.inlineCallbacks
    def test_delete_removes_blocks_first_and_reports_what_failed(self):
        node, service = yield self.start()
        job, _, _ = yield self.upload(service)
        self.provider.gates[self.provider.ids[4]].offline = True
        outcome = yield service.delete(MASTER + ":docs")
        self.assertEqual((outcome["versions"], outcome["blocks_deleted"]), (1, 12))
        self.assertEqual([f["supplier"] for f in outcome["failed"]], [self.provider.ids[4]])
        self.assertFalse(service.catalog.exists(MASTER, "docs"))
        self.assertEqual(files_held(self.provider.stores[0]), {})
        self.assertTrue(files_held(self.provider.stores[4]))
        self.provider.gates[self.provider.ids[4]].offline = False
        self.provider.replace(3, "s8@id.example.net_8084")  # any change of suppliers retries the delete
        yield wait_until(lambda: files_held(self.provider.stores[4]) == {})

    @defer.inlineCallbacks
    def test_catalog_is_backed_up_after_a_change(self):
        node, service = yield self.start(overrides={"services/backups/catalog-backup-delay": 0.0})
        self.assertFalse(service.status()["catalog_backup_pending"])
        yield self.upload(service)
        # done means the catalog naming the file is on the suppliers: no waiting after the upload
        serial = service.last_backup["serial"]
        self.assertIn(f"catalog-{serial}/manifest", self.provider.stores[0]._spaces[ME])
        self.assertTrue(service.catalog_backup_current())
        service.catalog_changed()
        self.assertTrue(service.status()["catalog_backup_pending"])  # until the next backup is stored
        yield wait_until(lambda: not service.status()["catalog_backup_pending"])


    @defer.inlineCallbacks
    def test_the_last_upload_ending_backs_the_catalog_up_without_the_delay(self):
        # The hour-long delay gathers changes while uploads run; once none is left the catalog
        # goes to the suppliers at once, so a new machine finds what was just uploaded.
        node, service = yield self.start()
        yield self.upload(service)
        yield wait_until(lambda: service.last_backup.get("serial") == 1)
        self.assertIn("catalog-1/manifest", self.provider.stores[0]._spaces[ME])

    @defer.inlineCallbacks
    def test_changes_a_stopped_node_did_not_back_up_are_backed_up_at_its_next_start(self):
        basedir = self.mktemp()
        node, service = yield self.start(basedir, overrides={"services/backups/catalog-backup-delay": 3600.0})
        yield wait_until(lambda: not service.status()["catalog_backup_state"]["restore_pending"])
        # A change the node did not back up before it stopped (as if it crashed right after it).
        yield node.run_in_thread(service.catalog.create, MASTER, "docs", True, False, 0.0)
        self.assertEqual(service.last_backup, {})
        yield node.stopService()
        node, service = yield self.start(basedir)
        yield wait_until(lambda: service.last_backup.get("serial") == 1)


class AcknowledgedMeansSafeTests(StorageNodeTestCase):
    """Done means a new machine finds the file: the catalog backup naming it is on k suppliers."""

    @defer.inlineCallbacks
    def test_an_upload_is_done_only_once_its_catalog_backup_is_on_k_suppliers(self):
        node, service = yield self.start(overrides={"services/backups/catalog-retry": 0.2})
        for supplier_id in self.provider.ids[:3]:  # k=3 of n=5: two acks are not enough
            self.provider.gates[supplier_id].refuse_prefix = "catalog-"
        source, data = write(self, 2 * SEG)
        job = service.transfers.start_upload(source, MASTER + ":docs/a.bin")
        failed = yield self.assertFailure(job.wait(), Unavailable)
        self.assertIn("catalog backup that lists it is not on enough", str(failed))
        self.assertEqual(job.state, "SECURING")
        self.assertEqual(service.catalog.version(job.version_id)["state"], COMPLETE)
        self.assertFalse(service.catalog_backup_current())
        state = service.catalog_backup_state()
        self.assertEqual((state["waiting_uploads"], state["current"]), (1, False))
        self.assertIn("only 2 of the required 3 blocks stored", state["error"])
        # the suppliers take backups again: the next attempt (a retry, no event needed) makes the upload done
        for gate in self.provider.gates.values():
            gate.refuse_prefix = None
        waited = job.wait()
        yield waited
        self.assertEqual(job.state, "DONE")
        self.assertTrue(service.catalog_backup_current())
        serial = service.last_backup["serial"]
        self.assertGreaterEqual(sum(1 for store in self.provider.stores
                                    if f"catalog-{serial}/manifest" in store._spaces[ME]), 3)

    @defer.inlineCallbacks
    def test_many_small_uploads_finishing_together_share_few_backups(self):
        node, service = yield self.start(overrides={"services/backups/max-uploads": 4})
        jobs = []
        for i in range(20):
            source, _ = write(self, 1000 + i, seed=i)
            jobs.append(service.transfers.start_upload(source, f"{MASTER}:many/{i}.bin"))
        yield defer.gatherResults([job.wait() for job in jobs])
        self.assertEqual({job.state for job in jobs}, {"DONE"})
        self.assertLessEqual(service.last_backup["serial"], 5)  # one backup per batch, not one per file


class PendingRestoreTests(StorageNodeTestCase):
    """A new machine's empty catalog is restored once enough suppliers answer; meanwhile nothing is added."""

    @defer.inlineCallbacks
    def test_the_restore_waits_for_enough_suppliers_retries_and_files_sync_runs_it_at_once(self):
        node, service = yield self.start()
        yield self.upload(service)
        key_file = os.path.abspath(self.mktemp())
        yield node.service_driver.get("service_identity").backup_identity(key_file)
        yield node.stopService()
        # three of five suppliers do not answer: two listings cannot show that no backup exists
        for supplier_id in self.provider.ids[:3]:
            self.provider.gates[supplier_id].offline = True
        other, restored = yield self.start(identity=False, overrides={"services/backups/catalog-retry": 0.2})
        yield other.service_driver.get("service_identity").recover_identity(key_file)
        state = restored.catalog_backup_state
        yield wait_until(lambda: state().get("restore_attempts", 0) >= 3 and not state()["restoring"])
        self.assertTrue(restored.catalog_backup_state()["restore_pending"])
        self.assertIn("only 2 of 3 needed blocks available", restored.last_restore["error"])
        self.assertTrue(restored.last_restore["retry"])
        self.assertEqual(restored.catalog.list(), [])
        self.assertRaises(Unavailable, restored.check_catalog_writable)
        self.assertEqual(restored.last_backup, {})  # nothing backed up over what the suppliers hold
        # files_sync asks again at once (no need to wait for the retry)
        self.provider.gates[self.provider.ids[0]].offline = False
        attempts = restored.catalog_backup_state()["restore_attempts"]
        restored.sync()
        self.assertEqual(restored.catalog_backup_state()["restore_attempts"], attempts + 1)
        yield wait_until(lambda: restored.last_restore.get("serial"))
        self.assertTrue(restored.catalog.exists(MASTER, "docs/a.bin"))
        restored.check_catalog_writable()

    @defer.inlineCallbacks
    def test_enough_suppliers_without_a_backup_end_the_restore_at_once(self):
        node, service = yield self.start()
        yield wait_until(lambda: not service.catalog_backup_state()["restore_pending"])
        self.assertIn("no catalog backup", service.last_restore["error"])
        service.check_catalog_writable()

    @defer.inlineCallbacks
    def test_too_few_listings_never_conclude_that_there_is_no_backup(self):
        for supplier_id in self.provider.ids[:3]:
            self.provider.gates[supplier_id].offline = True
        node, service = yield self.start(overrides={"services/backups/catalog-retry": 0.2})
        yield wait_until(lambda: service.catalog_backup_state().get("restore_attempts", 0) >= 2)
        self.assertIn("only 2 of my 5 suppliers listed my files", service.last_restore["error"])
        self.assertTrue(service.catalog_backup_state()["restore_pending"])
        self.provider.gates[self.provider.ids[0]].offline = False
        yield wait_until(lambda: not service.catalog_backup_state()["restore_pending"])
        self.assertIn("no catalog backup", service.last_restore["error"])


class RestartTests(StorageNodeTestCase):
    @defer.inlineCallbacks
    def test_interrupted_upload_resumes_after_restart_without_resending(self):
        basedir = self.mktemp()
        node, service = yield self.start(basedir)
        for gate in self.provider.gates.values():
            gate.budget = 2  # two segments get through, the third is never answered
        source, data = write(self, 5 * SEG)
        job = service.transfers.start_upload(source, MASTER + ":big.bin")
        yield wait_until(lambda: sum(len(g.held) for g in self.provider.gates.values()) == 5)
        version_id = job.version_id
        self.assertEqual(service.catalog.resume_point(version_id), 2)
        yield node.stopService()
        self.assertEqual(job.state, "PAUSED")

        fresh = GridProvider(self.provider.stores)
        node, service = yield self.start(basedir, provider=fresh)
        yield wait_until(lambda: service.catalog.version(version_id)["state"] == COMPLETE)
        self.assertEqual(fresh.stores_sent(version_id), 3 * 5)  # the catalog backup's aside
        self.assertEqual((yield self.download(service, MASTER + ":big.bin")), data)

    @defer.inlineCallbacks
    def test_a_download_stopped_mid_way_goes_on_after_restart_and_service_info_says_so(self):
        basedir = self.mktemp()
        node, service = yield self.start(basedir, overrides={"services/backups/download-checkpoint": 1024 * 1024})
        _, _, data = yield self.upload(service, size=5 * SEG)
        for gate in self.provider.gates.values():
            gate.fetch_budget = 3  # three segments come back (k=3 data blocks each), then nothing
        target = os.path.join(os.path.abspath(self.mktemp()), "out.bin")
        job = service.transfers.start_download(MASTER + ":docs/a.bin", target)
        yield wait_until(lambda: sum(len(g.held) for g in self.provider.gates.values()) == 3)
        yield node.stopService()
        self.assertEqual(job.state, "PAUSED")
        self.assertEqual(len(parts_beside(target)), 1)

        fresh = GridProvider(self.provider.stores)
        node, service = yield self.start(basedir, provider=fresh)
        yield wait_until(lambda: service.transfers.recent("download"))
        self.assertEqual(read(target), data)
        self.assertEqual(parts_beside(target), [])
        self.assertEqual(service.status()["transfers_resumed"], {"downloads_resumed": 1})
        events, _ = node.events.since(0)
        resumed = [e.data for e in events if e.event_id == "transfers-resumed"]
        self.assertEqual(resumed[0]["downloads"][0]["from_bytes"], 3 * SEG)
        finished = service.transfers.recent("download")[0]
        self.assertEqual((finished["state"], finished["after_restart"]), ("DONE", True))
        self.assertEqual(finished["result"]["resumed_from_segment"], 3)

    @defer.inlineCallbacks
    def test_new_machine_with_only_the_private_key_gets_the_catalog_and_the_file(self):
        node, service = yield self.start()
        yield self.upload(service)
        outcome = yield service.backup_catalog()
        self.assertEqual(outcome["serial"], 1)
        key_file = os.path.join(self.mktemp())
        yield node.service_driver.get("service_identity").backup_identity(os.path.abspath(key_file))
        yield node.stopService()

        other, restored = yield self.start(identity=False)
        yield other.service_driver.get("service_identity").recover_identity(os.path.abspath(key_file))
        yield wait_until(lambda: restored.catalog is not None and restored.last_restore.get("serial") == 1)
        self.assertTrue(restored.catalog.exists(MASTER, "docs/a.bin"))
        self.assertEqual((yield self.download(restored)), random.Random(1).randbytes(3 * SEG))
        # Its next backup is newer than the one it restored.
        restored.catalog.create(MASTER, "new.txt")
        self.assertEqual((yield restored.backup_catalog())["serial"], 2)


class UnreadableCatalogTests(StorageNodeTestCase):
    """A catalog file sqlite cannot read (or that is no catalog) is set aside, reported and restored."""

    @defer.inlineCallbacks
    def run_with_broken_catalog(self, damage):
        basedir = self.mktemp()
        node, service = yield self.start(basedir)
        _, _, data = yield self.upload(service)
        yield service.backup_catalog()
        path = service.catalog_file
        yield node.stopService()
        damage(path)
        with open(path, "rb") as handle:
            broken = handle.read()

        node, service = yield self.start(basedir)
        problem = service.status()["catalog_unreadable"]
        self.assertIsNotNone(problem)
        self.assertTrue(problem["moved_to"].startswith(path + ".unreadable-"))
        with open(problem["moved_to"], "rb") as handle:
            self.assertEqual(handle.read(), broken)  # kept as it was, not deleted
        events, _ = node.events.since(0)
        self.assertIn("catalog-unreadable", [e.event_id for e in events])
        yield wait_until(lambda: service.last_restore.get("serial") == 1)
        self.assertEqual(service.status()["catalog_unreadable"]["restored"], 1)
        self.assertEqual((yield self.download(service)), data)
        return problem

    @defer.inlineCallbacks
    def test_a_file_sqlite_cannot_read_is_moved_aside_and_restored_from_the_suppliers(self):
        def garbage(path):
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
            with open(path, "wb") as handle:
                handle.write(b"this is not sqlite at all " * 200)

        problem = yield self.run_with_broken_catalog(garbage)
        self.assertIn("cannot", problem["error"])

    @defer.inlineCallbacks
    def test_an_sqlite_file_that_is_not_a_catalog_is_moved_aside_too(self):
        def other_database(path):
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
            db = sqlite3.connect(path)
            db.execute("CREATE TABLE photos (name TEXT)")
            db.commit()
            db.close()

        problem = yield self.run_with_broken_catalog(other_database)
        self.assertIn("not a catalog", problem["error"])

    @defer.inlineCallbacks
    def test_the_files_api_says_why_while_the_catalog_is_restored(self):
        basedir = self.mktemp()
        node, service = yield self.start(basedir)
        yield node.stopService()
        with open(service.catalog_file, "wb") as handle:
            handle.write(b"\x00" * 4096)
        for gate in self.provider.gates.values():
            gate.offline = True  # no backup can be read yet
        node, service = yield self.start(basedir)
        error = self.assertRaises(Unavailable, service.require_ready)
        self.assertIn("being restored from the suppliers' backup", str(error))
        answer = yield api_server(node).dispatcher.execute_by_name("files_list", {})
        self.assertEqual(answer.code, 503)
        self.assertIn("moved to", " ".join(answer.envelope["errors"]))
