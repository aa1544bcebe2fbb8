"""Tests for bitnode.storage.catalog: files, versions, blocks, persistence, export/import."""

from __future__ import annotations

import json
import os
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.errors import BadRequest, Conflict, NotFound
from bitnode.storage import catalog_format
from bitnode.storage.catalog import (
    COMPLETE,
    FAILED,
    UPLOADING,
    Catalog,
    CatalogUnreadable,
    open_catalog,
    split_remote_path,
)
from bitnode.storage.catalog_format import parse_export
from bitnode.storage.ports import SegmentMeta

KEY = "master$alice@127.0.0.1_8084"
SHARE = "share1$alice@127.0.0.1_8084"
SUPPLIERS = ["s1@h", "s2@h", "s3@h", "s4@h", "s5@h"]
SHAS = tuple(f"{i:064x}" for i in range(5))


def segment(index: int, stored=(0, 1, 2, 3, 4), length: int = 100) -> SegmentMeta:
    return SegmentMeta(index, length, SHAS, tuple(stored))


class CatalogTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "catalog.sqlite")
        self.catalog = self.open()

    def open(self) -> Catalog:
        catalog = Catalog(self.path)
        self.addCleanup(catalog.close)
        return catalog

    def upload(self, catalog: Catalog, path: str, version: str, segments: int = 2, now: float = 1.0) -> None:
        catalog.begin_version(KEY, path, version, 100 * segments, 100, segments, 3, 5, b"wrapped", SUPPLIERS, now=now)
        for i in range(segments):
            catalog.record_segment(version, segment(i))
        catalog.finish_version(version, now=now + 1)


class RemotePathTests(unittest.TestCase):
    def test_split(self) -> None:
        self.assertEqual(split_remote_path(f"{KEY}:docs/a.txt"), (KEY, "docs/a.txt"))
        self.assertEqual(split_remote_path(f"{KEY}:"), (KEY, ""))

    def test_bad_paths_are_refused(self) -> None:
        for bad in ("docs/a.txt", f"{KEY}:../x", f"{KEY}:a//b", "nokey:a", f"{KEY}:a\x00b", 5):
            self.assertRaises(BadRequest, split_remote_path, bad)


class ItemTests(CatalogTestCase):
    def test_create_file_makes_parent_folders(self) -> None:
        item = self.catalog.create(KEY, "a/b/c.txt")
        self.assertEqual((item["type"], item["remote_path"]), ("file", f"{KEY}:a/b/c.txt"))
        self.assertEqual(self.catalog.get(KEY, "a")["type"], "folder")
        self.assertEqual(self.catalog.get(KEY, "a/b")["type"], "folder")
        self.assertTrue(self.catalog.exists(KEY, "a/b/c.txt"))
        self.assertTrue(self.catalog.exists(KEY, ""))
        self.assertFalse(self.catalog.exists(SHARE, "a"))

    def test_create_twice_conflicts_unless_exist_ok(self) -> None:
        self.catalog.create(KEY, "a.txt")
        self.assertRaises(Conflict, self.catalog.create, KEY, "a.txt")
        self.catalog.create(KEY, "a.txt", exist_ok=True)
        self.assertRaises(Conflict, self.catalog.create, KEY, "a.txt", as_folder=True, exist_ok=True)

    def test_file_cannot_hold_children(self) -> None:
        self.catalog.create(KEY, "a.txt")
        self.assertRaises(Conflict, self.catalog.create, KEY, "a.txt/b")
        self.assertFalse(self.catalog.exists(KEY, "a.txt/b"))

    def test_invalid_names_are_refused(self) -> None:
        self.assertRaises(BadRequest, self.catalog.create, KEY, "../etc")
        self.assertRaises(BadRequest, self.catalog.create, KEY, "")
        self.assertRaises(BadRequest, self.catalog.create, "not a key", "a")

    def test_list_recursive_or_one_level_with_sizes(self) -> None:
        self.upload(self.catalog, "docs/a.txt", "V1")
        self.catalog.create(KEY, "docs/sub/b.txt")
        self.catalog.create(SHARE, "x")
        everything = [i["remote_path"] for i in self.catalog.list()]
        self.assertEqual(everything, [f"{KEY}:docs", f"{KEY}:docs/a.txt", f"{KEY}:docs/sub",
                                      f"{KEY}:docs/sub/b.txt", f"{SHARE}:x"])
        top = self.catalog.list(KEY, "docs", recursive=False)
        self.assertEqual([i["path"] for i in top], ["docs/a.txt", "docs/sub"])
        self.assertEqual(top[0]["size"], 200)
        self.assertEqual(top[0]["latest_version"], "V1")
        self.assertEqual([i["path"] for i in self.catalog.list(KEY, "", recursive=False)], ["docs"])

    def test_delete_folder_removes_subtree_and_answers_versions(self) -> None:
        self.upload(self.catalog, "docs/a.txt", "V1")
        self.upload(self.catalog, "docs/sub/b.txt", "V2")
        self.upload(self.catalog, "docsx.txt", "V3")
        self.assertEqual(sorted(self.catalog.delete(KEY, "docs")), ["V1", "V2"])
        self.assertEqual([i["path"] for i in self.catalog.list(KEY)], ["docsx.txt"])
        self.assertRaises(NotFound, self.catalog.version, "V1")
        self.assertEqual(self.catalog.missing_blocks("V1"), [])
        self.assertRaises(NotFound, self.catalog.delete, KEY, "docs")


