"""share_revoke: the revoked member is refused and cannot open what comes after; the others go on, away or not.

The network of :mod:`tests.access.test_shares_service` (three suppliers,
Alice who owns the share, Bob and Carol), through the API dispatcher.
"""

from __future__ import annotations

import functools
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from bitnode.access import share_rotation
from bitnode.access.key_packets import KeyOffer
from bitnode.access.share_writes import writes_file
from bitnode.crypt import keys
from bitnode.errors import BadRequest, Forbidden
from bitnode.storage import share_scope
from tests.access.test_shares_service import ShareNetworkCase
from tests.storage.test_backups_service import read
from tests.supplier.test_supplier_service import gid, ok


def keystore(node):
    return node.service_driver.get("service_identity").keystore


class RevokeTests(ShareNetworkCase):
    """Bob (read-write) is revoked; Carol (read-only) stays, and was away when it happened."""

    @inlineCallbacks
    def test_a_revoke_renews_the_key_the_revoked_is_refused_and_cannot_open_new_versions(self):
        key_id = yield self.shared_folder(mode="rw")
        yield ok(self, self.alice, "share_grant", key_id=key_id, trusted_user_id=gid(self.carol), mode="ro")
        yield ok(self, self.bob, "share_open", key_id=key_id)
        # Bob wrote a file before the revoke: it stays in the share, taken into Alice's catalog first
        bob_data = os.urandom(70_000)
        yield ok(self, self.bob, "file_upload_start", local_path=self.local_file(bob_data),
                 remote_path=f"{key_id}:from-bob.bin", wait_result=True)
        storage = self.alice.service_driver.get("service_backups")
        old_key = keystore(self.alice).private_key(key_id)
        bobs_copy = keystore(self.bob).private_key(key_id)
        self.assertEqual(bobs_copy.fingerprint(), old_key.fingerprint())

        revoked = yield ok(self, self.alice, "share_revoke", key_id=key_id, trusted_user_id=gid(self.bob))
        new_key = keystore(self.alice).private_key(key_id)
        self.assertNotEqual(new_key.fingerprint(), old_key.fingerprint())
        self.assertEqual(revoked["key_fingerprint"], new_key.fingerprint())
        self.assertEqual((revoked["grantees"], revoked["ready"], revoked["rewrapped"]), ([gid(self.carol)], True, 4))
        self.assertEqual(revoked["absorbed"]["taken"], {gid(self.bob): 1})
        self.assertEqual(revoked["regranted"], {gid(self.carol): "sent"})
        self.assertEqual((revoked["envelopes"]["stored"], revoked["envelopes"]["problems"]), (2, {}))
        self.assertEqual(keystore(self.carol).private_key(key_id).fingerprint(), new_key.fingerprint())
        self.assertEqual(keystore(self.alice).previous_private_keys(key_id)[0].fingerprint(), old_key.fingerprint())
        # every version key in Alice's catalog opens with the new key only: no block moved
        versions = [v for v in (yield self.alice.run_in_thread(storage.catalog.versions))
                    if v["remote_path"].startswith(key_id + ":")]
        self.assertEqual(len(versions), 4)
        for version in versions:
            keys.unwrap_key(new_key, version["wrapped_key"])
            self.assertRaises(keys.DecryptionError, keys.unwrap_key, old_key, version["wrapped_key"])

        # Bob: the suppliers refuse him, through the API and when he asks them directly
        self.assertIn("not granted, or revoked", (yield self.error(self.bob, 403, "share_open", key_id=key_id)))
        reader = self.reader(self.bob, key_id)
        positions = yield reader.find_suppliers()
        yield self.assertFailure(reader.fetch_index(positions), Forbidden)
        yield self.assertFailure(reader.server(positions[0]).store_block(
            gid(self.alice), f"{share_scope.writer_prefix(share_scope.share_alias(key_id), gid(self.bob))}F9-aa/0/0",
            b"x"), Forbidden)
        # a version uploaded after the revoke: its key is wrapped for the new generation, Bob's copy cannot open it
        yield ok(self, self.alice, "file_upload_start", local_path=self.local_file(b"after the revoke"),
                 remote_path=f"{key_id}:after.txt", wait_result=True)
        after = yield self.alice.run_in_thread(storage.catalog.latest_complete, key_id, "after.txt")
        self.assertRaises(keys.DecryptionError, keys.unwrap_key, bobs_copy, after["wrapped_key"])

        # Carol was away: she holds only the old generation; at her next open she takes the new one from her
        # envelope on Alice's suppliers, with Alice gone
        carol_keys = keystore(self.carol)
        carol_keys.erase(key_id)
        carol_keys.add_private(key_id, old_key.to_pem())
        shares = self.alice.service_driver.get("service_shares")
        yield shares.keeper.publish_now(key_id)
        yield self.alice.stopService()
        opened = yield ok(self, self.carol, "share_open", key_id=key_id)
        self.assertEqual((opened["mode"], opened["files"]), ("ro", 5))
        self.assertEqual(carol_keys.private_key(key_id).fingerprint(), new_key.fingerprint())
        target = yield self.download(self.carol, f"{key_id}:after.txt")
        self.assertEqual(read(os.path.join(target, "after.txt")), b"after the revoke")
        target = yield self.download(self.carol, f"{key_id}:from-bob.bin")
        self.assertEqual(read(os.path.join(target, "from-bob.bin")), bob_data)
        target = yield self.download(self.carol, f"{key_id}:photos")
        self.assert_same_folder(target)
        history = [e["event"] for e in (yield ok(self, self.carol, "share_history"))]
        self.assertIn("key-renewed", history)

    @inlineCallbacks
    def test_only_the_owner_revokes_and_only_a_member(self):
        key_id = yield self.shared_folder()
        text = yield self.error(self.alice, 404, "share_revoke", key_id=key_id, trusted_user_id=gid(self.carol))
        self.assertIn("is not a member", text)
        yield ok(self, self.bob, "share_open", key_id=key_id)
        text = yield self.error(self.bob, 403, "share_revoke", key_id=key_id, trusted_user_id=gid(self.bob))
        self.assertIn("only its owner", text)


