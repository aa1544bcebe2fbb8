"""Tests for bitnode.storage.catalog_backup: backup to the grid, restore from the key alone, forgeries."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.errors import BadRequest, Conflict, NotFound, Unavailable
from bitnode.main.sqlitedb import StoreClosed
from bitnode.storage import catalog_format, key_backup
from bitnode.storage.catalog import Catalog
from bitnode.storage.catalog_backup import (
    CatalogBackup,
    export_digest,
    sign_manifest,
    write_compressed_export,
)
from tests.storage.test_jobs import CUSTOMER, KEY_ID, REMOTE, SEG, Grid, Harness, read, write
from tests.userid.fakes import rsa_key


def run(coroutine) -> defer.Deferred:
    return defer.Deferred.fromCoroutine(coroutine)


class CatalogBackupTests(unittest.TestCase):
    def setUp(self):
        self.grid = Grid()
        self.h = Harness(self, self.grid)
        self.source, self.data = write(self, 2 * SEG + 9)
        self.h.manager.start_upload(self.source, REMOTE)
        self.backup = self.make(self.h)

    def make(self, h: Harness, key_index: int = 0) -> CatalogBackup:
        temp = self.mktemp()
        os.makedirs(temp)
        return CatalogBackup(h.clock, h.ctx.run_in_thread, h.catalog, CUSTOMER, h.ctx.placement,
                             lambda n: (n + 1) // 2, lambda: rsa_key(key_index), temp, segment_size=lambda: 4096)

    def fresh_node(self) -> Harness:
        """A new machine: empty catalog, same grid, same key."""
        return Harness(self, self.grid)

    def test_new_machine_restores_the_catalog_and_downloads_the_file(self):
        outcome = self.successResultOf(run(self.backup.backup()))
        self.assertEqual((outcome["serial"], outcome["suppliers"], outcome["skipped"]), (1, 5, False))
        self.assertIn("catalog-1/manifest", self.grid.blocks(0))
        other = self.fresh_node()
        restored = self.successResultOf(run(self.make(other).restore()))
        self.assertEqual((restored["serial"], restored["items"]), (1, 2))
        self.assertEqual(other.catalog.export(), self.h.catalog.export())
        target = self.mktemp()
        other.manager.start_download(REMOTE, target)
        self.assertEqual(read(target), self.data)

    def test_restore_survives_n_minus_k_suppliers_down(self):
        self.successResultOf(run(self.backup.backup()))
        other = self.fresh_node()
        other.servers[0].go_offline()
        other.servers[3].go_offline()
        self.successResultOf(run(self.make(other).restore()))
        self.assertTrue(other.catalog.exists(KEY_ID, "docs/a.bin"))

    def test_a_silent_supplier_delays_a_restore_by_seconds_not_by_timeouts(self):
        self.successResultOf(run(self.backup.backup()))
        other = self.fresh_node()
        other.servers[2].hang()  # a data position: the catalog's blocks are fetched around it too
        d = run(self.make(other).restore())
        other.clock.advance(4.9)
        self.assertNoResult(d)  # four listings are in: the silent one gets a grace
        other.clock.advance(0.1)
        other.clock.advance(2.0)  # then its block gets a spare beside it
        restored = self.successResultOf(d)
        self.assertEqual((restored["serial"], restored["items"]), (1, 2))
        self.assertEqual(other.servers[2].hung_calls, 0)
        self.assertEqual(other.clock.getDelayedCalls(), [])

    def test_a_silent_supplier_delays_a_backup_by_seconds_not_by_timeouts(self):
        self.h.servers[4].hang()
        d = run(self.backup.backup())
        self.h.clock.advance(10.0)  # the catalog's block for the silent supplier is given up
        self.assertNoResult(d)
        self.h.clock.advance(5.0)  # and so is its copy of the manifest
        outcome = self.successResultOf(d)
        self.assertEqual((outcome["serial"], outcome["suppliers"]), (1, 4))
        self.assertEqual(self.h.servers[4].hung_calls, 0)

    def test_unchanged_catalog_is_not_backed_up_again_and_two_backups_remain(self):
        self.successResultOf(run(self.backup.backup()))
        self.assertTrue(self.successResultOf(run(self.backup.backup()))["skipped"])
        for name in ("x", "y"):
            self.h.catalog.create(KEY_ID, name)
            self.successResultOf(run(self.backup.backup()))
        kept = sorted({path.split("/")[0] for path in self.grid.blocks(2) if path.startswith("catalog-")})
        self.assertEqual(kept, ["catalog-2", "catalog-3"])
        other = self.fresh_node()
        self.assertEqual(self.successResultOf(run(self.make(other).restore()))["serial"], 3)
        self.assertTrue(other.catalog.exists(KEY_ID, "y"))

    def test_next_backup_after_a_restore_is_newer(self):
        self.successResultOf(run(self.backup.backup()))
        other = self.fresh_node()
        restorer = self.make(other)
        self.successResultOf(run(restorer.restore()))
        other.catalog.create(KEY_ID, "new.txt")
        self.assertEqual(self.successResultOf(run(restorer.backup()))["serial"], 2)

    def test_manifest_signed_by_another_key_is_refused(self):
        self.successResultOf(run(self.backup.backup()))
        forged = sign_manifest(rsa_key(1), {"format": 1, "serial": 2, "owner": CUSTOMER})
        for store in self.grid.stores:
            store._spaces[CUSTOMER]["catalog-2/manifest"] = forged
        outcome = self.successResultOf(run(self.make(self.fresh_node()).restore()))
        self.assertEqual(outcome["serial"], 1)  # the forged newer one was skipped
        self.assertIn("not signed by my key", outcome["skipped"][0])

    def test_wrong_key_cannot_restore(self):
        self.successResultOf(run(self.backup.backup()))
        self.failureResultOf(run(self.make(self.fresh_node(), key_index=1).restore()), Unavailable)

    def test_nothing_to_restore_or_nobody_to_ask(self):
        self.failureResultOf(run(self.make(self.fresh_node()).restore()), NotFound)
        other = self.fresh_node()
        for server in other.servers:
            server.go_offline()
        self.failureResultOf(run(self.make(other).restore()), Unavailable)

    def test_a_catalog_with_files_is_not_replaced_unless_asked(self):
        self.successResultOf(run(self.backup.backup()))
        other = self.fresh_node()
        other.catalog.create(KEY_ID, "mine.txt")
        self.failureResultOf(run(self.make(other).restore()), Conflict)
        self.successResultOf(run(self.make(other).restore(replace=True)))
        self.assertFalse(other.catalog.exists(KEY_ID, "mine.txt"))

    def test_tampered_backup_blocks_are_detected(self):
        self.successResultOf(run(self.backup.backup()))
        manifest = json.loads(json.loads(self.grid.blocks(0)["catalog-1/manifest"])["manifest"])
        self.assertEqual(manifest["owner"], CUSTOMER)
        for store in self.grid.stores:
            for path, block in list(store._spaces[CUSTOMER].items()):
                if path.startswith("catalog-1/0/"):
                    store._spaces[CUSTOMER][path] = block[:-1] + bytes([block[-1] ^ 1])
        self.failureResultOf(run(self.make(self.fresh_node()).restore()), Unavailable)

    def test_garbage_manifest(self):
        from bitnode.storage.catalog_backup import open_manifest

        self.assertRaises(BadRequest, open_manifest, rsa_key(0), b"nope", 1, CUSTOMER)
        signed = sign_manifest(rsa_key(0), {"format": 1, "serial": 1, "owner": "bob@x.net"})
        self.assertRaises(BadRequest, open_manifest, rsa_key(0), signed, 1, CUSTOMER)


class SecretsInTheBackupTests(unittest.TestCase):
    """The manifest carries the sealed key backup (format 2); format 1 manifests stay readable."""

    def setUp(self):
        self.grid = Grid()
        self.h = Harness(self, self.grid)
        self.source, self.data = write(self, SEG + 5)
        self.h.manager.start_upload(self.source, REMOTE)
        self.secrets = {"format": 1, "owner": CUSTOMER, "keys": [], "parts": {"shares": ["one"]}}

    def make(self, h: Harness, got: list | None = None) -> CatalogBackup:
        temp = self.mktemp()
        os.makedirs(temp)

        def restore_secrets(document):
            # The keys come back before the catalog that needs them.
            got.append((document, h.catalog.is_empty()))
            return {"restored": True}

        return CatalogBackup(h.clock, h.ctx.run_in_thread, h.catalog, CUSTOMER, h.ctx.placement,
                             lambda n: (n + 1) // 2, lambda: rsa_key(0), temp, segment_size=lambda: 4096,
                             secrets=lambda: self.secrets, restore_secrets=restore_secrets if got is not None else None)

    def test_secrets_go_sealed_and_come_back_before_the_catalog(self):
        self.successResultOf(run(self.make(self.h).backup()))
        stored = self.grid.blocks(0)["catalog-1/manifest"]
        manifest = json.loads(json.loads(stored)["manifest"])
        self.assertEqual(manifest["format"], 2)
        self.assertNotIn(b"shares", stored)
        got = []
        outcome = self.successResultOf(run(self.make(Harness(self, self.grid), got).restore()))
        self.assertEqual(got, [(self.secrets, True)])
        self.assertEqual(outcome["secrets"], {"restored": True})

    def test_a_change_of_secrets_alone_makes_a_new_backup(self):
        backup = self.make(self.h)
        self.successResultOf(run(backup.backup()))
        self.assertTrue(self.successResultOf(run(backup.backup()))["skipped"])
        self.secrets = dict(self.secrets, parts={"shares": ["one", "two"]})
        self.assertEqual(self.successResultOf(run(backup.backup()))["serial"], 2)

    def test_a_format_1_manifest_without_secrets_is_still_restored(self):
        old = self.make(self.h)
        old.secrets = None
        self.successResultOf(run(old.backup()))
        for store in self.grid.stores:
            outer = json.loads(store._spaces[CUSTOMER]["catalog-1/manifest"])
            manifest = dict(json.loads(outer["manifest"]), format=1)
            store._spaces[CUSTOMER]["catalog-1/manifest"] = sign_manifest(rsa_key(0), manifest)
        got = []
        outcome = self.successResultOf(run(self.make(Harness(self, self.grid), got).restore()))
        self.assertEqual((outcome["serial"], outcome["secrets"], got), (1, None, []))

    def test_secrets_sealed_by_another_key_make_the_backup_unusable(self):
        self.successResultOf(run(self.make(self.h).backup()))
        for store in self.grid.stores:
            outer = json.loads(store._spaces[CUSTOMER]["catalog-1/manifest"])
            manifest = json.loads(outer["manifest"])
            manifest["secrets"] = base64.b64encode(key_backup.seal(rsa_key(1), self.secrets)).decode()
            store._spaces[CUSTOMER]["catalog-1/manifest"] = sign_manifest(rsa_key(0), manifest)
        failure = self.failureResultOf(run(self.make(Harness(self, self.grid), []).restore()), Unavailable)
        self.assertIn("not signed by my master key", failure.getErrorMessage())


class StreamedExportTests(unittest.TestCase):
    """The backup reads the catalog as a stream: its digest and its compressed file match the whole export."""

    def setUp(self) -> None:
        self.patch(catalog_format, "EXPORT_CHUNK_ROWS", 2)
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.catalog = Catalog(os.path.join(self.dir, "catalog.sqlite"))
        self.addCleanup(self.catalog.close)
        for i in range(7):
            self.catalog.create(KEY_ID, f"docs/f{i}")

    def test_digest_and_compressed_file_are_those_of_the_export(self) -> None:
        export = self.catalog.export()
        target = os.path.join(self.dir, "backup.upload")
        self.assertEqual(export_digest(self.catalog), hashlib.sha256(export).hexdigest())
        self.assertEqual(write_compressed_export(self.catalog, target), hashlib.sha256(export).hexdigest())
        with open(target, "rb") as handle:
            self.assertEqual(zlib.decompress(handle.read()), export)

    def test_a_closed_catalog_is_not_read(self) -> None:
        self.catalog.close()
        self.assertRaises(StoreClosed, export_digest, self.catalog)