class VersionTests(CatalogTestCase):
    def test_upload_lifecycle(self) -> None:
        v = self.catalog.begin_version(KEY, "a.txt", "V1", 150, 100, 2, 3, 5, b"wk", SUPPLIERS, now=5)
        self.assertEqual((v["state"], v["segments_done"], v["remote_path"]), (UPLOADING, 0, f"{KEY}:a.txt"))
        self.assertRaises(Conflict, self.catalog.finish_version, "V1")
        self.catalog.record_segment("V1", segment(0, length=100))
        self.assertEqual(self.catalog.resume_point("V1"), 1)
        self.catalog.record_segment("V1", segment(1, length=50))
        done = self.catalog.finish_version("V1", now=9)
        self.assertEqual((done["state"], done["completed"], done["wrapped_key"]), (COMPLETE, 9, b"wk"))
        segs = self.catalog.segments("V1")
        self.assertEqual([(s.index, s.plaintext_length, s.block_sha256) for s in segs],
                         [(0, 100, SHAS), (1, 50, SHAS)])
        self.assertEqual(self.catalog.get(KEY, "a.txt")["versions"][0]["version_id"], "V1")

    def test_bad_version_parameters(self) -> None:
        args = (KEY, "a.txt", "V1", 150, 100, 2, 3, 5, b"wk")
        self.assertRaises(BadRequest, self.catalog.begin_version, *args, SUPPLIERS[:4])
        self.assertRaises(BadRequest, self.catalog.begin_version, KEY, "a", "../v", 1, 1, 1, 1, 1, b"", ["s"])
        self.assertRaises(BadRequest, self.catalog.begin_version, KEY, "a", "V9", 1, 1, 1, 6, 5, b"", SUPPLIERS)
        self.catalog.begin_version(*args, SUPPLIERS)
        self.assertRaises(Conflict, self.catalog.begin_version, *args, SUPPLIERS)
        self.assertRaises(BadRequest, self.catalog.record_segment, "V1", segment(2))
        self.assertRaises(BadRequest, self.catalog.record_segment, "V1", SegmentMeta(0, 1, SHAS[:4], ()))
        self.assertRaises(NotFound, self.catalog.record_segment, "nope", segment(0))
        self.assertRaises(BadRequest, self.catalog.finish_version, "V1", UPLOADING)

    def test_resume_point_is_first_gap(self) -> None:
        self.catalog.begin_version(KEY, "a", "V1", 500, 100, 5, 3, 5, b"", SUPPLIERS)
        for i in (0, 1, 3):
            self.catalog.record_segment("V1", segment(i))
        self.assertEqual(self.catalog.resume_point("V1"), 2)

    def test_missing_blocks_and_rebuild_bookkeeping(self) -> None:
        self.catalog.begin_version(KEY, "a", "V1", 100, 100, 1, 3, 5, b"", SUPPLIERS)
        self.catalog.record_segment("V1", segment(0, stored=(0, 1, 2, 4)))
        self.assertEqual(self.catalog.missing_blocks(), [("V1", 0, 3)])
        self.assertEqual(self.catalog.segments("V1")[0].missing, (3,))
        self.catalog.set_block_holder("V1", 0, 3, "s9@h")
        self.assertEqual(self.catalog.missing_blocks(), [])
        self.assertEqual(self.catalog.blocks_held_by("s9@h"), [("V1", 0, 3, SHAS[3])])
        self.assertEqual(self.catalog.forget_supplier("s1@h"), 1)
        self.assertEqual(self.catalog.missing_blocks("V1"), [("V1", 0, 0)])
        self.assertRaises(NotFound, self.catalog.set_block_holder, "V1", 0, 7, "x")

    def test_many_holders_in_one_transaction_in_order_skipping_blocks_gone(self) -> None:
        self.catalog.begin_version(KEY, "a", "V1", 100, 100, 1, 3, 5, b"", SUPPLIERS)
        self.catalog.record_segment("V1", segment(0, stored=(0, 1, 2, 4)))
        updates = [("V1", 0, 3, ""), ("V1", 0, 3, "s9@h"), ("V1", 0, 1, "s8@h"), ("V1", 0, 7, "x"), ("V0", 0, 0, "x")]
        self.assertEqual(self.catalog.set_block_holders(updates), 3)  # the last two name no block: skipped
        self.assertEqual(self.catalog.blocks_held_by("s9@h"), [("V1", 0, 3, SHAS[3])])  # the later one won
        self.assertEqual(self.catalog.blocks_held_by("s8@h"), [("V1", 0, 1, SHAS[1])])
        self.assertEqual(self.catalog.missing_blocks(), [])
        self.assertEqual(self.catalog.set_block_holders([]), 0)

    def test_prune_keeps_newest_complete_and_drops_failed(self) -> None:
        for i, version in enumerate(("V1", "V2", "V3")):
            self.upload(self.catalog, "a", version, now=10 * i)
        self.catalog.begin_version(KEY, "a", "V4", 1, 1, 1, 3, 5, b"", SUPPLIERS, now=50)
        self.catalog.finish_version("V4", FAILED)
        self.assertEqual(sorted(self.catalog.prune_versions(KEY, "a", keep=2)), ["V1", "V4"])
        self.assertEqual([v["version_id"] for v in self.catalog.get(KEY, "a")["versions"]], ["V3", "V2"])
        self.assertRaises(BadRequest, self.catalog.prune_versions, KEY, "a", 0)

    def test_versions_by_state(self) -> None:
        self.upload(self.catalog, "a", "V1")
        self.catalog.begin_version(KEY, "b", "V2", 1, 1, 1, 3, 5, b"", SUPPLIERS)
        self.assertEqual([v["version_id"] for v in self.catalog.versions(UPLOADING)], ["V2"])
        self.assertEqual(len(self.catalog.versions()), 2)


