"""Tests for bitnode.storage.share_scope: share key names, the paths of a share on a supplier, readers lists."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.storage import share_scope

OWNER = "alice@id.example.net_8084"
ALIAS = "share_0123456789abcdef0123456789abcdef"
KEY = f"{ALIAS}${OWNER}"


class NamesTests(unittest.TestCase):
    def test_a_new_alias_is_random_and_a_valid_share_alias(self):
        first, second = share_scope.new_share_alias(), share_scope.new_share_alias()
        self.assertNotEqual(first, second)
        self.assertRegex(first, r"^share_[0-9a-f]{32}$")
        self.assertTrue(share_scope.is_share_key(f"{first}${OWNER}"))

    def test_share_keys_are_told_from_other_keys(self):
        self.assertTrue(share_scope.is_share_key(KEY))
        self.assertFalse(share_scope.is_share_key(f"master${OWNER}"))
        self.assertFalse(share_scope.is_share_key(f"share_${OWNER}"))
        self.assertFalse(share_scope.is_share_key("not a key"))
        self.assertEqual((share_scope.share_owner(KEY), share_scope.share_alias(KEY)), (OWNER, ALIAS))
        self.assertRaises(BadRequest, share_scope.share_owner, f"group_1${OWNER}")

    def test_versions_under_a_share_key_are_tagged_and_others_are_not(self):
        self.assertEqual(share_scope.version_tag(KEY), ALIAS + ".")
        self.assertEqual(share_scope.version_tag(f"master${OWNER}"), "")


class ScopeTests(unittest.TestCase):
    def test_blocks_index_and_version_prefixes_of_a_share_are_in_its_scope(self):
        for path in (f"{ALIAS}.F20250101T000000000-ab12cd34/0/1", f"{ALIAS}.F20250101T000000000-ab12cd34/",
                     share_scope.index_path(ALIAS)):
            self.assertEqual(share_scope.shared_alias(path), ALIAS, path)

    def test_everything_else_is_out_of_every_scope(self):
        for path in ("", "F20250101T000000000-ab12cd34/0/1", "catalog-3/manifest", f"{ALIAS}.x",
                     f"{ALIAS}/0/1", f"{ALIAS}./0", share_scope.readers_path(ALIAS), "share_.x/0",
                     "share_A.x/0", None):
            self.assertIsNone(share_scope.shared_alias(path), path)

    def test_an_alias_that_is_the_start_of_another_does_not_reach_it(self):
        self.assertEqual(share_scope.shared_alias(f"{ALIAS}0.F1/0/0"), ALIAS + "0")


class ReadersTests(unittest.TestCase):
    def test_round_trip(self):
        data = share_scope.encode_readers(OWNER, ALIAS, ["carol@h_1", "bob@h_1", "bob@h_1"], 5.0)
        self.assertEqual(share_scope.decode_readers(data, OWNER, ALIAS), frozenset({"bob@h_1", "carol@h_1"}))
        # fixed vector: the stored format stays readable
        self.assertEqual(data, b'{"alias":"share_0123456789abcdef0123456789abcdef","format":1,'
                               b'"owner":"alice@id.example.net_8084","readers":["bob@h_1","carol@h_1"],"updated":5.0}')

    def test_a_list_of_another_share_or_owner_or_garbage_is_refused(self):
        data = share_scope.encode_readers(OWNER, ALIAS, ["bob@h_1"], 1.0)
        self.assertRaises(BadRequest, share_scope.decode_readers, data, "mallory@h_1", ALIAS)
        self.assertRaises(BadRequest, share_scope.decode_readers, data, OWNER, ALIAS + "0")
        for bad in (b"", b"[]", b"{\"format\": 2}", b"\xff", b'{"format":1,"owner":"%s","alias":"%s","readers":[1]}'
                    % (OWNER.encode(), ALIAS.encode())):
            self.assertRaises(BadRequest, share_scope.decode_readers, bad, OWNER, ALIAS)
        self.assertRaises(BadRequest, share_scope.encode_readers, OWNER, "master", [], 1.0)


BOB, CAROL = "bob@h_1", "carol@h_1"


class WritersTests(unittest.TestCase):
    def test_a_writers_part_of_the_share_is_its_own(self):
        tag = share_scope.member_tag(BOB)
        self.assertRegex(tag, r"^[0-9a-f]{16}$")
        self.assertEqual(share_scope.writer_version_tag(KEY, BOB), f"{ALIAS}.w{tag}-")
        version = share_scope.writer_version_tag(KEY, BOB) + "F20250101T000000000-ab12cd34"
        for path in (f"{version}/0/1", f"{version}/", share_scope.entries_path(ALIAS, BOB)):
            self.assertTrue(share_scope.writable_by(path, ALIAS, BOB), path)
            self.assertEqual(share_scope.shared_alias(path), ALIAS, path)  # readers read it too
        owners = f"{ALIAS}.F20250101T000000000-ab12cd34"
        for path in (f"{version}/0/1", f"{owners}/0/1", f"{owners}/", share_scope.index_path(ALIAS),
                     share_scope.entries_path(ALIAS, BOB), share_scope.envelope_path(ALIAS, BOB),
                     share_scope.readers_path(ALIAS), share_scope.writers_path(ALIAS), f"{ALIAS}.w{tag}-",
                     f"{ALIAS}.w{tag}-/", "", None, f"{ALIAS}0.w{tag}-F1/0/0"):
            self.assertFalse(share_scope.writable_by(path, ALIAS, CAROL), path)
        self.assertFalse(share_scope.writable_by(f"{owners}/0/1", ALIAS, BOB))
        self.assertFalse(share_scope.writable_by(share_scope.index_path(ALIAS), ALIAS, BOB))
        self.assertFalse(share_scope.writable_by(f"{ALIAS}.w{tag}-/", ALIAS, BOB))

    def test_owner_and_writer_versions_are_told_apart(self):
        version = share_scope.writer_version_tag(KEY, BOB) + "F1-ab"
        self.assertTrue(share_scope.is_writer_version(version, ALIAS, BOB))
        self.assertFalse(share_scope.is_writer_version(version, ALIAS, CAROL))
        self.assertFalse(share_scope.is_owner_version(version, ALIAS))
        self.assertTrue(share_scope.is_owner_version(f"{ALIAS}.F1-ab", ALIAS))
        self.assertTrue(share_scope.is_owner_version(f"{ALIAS}.wxyz-F1", ALIAS))  # not a tag: the owner's
        self.assertFalse(share_scope.is_owner_version("F1-ab", ALIAS))

    def test_writers_list_round_trip_and_is_not_a_readers_list(self):
        data = share_scope.encode_writers(OWNER, ALIAS, [BOB], 2.0)
        self.assertEqual(share_scope.decode_writers(data, OWNER, ALIAS), frozenset({BOB}))
        self.assertRaises(BadRequest, share_scope.decode_readers, data, OWNER, ALIAS)
        self.assertRaises(BadRequest, share_scope.decode_writers, share_scope.encode_readers(OWNER, ALIAS, [BOB], 1.0),
                          OWNER, ALIAS)