@functools.lru_cache(maxsize=None)
def _key(name: str):
    return keys.generate_rsa(2048)


class EnvelopeTests(unittest.TestCase):
    """Key envelopes: only the owner's, for me, of that key, open; anything else is a clean BadRequest."""

    def setUp(self):
        self.owner, self.member, self.other = _key("owner"), _key("member"), _key("other")
        self.share = _key("share")
        self.key_id = "share_0123456789abcdef0123456789abcdef$alice@h_1"
        self.offer = KeyOffer(self.key_id, "", True, self.share.fingerprint(), self.share.to_pem())

    def sealed(self, signer=None, member="bob@h_1", offer=None):
        return share_rotation.seal_envelope(signer or self.owner, self.member.public_key(), "alice@h_1", member,
                                            offer or self.offer)

    def open(self, data, me="bob@h_1", key_id=None):
        return share_rotation.open_envelope(self.owner.public_key(), self.member, data, "alice@h_1", me,
                                            key_id or self.key_id)

    def test_the_owners_envelope_opens_for_its_member(self):
        self.assertEqual(self.open(self.sealed()).fingerprint, self.share.fingerprint())

    def test_a_forged_misaddressed_or_mangled_envelope_is_refused(self):
        self.assertRaises(BadRequest, self.open, self.sealed(signer=self.other))  # not signed by the owner
        self.assertRaises(BadRequest, self.open, self.sealed(member="carol@h_1"))  # for someone else
        self.assertRaises(BadRequest, self.open, self.sealed(), "bob@h_1", self.key_id.replace("0123", "4567"))
        public_only = KeyOffer(self.key_id, "", False, self.share.fingerprint(), self.share.public_key().to_pem())
        self.assertRaises(BadRequest, self.open, self.sealed(offer=public_only))
        data = self.sealed()
        for mangled in (b"", b"{}", data[:-5], data.replace(b'"signed"', b'"signet"'), os.urandom(300),
                        b"x" * (share_rotation.MAX_ENVELOPE_BYTES + 1)):
            self.assertRaises(BadRequest, self.open, mangled)

    def test_an_older_generation_replanted_is_not_taken(self):
        class Store:
            taken = []

            def replace_private(self, key_id, pem):
                self.taken.append(key_id)

        offer = self.open(self.sealed())
        self.assertRaises(Forbidden, share_rotation.take_offer, Store(), offer, "another fingerprint")
        self.assertTrue(share_rotation.take_offer(Store(), offer, self.share.fingerprint()))