class DurabilityTests(CatalogTestCase):
    def test_survives_reopen(self) -> None:
        self.upload(self.catalog, "docs/a.txt", "V1")
        self.catalog.close()
        again = self.open()
        self.assertEqual(again.get(KEY, "docs/a.txt")["versions"][0]["state"], COMPLETE)
        self.assertEqual(len(again.segments("V1")), 2)

    def test_failed_change_leaves_previous_state(self) -> None:
        self.catalog.create(KEY, "a.txt")
        self.assertRaises(Conflict, self.catalog.create, KEY, "a.txt/b/c")
        self.assertFalse(self.catalog.exists(KEY, "a.txt/b"))

    def test_export_import_round_trip(self) -> None:
        self.upload(self.catalog, "docs/a.txt", "V1")
        self.catalog.begin_version(KEY, "b", "V2", 300, 100, 3, 3, 5, b"\x00\xff", SUPPLIERS)
        self.catalog.record_segment("V2", segment(0, stored=(0, 2)))
        data = self.catalog.export()
        other = Catalog(":memory:")
        self.addCleanup(other.close)
        other.create(KEY, "will-be-replaced")
        other.import_(data)
        self.assertEqual(other.list(), self.catalog.list())
        self.assertEqual(other.version("V2")["wrapped_key"], b"\x00\xff")
        self.assertEqual(other.segments("V2"), self.catalog.segments("V2"))
        self.assertEqual(other.missing_blocks(), self.catalog.missing_blocks())
        self.assertEqual(other.export(), data)

    def test_import_rejects_garbage_and_keeps_data(self) -> None:
        self.catalog.create(KEY, "keep.txt")
        for bad in (b"\xff", b"[]", b'{"format": 99}', b'{"format": 1, "items": [[1]]}'):
            self.assertRaises(BadRequest, self.catalog.import_, bad)
        self.assertTrue(self.catalog.exists(KEY, "keep.txt"))

    def test_other_format_is_refused(self) -> None:
        self.catalog._db.execute("UPDATE meta SET value = '99' WHERE name = 'format'")
        self.catalog.close()
        self.assertRaises(BadRequest, Catalog, self.path)


