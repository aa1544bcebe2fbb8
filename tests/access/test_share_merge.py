"""Tests for bitnode.access.share_merge: the owner's index and the writers' entries, merged into one view."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.access import share_index, share_merge
from bitnode.errors import BadRequest
from bitnode.storage import share_scope
from bitnode.storage.catalog import Catalog
from bitnode.storage.ports import SegmentMeta
from tests.access.test_share_index import key
from tests.storage.test_catalog_format import mutate

OWNER, BOB, CAROL, DAVE = "alice@h_1", "bob@h_1", "carol@h_1", "dave@h_1"
ALIAS = "share_0123456789abcdef0123456789abcdef"
SHARE = f"{ALIAS}${OWNER}"


def version_of(member: str, name: str) -> str:
    tag = share_scope.version_tag(SHARE) if member == OWNER else share_scope.writer_version_tag(SHARE, member)
    return f"{tag}F{name}"


def catalog_of(case: unittest.TestCase, files: list[tuple]) -> Catalog:
    """A catalog with ``(member, path, version name, created)`` complete one-segment files under the share."""
    catalog = Catalog(":memory:")
    case.addCleanup(catalog.close)
    for member, path, name, created in files:
        version_id = version_of(member, name)
        catalog.begin_version(SHARE, path, version_id, 3, 64, 1, 1, 2, b"wrapped " + name.encode(), ["s0", "s1"],
                              now=created)
        catalog.record_segment(version_id, SegmentMeta(0, 3, ("a0" * 32, "b1" * 32), (0, 1)))
        catalog.finish_version(version_id, now=created)
    return catalog


def opened(catalog: Catalog, writer: str = "", members: dict | None = None, removed: list | None = None) -> dict:
    """What open_index gives for a document of these rows."""
    return {"serial": 1, "created": 1.0, "catalog": share_index.share_subset(catalog.export(), SHARE),
            "writer": writer, "members": dict(members or {}), "reshare": "writers", "removed": list(removed or [])}


def view_of(case: unittest.TestCase, document_bytes: bytes) -> Catalog:
    view = Catalog(":memory:")
    case.addCleanup(view.close)
    view.import_(document_bytes)
    return view


class MergeTests(unittest.TestCase):
    members = {BOB: "rw", CAROL: "rw", DAVE: "ro"}

    def test_writers_add_their_files_and_concurrent_edits_of_one_path_are_both_kept_newest_listed(self):
        index = opened(catalog_of(self, [(OWNER, "docs/plan.txt", "1-aa", 10.0)]), members=self.members)
        bob = opened(catalog_of(self, [(BOB, "docs/plan.txt", "2-bb", 30.0), (BOB, "bob/new.txt", "3-cc", 31.0)]),
                     writer=BOB)
        carol = opened(catalog_of(self, [(CAROL, "docs/plan.txt", "4-dd", 20.0)]), writer=CAROL)
        merged, report = share_merge.merged_bytes(index, [carol, bob])
        self.assertEqual(report, {"taken": {BOB: 2, CAROL: 1}, "conflicts": [], "ignored_writers": []})
        view = view_of(self, merged)
        plan = view.get(SHARE, "docs/plan.txt")
        self.assertEqual([v["version_id"] for v in plan["versions"]],
                         [version_of(BOB, "2-bb"), version_of(CAROL, "4-dd"), version_of(OWNER, "1-aa")])
        listed = {row["path"]: row["latest_version"] for row in view.list(SHARE)}
        self.assertEqual(listed, {"docs": None, "docs/plan.txt": version_of(BOB, "2-bb"), "bob": None,
                                  "bob/new.txt": version_of(BOB, "3-cc")})
        # the same merge whatever order the entries came in
        self.assertEqual(share_merge.merged_bytes(index, [bob, carol])[0], merged)

    def test_the_owners_copy_wins_removed_versions_stay_out_and_non_writers_are_ignored(self):
        taken_in = (BOB, "docs/a.txt", "5-ee", 5.0)
        index = opened(catalog_of(self, [taken_in]), members={BOB: "rw", DAVE: "ro"},
                       removed=[version_of(BOB, "6-ff")])
        bob = opened(catalog_of(self, [taken_in, (BOB, "docs/b.txt", "6-ff", 6.0)]), writer=BOB)
        dave = opened(catalog_of(self, [(DAVE, "dave.txt", "7-gg", 7.0)]), writer=DAVE)
        mallory = opened(catalog_of(self, [("mallory@h_1", "m.txt", "8-hh", 8.0)]), writer="mallory@h_1")
        document, report = share_merge.merge(index, [bob, dave, mallory])
        self.assertEqual(report.taken, {BOB: []})
        self.assertEqual(sorted(report.ignored_writers), [DAVE, "mallory@h_1"])
        self.assertEqual([row[1] for row in document["items"]], ["docs", "docs/a.txt"])

    def test_a_version_the_writer_deleted_leaves_the_view_though_the_owner_took_it_in(self):
        index = opened(catalog_of(self, [(BOB, "bob/x.bin", "5-ee", 5.0), (BOB, "both.txt", "6-ff", 6.0),
                                         (OWNER, "both.txt", "7-gg", 7.0), (CAROL, "carol.txt", "8-hh", 8.0)]),
                       members={BOB: "rw", CAROL: "rw"})
        bob = opened(catalog_of(self, []), writer=BOB)  # Bob deleted both of his
        view = view_of(self, share_merge.merged_bytes(index, [bob])[0])
        self.assertEqual({row["path"]: row["latest_version"] for row in view.list(SHARE) if row["type"] == "file"},
                         {"both.txt": version_of(OWNER, "7-gg"), "carol.txt": version_of(CAROL, "8-hh")})
        # Carol's entries were not read: nothing of hers goes
        self.assertEqual(len(view.get(SHARE, "both.txt")["versions"]), 1)

    def test_a_conflict_of_kinds_keeps_what_was_there(self):
        owner = catalog_of(self, [(OWNER, "x/y.txt", "1-aa", 1.0)])
        owner.create(SHARE, "folder", as_folder=True)
        index = opened(owner, members={BOB: "rw"})
        bob_catalog = catalog_of(self, [(BOB, "folder", "2-bb", 2.0), (BOB, "x/y.txt/z", "3-cc", 3.0),
                                        (BOB, "ok.txt", "4-dd", 4.0)])
        bob = opened(bob_catalog, writer=BOB)
        document, report = share_merge.merge(index, [bob])
        self.assertEqual(report.taken, {BOB: [version_of(BOB, "4-dd")]})
        self.assertEqual(sorted(c["path"] for c in report.conflicts), ["folder", "x/y.txt", "x/y.txt/z"])
        view = view_of(self, json.dumps(document).encode())
        self.assertEqual(view.get(SHARE, "folder")["type"], "folder")

    def test_a_writers_empty_folders_and_links_come_in_when_their_place_is_free(self):
        index = opened(catalog_of(self, [(OWNER, "taken", "1-aa", 1.0)]), members={BOB: "rw"})
        bob_catalog = catalog_of(self, [])
        bob_catalog.create(SHARE, "empty/inner", as_folder=True)
        bob_catalog.create_link(SHARE, "link", "empty")
        bob_catalog.create_link(SHARE, "taken", "nowhere")
        document, report = share_merge.merge(index, [opened(bob_catalog, writer=BOB)])
        view = view_of(self, json.dumps(document).encode())
        self.assertEqual({row["path"]: row["type"] for row in view.list(SHARE)},
                         {"empty": "folder", "empty/inner": "folder", "link": "link", "taken": "file"})
        self.assertEqual([c["path"] for c in report.conflicts], ["taken"])


PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class MergePropertyTests(unittest.TestCase):
    """A writer's entries, random or mutated, either fail to open (BadRequest) or merge into an importable view."""

    def setUp(self):
        self.share = key("share")
        self.bob = key("bob")
        self.index = opened(catalog_of(self, [(OWNER, "docs/a.txt", "1-aa", 1.0)]), members={BOB: "rw"})
        self.entries = share_index.share_subset(
            catalog_of(self, [(BOB, "docs/b.txt", "2-bb", 2.0), (BOB, "docs/a.txt", "3-cc", 3.0)]).export(), SHARE)

    @PROPERTY
    @given(st.data())
    def test_mutated_entries_never_break_the_merge_or_the_import(self, data):
        catalog = mutate(self.entries, data)
        stored = share_index.seal_index(self.bob, self.share.public_key(), OWNER, SHARE, 2, 1.0, catalog, writer=BOB)
        signed = share_index.verify_index(self.bob.public_key(), stored, OWNER, SHARE, writer=BOB)
        try:
            doc = share_index.open_index(self.share, signed)
        except BadRequest:
            return
        merged, report = share_merge.merged_bytes(self.index, [doc])
        view = Catalog(":memory:")
        try:
            view.import_(merged)
            self.assertTrue(view.exists(SHARE, "docs/a.txt"))  # the owner's file is always there
            self.assertIn(version_of(OWNER, "1-aa"), [v["version_id"] for v in view.get(SHARE, "docs/a.txt")["versions"]])
        finally:
            view.close()

    def test_entries_reaching_outside_the_writers_part_do_not_open(self):
        stored = share_index.seal_index(self.bob, self.share.public_key(), OWNER, SHARE, 2, 1.0,
                                        self.index["catalog"], writer=BOB)  # the owner's versions, claimed by bob
        signed = share_index.verify_index(self.bob.public_key(), stored, OWNER, SHARE, writer=BOB)
        self.assertIn("outside its part", str(self.assertRaises(BadRequest, share_index.open_index, self.share, signed)))
        # signed by bob, presented as carol's: the signature check refuses it
        self.assertRaises(BadRequest, share_index.verify_index, self.bob.public_key(), stored, OWNER, SHARE, CAROL)
