"""Tests for bitnode.storage.key_backup: the sealed format, key store round trips, parts, and a whole recovery.

The last class runs real Nodes (service_identity + service_backups over the
in-memory grid of tests/storage/test_backups_service.py): a file stored under
a share key comes back on a new machine that has nothing but the master key.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sqlite3

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.crypt.keystore import KeyStore
from bitnode.errors import BadRequest
from bitnode.storage import key_backup, share_scope
from tests.interface.support import wait_until
from tests.storage.test_backups_service import MASTER, SEG, StorageNodeTestCase
from tests.userid.fakes import rsa_key

OWNER = "alice@id.example.net_8084"


def run_now(fn, *args):
    return defer.succeed(fn(*args))


def store_at(case, owner: str = OWNER) -> KeyStore:
    return KeyStore(case.mktemp(), owner, run_now)


def document(keys=(), parts=None, owner: str = OWNER) -> dict:
    return {"format": 1, "owner": owner, "keys": list(keys), "parts": dict(parts or {})}


class FormatTests(unittest.TestCase):
    def setUp(self):
        self.doc = document([{"key_id": "share_ab$" + OWNER, "label": "holidays", "is_private": True,
                              "pem": rsa_key(2).to_pem().decode("ascii")}], {"shares": [{"key_id": "x"}]})

    def test_round_trip(self):
        sealed = key_backup.seal(rsa_key(0), self.doc)
        self.assertNotIn(b"holidays", sealed)
        self.assertNotIn(b"PRIVATE KEY", sealed)
        self.assertEqual(key_backup.open_sealed(rsa_key(0), sealed, OWNER), self.doc)

    def test_wrong_master_key_cannot_open_it(self):
        sealed = key_backup.seal(rsa_key(0), self.doc)
        error = self.assertRaises(BadRequest, key_backup.open_sealed, rsa_key(1), sealed, OWNER)
        self.assertIn("not signed by my master key", str(error))

    def test_another_owner_is_refused(self):
        sealed = key_backup.seal(rsa_key(0), self.doc)
        self.assertRaises(BadRequest, key_backup.open_sealed, rsa_key(0), sealed, "bob@id.example.net_8084")

    def test_tampered_ciphertext_signature_or_header_is_refused(self):
        outer = json.loads(key_backup.seal(rsa_key(0), self.doc))
        sealed = bytearray(base64.b64decode(outer["sealed"]))
        sealed[-1] ^= 1
        for changed in (dict(outer, sealed=base64.b64encode(bytes(sealed)).decode()),
                        dict(outer, signature=outer["signature"][:-4] + "AAA="),
                        dict(outer, format=2), dict(outer, owner="bob@x.net")):
            self.assertRaises(BadRequest, key_backup.open_sealed, rsa_key(0), json.dumps(changed).encode(), OWNER)
        self.assertRaises(BadRequest, key_backup.open_sealed, rsa_key(0), b"garbage", OWNER)

    def test_a_forgery_encrypted_to_my_public_key_is_refused(self):
        # Anyone can encrypt to my public key; only my master key signs.
        forged = json.loads(key_backup.seal(rsa_key(1), self.doc))
        mine = json.loads(key_backup.seal(rsa_key(0), self.doc))
        forged["signature"] = mine["signature"]
        self.assertRaises(BadRequest, key_backup.open_sealed, rsa_key(0), json.dumps(forged).encode(), OWNER)

    def test_malformed_documents_are_refused(self):
        for bad in ({"format": 2}, document([{"key_id": 1}]), dict(document(), parts=[]), "text"):
            self.assertRaises(BadRequest, key_backup.seal, rsa_key(0), bad)

    def test_digest_follows_content(self):
        self.assertEqual(key_backup.digest(self.doc), key_backup.digest(json.loads(json.dumps(self.doc))))
        self.assertNotEqual(key_backup.digest(self.doc), key_backup.digest(document()))


class KeyStoreRoundTripTests(unittest.TestCase):
    def test_every_key_but_the_master_goes_and_comes_back_with_its_label(self):
        store = store_at(self)
        store.add_private(store.master_key_id, rsa_key(0).to_pem(), "master key")
        share = self.successResultOf(store.create(share_scope.new_share_alias(), 2048, "holidays"))
        store.add_private("share_0123456789abcdef0123456789abcdef$bob@x.net", rsa_key(3).to_pem(), "from bob")
        store.add_public("master$bob@x.net", rsa_key(3).public_key().to_pem())
        doc = key_backup.collect(store, {"p": 1})
        self.assertEqual(sorted(e["key_id"] for e in doc["keys"]),
                         sorted(k.key_id for k in store.list() if k.key_id != store.master_key_id))
        self.assertEqual(doc["parts"], {"p": 1})

        fresh = store_at(self)
        fresh.add_private(fresh.master_key_id, rsa_key(0).to_pem(), "master key")
        opened = key_backup.open_sealed(rsa_key(0), key_backup.seal(rsa_key(0), doc), OWNER)
        outcome = key_backup.restore_keys(fresh, opened)
        self.assertEqual((len(outcome["restored"]), outcome["present"], outcome["failed"]), (3, 0, []))
        self.assertEqual(fresh.get(share.key_id).label, "holidays")
        self.assertEqual(fresh.private_key(share.key_id), store.private_key(share.key_id))
        self.assertFalse(fresh.get("master$bob@x.net").is_private)
        # Again: nothing changes; a key id holding another key here is reported, not overwritten.
        self.assertEqual(key_backup.restore_keys(fresh, opened)["present"], 3)
        other = store_at(self)
        other.add_private(share.key_id, rsa_key(4).to_pem())
        failed = key_backup.restore_keys(other, opened)["failed"]
        self.assertEqual([f["key_id"] for f in failed], [share.key_id])
        self.assertEqual(other.private_key(share.key_id), rsa_key(4))

    def test_a_master_key_in_a_backup_is_never_installed(self):
        fresh = store_at(self)
        doc = document([{"key_id": fresh.master_key_id, "label": "", "is_private": True,
                         "pem": rsa_key(5).to_pem().decode()}])
        self.assertEqual(key_backup.restore_keys(fresh, doc)["restored"], [])
        self.assertFalse(fresh.has(fresh.master_key_id))


class BackupPartsTests(unittest.TestCase):
    def test_parts_are_collected_restored_and_kept_pending_until_registered(self):
        parts = key_backup.BackupParts()
        saved = []
        parts.on_pending = saved.append
        got = []
        unregister = parts.register("shares", lambda: ["mine"], got.append)
        self.assertEqual(parts.collect(), {"shares": ["mine"]})
        outcome = parts.restore({"shares": ["old"], "groups": {"g": 1}})
        self.assertEqual(outcome, {"shares": "restored", "groups": "pending"})
        self.assertEqual((got, saved), ([["old"]], [{"groups": {"g": 1}}]))
        # a pending part goes on into the next backups, and to its service when it registers
        self.assertEqual(parts.collect(), {"shares": ["mine"], "groups": {"g": 1}})
        groups = []
        parts.register("groups", lambda: {"g": 2}, groups.append)
        self.assertEqual((groups, parts.pending, saved[-1]), ([{"g": 1}], {}, {}))
        unregister()
        self.assertEqual(parts.collect(), {"groups": {"g": 2}})

    def test_a_failing_restore_is_reported_and_pending_parts_load_from_an_earlier_run(self):
        parts = key_backup.BackupParts()

        def broken(value):
            raise ValueError("bad record")

        parts.register("shares", list, broken)
        self.assertEqual(parts.restore({"shares": 1}), {"shares": "failed: bad record"})
        got = []
        parts.register("groups", dict, got.append)
        parts.load_pending({"groups": {"a": 1}, "queues": [1]})
        self.assertEqual((got, parts.pending), ([{"a": 1}], {"queues": [1]}))
        self.assertRaises(BadRequest, parts.register, "", list, list)


class RecoveryTests(StorageNodeTestCase):
    """A new machine with only the master key gets the share keys back and decrypts the share's files."""

    @defer.inlineCallbacks
    def test_file_under_a_share_key_comes_back_on_a_new_machine_byte_identical(self):
        node, service = yield self.start()
        keystore = node.service_driver.get("service_identity").keystore
        share = yield keystore.create(share_scope.new_share_alias(), 2048, "holidays")
        keystore.add_public("master$bob@x.net", rsa_key(3).public_key().to_pem(), "bob")
        remote = share.key_id + ":photos/a.bin"
        _, _, data = yield self.upload(service, 2 * SEG + 7, remote=remote, seed=7)
        yield self.upload(service)
        records = [{"key_id": share.key_id, "grantees": ["bob@x.net"]}]
        service.add_backup_part("shares", lambda: records, lambda value: None)
        outcome = yield service.backup_catalog()
        # A backup the key change or the end of the uploads scheduled may have come first (a loaded
        # machine): this one is then number 2. The newest is what a new machine restores.
        self.assertEqual(outcome["keys"], 2)
        newest = outcome["serial"]
        key_file = os.path.abspath(self.mktemp())
        yield node.service_driver.get("service_identity").backup_identity(key_file)
        yield node.stopService()

        other, restored = yield self.start(identity=False)
        got = []
        restored.add_backup_part("shares", list, got.append)
        yield other.service_driver.get("service_identity").recover_identity(key_file)
        yield wait_until(lambda: restored.last_restore.get("serial") == newest)
        secrets = restored.last_restore["secrets"]
        self.assertEqual((secrets["keys_restored"], secrets["keys_failed"], secrets["parts"]),
                         (2, [], {"shares": "restored"}))
        self.assertEqual(got, [records])
        new_keys = other.service_driver.get("service_identity").keystore
        self.assertEqual(new_keys.get(share.key_id).label, "holidays")
        self.assertEqual((yield self.download(restored, remote)), data)
        self.assertEqual((yield self.download(restored, MASTER + ":docs/a.bin")), read_source(1, 3 * SEG))

    @defer.inlineCallbacks
    def test_a_key_change_is_backed_up_after_the_delay_and_an_unchanged_set_is_not(self):
        node, service = yield self.start(overrides={"services/backups/catalog-backup-delay": 0.01})
        yield self.upload(service)
        yield wait_until(lambda: not service.status()["catalog_backup_pending"])
        serial = service.last_backup["serial"]
        self.assertEqual(service.last_backup["keys"], 0)
        keystore = node.service_driver.get("service_identity").keystore
        info = yield keystore.create("group_" + "ab" * 16, 2048, "team")
        self.assertTrue(service.status()["catalog_backup_pending"])
        yield wait_until(lambda: not service.status()["catalog_backup_pending"])
        self.assertEqual((service.last_backup["serial"], service.last_backup["keys"]), (serial + 1, 1))
        self.assertTrue((yield service.backup_catalog())["skipped"])
        keystore.label(info.key_id, "the team")
        yield wait_until(lambda: service.last_backup.get("serial") == serial + 2)

    @defer.inlineCallbacks
    def test_a_node_backed_up_before_keys_were_backs_up_again_at_start(self):
        node, service = yield self.start()
        yield self.upload(service)
        yield service.backup_catalog()
        basedir = node.basedir.root
        yield node.stopService()
        # As an older version left it: a backup, no secrets digest.
        _drop_meta(os.path.join(basedir, "metadata", "catalog.sqlite"), "catalog-backup-secrets-sha256")
        _, again = yield self.start(basedir=basedir, overrides={"services/backups/catalog-backup-delay": 0.01})
        yield wait_until(lambda: again.last_backup.get("serial") == 2)


def read_source(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _drop_meta(path: str, name: str) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("DELETE FROM meta WHERE name = ?", (name,))
    db.close()