class SourceAndLookupTests(CatalogTestCase):
    def test_source_is_recorded_with_the_version_and_not_exported(self) -> None:
        self.catalog.begin_version(KEY, "a", "V1", 150, 100, 2, 3, 5, b"", SUPPLIERS, now=1,
                                   source=("/home/alice/a", 150, 1234.5))
        self.assertEqual(self.catalog.source("V1"), {"local_path": "/home/alice/a", "size": 150, "mtime": 1234.5})
        self.assertEqual(self.catalog.latest_source(KEY, "a")["local_path"], "/home/alice/a")
        self.assertIsNone(self.catalog.source("nope"))
        self.assertNotIn(b"/home/alice", self.catalog.export())
        other = Catalog(":memory:")
        self.addCleanup(other.close)
        other.import_(self.catalog.export())
        self.assertIsNone(other.source("V1"))

    def test_latest_complete_and_versions_under(self) -> None:
        self.upload(self.catalog, "docs/a", "V1", now=1)
        self.upload(self.catalog, "docs/a", "V2", now=5)
        self.catalog.begin_version(KEY, "docs/a", "V3", 1, 1, 1, 3, 5, b"", SUPPLIERS, now=9)
        self.upload(self.catalog, "docs/sub/b", "V4")
        self.assertEqual(self.catalog.latest_complete(KEY, "docs/a")["version_id"], "V2")
        self.assertEqual(self.catalog.version_ids_under(KEY, "docs"), ["V1", "V2", "V3", "V4"])
        self.assertEqual(self.catalog.version_ids_under(KEY, "docs/a"), ["V1", "V2", "V3"])
        self.catalog.create(KEY, "empty")
        self.assertRaises(NotFound, self.catalog.latest_complete, KEY, "empty")
        self.assertRaises(NotFound, self.catalog.version_ids_under, KEY, "nope")

    def test_drop_version_and_blocks(self) -> None:
        self.catalog.begin_version(KEY, "a", "V1", 100, 100, 1, 3, 5, b"", SUPPLIERS, source=("/x", 1, 2.0))
        self.catalog.record_segment("V1", segment(0, stored=(0, 1, 2, 3)))
        self.assertEqual(self.catalog.blocks("V1")[3:], [(0, 3, SHAS[3], SUPPLIERS[3]), (0, 4, SHAS[4], "")])
        self.catalog.drop_version("V1")
        self.assertRaises(NotFound, self.catalog.version, "V1")
        self.assertIsNone(self.catalog.source("V1"))
        self.assertRaises(NotFound, self.catalog.drop_version, "V1")
        self.assertRaises(NotFound, self.catalog.blocks, "V1")
        self.assertTrue(self.catalog.exists(KEY, "a"))

    def test_meta_and_emptiness(self) -> None:
        self.assertTrue(self.catalog.is_empty())
        self.assertEqual(self.catalog.get_meta("serial", "0"), "0")
        self.catalog.set_meta("serial", "7")
        self.assertEqual(self.catalog.get_meta("serial"), "7")
        self.assertRaises(BadRequest, self.catalog.set_meta, "format", "2")
        self.catalog.create(KEY, "a")
        self.assertFalse(self.catalog.is_empty())
        self.catalog.close()
        self.assertEqual(self.open().get_meta("serial"), "7")

    def test_a_catalog_from_before_the_sources_table_opens(self) -> None:
        self.upload(self.catalog, "a", "V1")
        self.catalog._db.execute("DROP TABLE sources")
        self.catalog.close()
        again = self.open()
        self.assertEqual(again.version("V1")["state"], COMPLETE)
        again.begin_version(KEY, "b", "V2", 1, 1, 1, 3, 5, b"", SUPPLIERS, source=("/b", 1, 1.0))
        self.assertEqual(again.source("V2")["local_path"], "/b")