class ProposalTests(ShareNetworkCase):
    """share_create with another user's owner_id: proposed to that owner, usable once it grants it back."""

    @inlineCallbacks
    def test_a_share_created_for_another_owner_works_once_that_owner_grants_it(self):
        proposed = yield ok(self, self.bob, "share_create", owner_id=gid(self.alice), key_size=2048, label="for you")
        key_id = proposed["key_id"]
        self.assertTrue(key_id.startswith("share_") and key_id.endswith("$" + gid(self.alice)), key_id)
        self.assertEqual((proposed["mine"], proposed["state"], proposed["owner_id"]), (False, "PROPOSED", gid(self.alice)))
        (theirs,) = yield ok(self, self.alice, "shares_list")
        self.assertEqual((theirs["key_id"], theirs["mine"], theirs["proposed_by"], theirs["grantees"], theirs["label"]),
                         (key_id, True, gid(self.bob), [], "for you"))
        self.assertEqual(keystore(self.alice).private_key(key_id), keystore(self.bob).private_key(key_id))

        granted = yield ok(self, self.alice, "share_grant", key_id=key_id, trusted_user_id=gid(self.bob))
        self.assertEqual((granted["mode"], granted["ready"]), ("rw", True))
        data = os.urandom(20_000)
        path = self.local_file(data)
        text = yield self.error(self.bob, 409, "file_upload_start", local_path=path, remote_path=f"{key_id}:notes.bin")
        self.assertIn("share_open", text)
        # open_share opens it first
        yield ok(self, self.bob, "file_upload_start", local_path=path, remote_path=f"{key_id}:notes.bin",
                 wait_result=True, open_share=True)
        (opened,) = yield ok(self, self.bob, "shares_list")
        self.assertEqual((opened["state"], opened["mode"], opened["proposed_by"]), ("CONNECTED", "rw", ""))
        mine = yield ok(self, self.alice, "share_open", key_id=key_id)
        self.assertEqual(mine["absorbed"]["taken"], {gid(self.bob): 1})
        target = yield self.download(self.alice, f"{key_id}:notes.bin")
        self.assertEqual(read(os.path.join(target, "notes.bin")), data)
        events = [(e["event"], e["user"]) for e in (yield ok(self, self.alice, "share_history"))]
        self.assertEqual(events[:2], [("proposed", gid(self.bob)), ("granted", gid(self.bob))])


class EnvelopePropertyTests(unittest.TestCase):
    """Whatever a supplier hands back as my key envelope, opening it raises BadRequest or gives the owner's key."""

    def setUp(self):
        self.owner, self.member, self.share = _key("owner"), _key("member"), _key("share")
        self.key_id = "share_0123456789abcdef0123456789abcdef$alice@h_1"
        offer = KeyOffer(self.key_id, "", True, self.share.fingerprint(), self.share.to_pem())
        self.valid = share_rotation.seal_envelope(self.owner, self.member.public_key(), "alice@h_1", "bob@h_1", offer)

    def open(self, data):
        try:
            offer = share_rotation.open_envelope(self.owner.public_key(), self.member, data, "alice@h_1", "bob@h_1",
                                                 self.key_id)
        except BadRequest:
            return None
        self.assertEqual(offer.fingerprint, self.share.fingerprint())  # only the real one ever opens
        return offer

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=4096))
    def test_random_bytes(self, data):
        self.assertIsNone(self.open(data))

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_mutated_envelopes(self, data):
        blob = bytearray(self.valid)
        for _ in range(data.draw(st.integers(1, 4), label="edits")):
            action = data.draw(st.sampled_from(["flip", "cut", "insert"]), label="action")
            at = data.draw(st.integers(0, max(0, len(blob) - 1)), label="at")
            if action == "flip" and blob:
                blob[at] ^= data.draw(st.integers(1, 255), label="bits")
            elif action == "cut":
                del blob[at:at + data.draw(st.integers(1, 64), label="length")]
            else:
                blob[at:at] = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
        self.open(bytes(blob))


class WriterOnANewMachineTests(ShareNetworkCase):
    """A writer whose own catalog of the share is lost starts again from its entries on the owner's suppliers."""

    @inlineCallbacks
    def test_a_writer_that_lost_its_catalog_of_the_share_keeps_what_it_wrote(self):
        key_id = yield self.shared_folder(mode="rw")
        yield ok(self, self.bob, "file_upload_start", local_path=self.local_file(b"first"),
                 remote_path=f"{key_id}:bob/first.txt", wait_result=True, open_share=True)
        yield ok(self, self.bob, "share_close", key_id=key_id)
        os.remove(writes_file(self.bob.basedir.metadata, key_id))  # a new machine: nothing of my part here
        yield ok(self, self.bob, "file_upload_start", local_path=self.local_file(b"second"),
                 remote_path=f"{key_id}:bob/second.txt", wait_result=True, open_share=True)
        yield ok(self, self.alice, "share_grant", key_id=key_id, trusted_user_id=gid(self.carol), mode="ro")
        yield ok(self, self.carol, "share_open", key_id=key_id)
        listed = {i["path"] for i in (yield ok(self, self.carol, "files_list", key_id=key_id)) if i["type"] == "file"}
        self.assertTrue({"bob/first.txt", "bob/second.txt"} <= listed, listed)
        mine = yield ok(self, self.alice, "share_open", key_id=key_id)
        self.assertEqual((mine["absorbed"]["taken"], mine["absorbed"]["forgotten"]), ({gid(self.bob): 2},
                                                                                      {gid(self.bob): 0}))