class LongListTests(CatalogTestCase):
    """A folder or a prune may name more rows than sqlite allows variables in one statement."""

    def setUp(self) -> None:
        super().setUp()
        # sqlite's limit is 32766 (999 on old builds); a low one makes the same failure cheap to reach.
        self.catalog._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 20)

    def test_a_folder_with_more_files_than_the_variable_limit_is_listed_and_deleted(self) -> None:
        for i in range(30):
            self.catalog.begin_version(KEY, f"big/f{i:02d}", f"V{i:02d}", 1, 1, 1, 3, 5, b"", SUPPLIERS)
        expected = [f"V{i:02d}" for i in range(30)]
        self.assertEqual(self.catalog.version_ids_under(KEY, "big"), expected)
        self.assertEqual(sorted(self.catalog.delete(KEY, "big")), expected)
        self.assertFalse(self.catalog.exists(KEY, "big/f00"))
        self.assertEqual(self.catalog.versions(), [])

    def test_pruning_more_versions_than_the_variable_limit(self) -> None:
        for i in range(25):
            self.upload(self.catalog, "a", f"V{i:02d}", segments=1, now=float(i))
        dropped = self.catalog.prune_versions(KEY, "a", keep=1)
        self.assertEqual(len(dropped), 24)
        self.assertEqual([v["version_id"] for v in self.catalog.get(KEY, "a")["versions"]], ["V24"])


# The tables of catalog format 1 (before the metadata columns), as a node of that format created them.
FORMAT_1_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (item_id INTEGER PRIMARY KEY AUTOINCREMENT, key_id TEXT NOT NULL, path TEXT NOT NULL,
    is_folder INTEGER NOT NULL, created REAL NOT NULL, UNIQUE (key_id, path));
CREATE TABLE versions (version_id TEXT PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(item_id) ON DELETE CASCADE, state TEXT NOT NULL,
    size INTEGER NOT NULL, segment_size INTEGER NOT NULL, segments_total INTEGER NOT NULL, k INTEGER NOT NULL,
    n INTEGER NOT NULL, wrapped_key BLOB NOT NULL, suppliers TEXT NOT NULL, created REAL NOT NULL, completed REAL);
CREATE INDEX versions_by_item ON versions(item_id);
CREATE TABLE segments (version_id TEXT NOT NULL REFERENCES versions(version_id) ON DELETE CASCADE,
    seg_index INTEGER NOT NULL, plaintext_length INTEGER NOT NULL, PRIMARY KEY (version_id, seg_index));
CREATE TABLE blocks (version_id TEXT NOT NULL, seg_index INTEGER NOT NULL, position INTEGER NOT NULL,
    sha256 TEXT NOT NULL, supplier TEXT NOT NULL, PRIMARY KEY (version_id, seg_index, position),
    FOREIGN KEY (version_id, seg_index) REFERENCES segments(version_id, seg_index) ON DELETE CASCADE);
CREATE TABLE sources (version_id TEXT PRIMARY KEY REFERENCES versions(version_id) ON DELETE CASCADE,
    local_path TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL);
INSERT INTO meta VALUES ('format', '1'), ('catalog-backup-serial', '7');
INSERT INTO items (key_id, path, is_folder, created) VALUES
    ('master$alice@127.0.0.1_8084', 'docs', 1, 1.0), ('master$alice@127.0.0.1_8084', 'docs/a.txt', 0, 1.0);
INSERT INTO versions VALUES ('V1', 2, 'complete', 100, 100, 1, 3, 5, X'00ff', '["s1@h", "s2@h", "s3@h", "s4@h", "s5@h"]',
    1.0, 2.0);
INSERT INTO segments VALUES ('V1', 0, 100);
"""


class FormatOneFileTests(unittest.TestCase):
    def test_a_format_1_catalog_file_is_migrated_and_keeps_everything(self):
        path = os.path.join(self.mktemp())
        db = sqlite3.connect(path)
        db.executescript(FORMAT_1_SCHEMA)
        db.executemany("INSERT INTO blocks VALUES ('V1', 0, ?, ?, ?)", [(i, SHAS[i], SUPPLIERS[i]) for i in range(5)])
        db.commit()
        db.close()
        catalog = Catalog(path)
        self.addCleanup(catalog.close)
        self.assertEqual(catalog.get_meta("format"), "4")
        self.assertEqual(catalog.get_meta("catalog-backup-serial"), "7")
        version = catalog.latest_complete(KEY, "docs/a.txt")
        self.assertEqual((version["size"], version["wrapped_key"], version["mode"], version["mtime_ns"]),
                         (100, b"\x00\xff", None, None))
        self.assertEqual(catalog.get(KEY, "docs")["mode"], None)
        self.assertEqual(len(catalog.segments("V1")[0].stored), 5)
        catalog.begin_version(KEY, "docs/a.txt", "V2", 1, 1, 1, 3, 5, b"", SUPPLIERS, now=3.0, mode=0o640,
                              mtime_ns=10)
        self.assertEqual(catalog.version("V2")["mode"], 0o640)
        other = Catalog(":memory:")
        self.addCleanup(other.close)
        other.import_(catalog.export())
        self.assertEqual(other.segments("V1"), catalog.segments("V1"))


class UnreadableFileTests(CatalogTestCase):
    def test_a_damaged_file_is_set_aside_and_a_new_catalog_opened(self):
        for i in range(200):
            self.catalog.create(KEY, f"folder/file-{i:03d}-" + "x" * 100)
        self.catalog.close()
        for suffix in ("-wal", "-shm"):
            self.assertFalse(os.path.exists(self.path + suffix))
        size = os.path.getsize(self.path)
        with open(self.path, "r+b") as handle:  # a page in the middle overwritten
            handle.seek(size // 2)
            handle.write(os.urandom(4096))
        self.assertRaises(CatalogUnreadable, Catalog, self.path)
        catalog, problem = open_catalog(self.path, 1_700_000_000.0)
        self.addCleanup(catalog.close)
        self.assertTrue(catalog.is_empty())
        self.assertEqual(problem["moved_to"], self.path + ".unreadable-20231114T221320Z")
        self.assertEqual(os.path.getsize(problem["moved_to"]), size)
        self.assertIn("damaged", problem["error"])

    def test_a_sound_catalog_and_a_newer_format_are_not_moved(self):
        self.catalog.create(KEY, "a")
        self.catalog.close()
        catalog, problem = open_catalog(self.path, 0.0)
        self.assertIsNone(problem)
        self.assertTrue(catalog.exists(KEY, "a"))
        catalog._db.execute("UPDATE meta SET value = '99' WHERE name = 'format'")
        catalog.close()
        self.assertRaises(BadRequest, open_catalog, self.path, 0.0)
        self.assertEqual(os.listdir(self.dir), ["catalog.sqlite"])


def query_plan(catalog: Catalog, sql: str, args: tuple) -> list[str]:
    """sqlite's plan for ``sql``: one line per step ("SEARCH i USING INDEX ...", "SCAN ...")."""
    return [row["detail"] for row in catalog._db.execute("EXPLAIN QUERY PLAN " + sql, args)]


class ListingTests(CatalogTestCase):
    """Listings read a folder's own rows through an index, whatever else the catalog holds."""

    def setUp(self) -> None:
        super().setUp()
        for path in ("a/x", "a/y/z", "a/y/w/v", "a0", "a.b/c", "a-b", "b", "ab/c"):
            self.catalog.create(KEY, path)
        self.catalog.create(SHARE, "a/s")

    def paths(self, key_id, path, recursive) -> list[str]:
        return [row["remote_path"] for row in self.catalog.list(key_id, path, recursive)]

    def test_a_folder_lists_its_own_entries_or_everything_under_it(self) -> None:
        self.assertEqual(self.paths(KEY, "a", False), [f"{KEY}:a/x", f"{KEY}:a/y"])
        self.assertEqual(self.paths(KEY, "a", True), [f"{KEY}:{p}" for p in ("a/x", "a/y", "a/y/w", "a/y/w/v", "a/y/z")])
        self.assertEqual(self.paths(KEY, "a/y", False), [f"{KEY}:a/y/w", f"{KEY}:a/y/z"])
        self.assertEqual(self.paths(KEY, "", False), [f"{KEY}:{p}" for p in ("a", "a-b", "a.b", "a0", "ab", "b")])
        self.assertEqual(self.paths(None, "a", False), [f"{KEY}:a/x", f"{KEY}:a/y", f"{SHARE}:a/s"])
        self.assertEqual(self.paths(KEY, "a/x", True), [])

    def test_rows_carry_the_newest_complete_version(self) -> None:
        self.upload(self.catalog, "a/x", "V1", now=1.0)
        self.upload(self.catalog, "a/x", "V2", now=5.0)
        self.catalog.begin_version(KEY, "a/x", "V3", 100, 100, 1, 3, 5, b"w", SUPPLIERS, now=9.0)  # still uploading
        row = next(r for r in self.catalog.list(KEY, "a", False) if r["path"] == "a/x")
        self.assertEqual((row["latest_version"], row["size"], row["type"]), ("V2", 200, "file"))
        self.assertEqual(self.catalog.list_item(KEY, "a/x"), row)
        folder = self.catalog.list_item(KEY, "a")
        self.assertEqual((folder["type"], folder["size"], folder["latest_version"]), ("folder", 0, None))
        self.assertRaises(NotFound, self.catalog.list_item, KEY, "a/nothing")

    def test_listing_queries_search_an_index_and_never_scan_the_items(self) -> None:
        from bitnode.storage.catalog import _LISTING
        from bitnode.storage.catalog_file import PARENT_OF_PATH

        own = query_plan(self.catalog, _LISTING + f" WHERE i.key_id = ? AND {PARENT_OF_PATH} = ?"
                         " ORDER BY i.key_id, i.path", (KEY, "a/"))
        under = query_plan(self.catalog, _LISTING + " WHERE i.key_id = ? AND i.path >= ? AND i.path < ?"
                           " ORDER BY i.key_id, i.path", (KEY, "a/", "a0"))
        self.assertIn("SEARCH i USING INDEX items_by_parent (key_id=? AND <expr>=?)", own)
        self.assertIn("SEARCH i USING INDEX sqlite_autoindex_items_1 (key_id=? AND path>? AND path<?)", under)
        for plan in (own, under):
            self.assertIn("SEARCH versions USING INDEX versions_latest (item_id=? AND state=?)", plan)
            self.assertFalse([step for step in plan if step.startswith("SCAN") or "TEMP B-TREE" in step], plan)

    def test_an_old_catalog_file_gets_the_listing_indexes_when_opened(self) -> None:
        self.catalog._db.execute("DROP INDEX items_by_parent")
        self.catalog._db.execute("DROP INDEX versions_latest")
        self.catalog.close()
        reopened = self.open()
        names = {row[0] for row in reopened._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        self.assertLessEqual({"items_by_parent", "versions_latest"}, names)
        self.assertEqual([r["path"] for r in reopened.list(KEY, "a", False)], ["a/x", "a/y"])
        self.assertEqual(reopened.get_meta("format"), "4")  # packs (format 4) changed it; the indexes did not


class ListingPropertyTests(unittest.TestCase):
    """Whatever the tree, a listing is exactly what filtering every row by its path says."""

    @given(st.lists(st.lists(st.sampled_from(["a", "b", "a0", "a.b", "a-b", "ab", "z"]), min_size=1, max_size=4),
                    max_size=25),
           st.lists(st.sampled_from(["a", "b", "a0", "a.b", "ab"]), max_size=3), st.booleans())
    @settings(max_examples=150, deadline=None)
    def test_listing_matches_a_plain_filter(self, trees, folder_parts, recursive) -> None:
        catalog = Catalog(":memory:")
        try:
            for parts in trees:
                try:
                    catalog.create(KEY, "/".join(parts), exist_ok=True)
                except Conflict:
                    pass  # a file where this path wants a folder: the tree keeps the file
            folder = "/".join(folder_parts)
            everything = [row["path"] for row in catalog.list(KEY, "", True)]
            prefix = folder + "/" if folder else ""
            wanted = [p for p in everything if p.startswith(prefix)
                      and (recursive or "/" not in p[len(prefix):])]
            self.assertEqual([row["path"] for row in catalog.list(KEY, folder, recursive)], wanted)
        finally:
            catalog.close()


class BulkAndStreamTests(CatalogTestCase):
    def test_rows_added_in_bulk_read_back_and_a_repeat_changes_nothing(self) -> None:
        self.upload(self.catalog, "docs/a", "V1")
        self.upload(self.catalog, "docs/b", "V2")
        rows = parse_export(self.catalog.export())
        other = self.open_other()
        other.add_rows(rows)
        self.assertEqual(other.export(), self.catalog.export())
        self.assertRaises(Conflict, other.add_rows, rows)
        self.assertEqual(other.export(), self.catalog.export())

    def open_other(self) -> Catalog:
        other = Catalog(os.path.join(self.dir, "other.sqlite"))
        self.addCleanup(other.close)
        return other

    def test_streamed_export_is_the_same_bytes_in_bounded_pieces(self) -> None:
        self.patch(catalog_format, "EXPORT_CHUNK_ROWS", 3)
        for i in range(10):
            self.upload(self.catalog, f"d/f{i}", f"V{i}", segments=2)
        self.catalog.create_link(KEY, "d/link", "../x")
        chunks = list(self.catalog.export_chunks())
        self.assertEqual(b"".join(chunks), self.catalog.export())
        self.assertEqual(json.loads(b"".join(chunks))["format"], catalog_format.EXPORT_FORMAT)
        self.assertLess(max(len(c) for c in chunks), 2000)  # 3 rows at most per piece
        empty = Catalog(":memory:")
        self.addCleanup(empty.close)
        self.assertEqual(b"".join(empty.export_chunks()), empty.export())

    def test_a_streamed_export_is_one_snapshot_and_does_not_hold_up_writers(self) -> None:
        self.patch(catalog_format, "EXPORT_CHUNK_ROWS", 1)
        self.upload(self.catalog, "d/one", "V1")
        before = self.catalog.export()
        chunks = self.catalog.export_chunks()
        first = next(chunks)  # the snapshot is taken
        self.catalog.create(KEY, "d/two")  # would wait for the lock if the export held it
        self.upload(self.catalog, "d/three", "V3")
        self.assertEqual(first + b"".join(chunks), before)
        self.assertIn(b"d/two", self.catalog.export())
