"""Tests for bitnode.storage.catalog_format: fixed export vectors, hostile rows, and property tests of the reader.

Whatever bytes arrive as a catalog backup or a share's index, :func:`parse_export`
(and so :meth:`Catalog.import_`) raises only BadRequest, and whatever it
accepts reads back without an exception.
"""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.storage.catalog import Catalog
from bitnode.storage.catalog_format import EXPORT_FORMAT, parse_export
from bitnode.storage.ports import SegmentMeta

KEY = "master$alice@id.example.net_8084"
V1 = "F20250101T000000000-0a1b2c3d"
SHA_A, SHA_B = "aa" * 32, "bb" * 32
# What a node of export format 1 wrote (no metadata, no links): it must stay importable.
FORMAT_1_VECTOR = json.dumps({
    "format": 1,
    "items": [[KEY, "docs", 1, 1.0], [KEY, "docs/a.txt", 0, 1.0]],
    "versions": [[V1, KEY, "docs/a.txt", "complete", 5, 4194304, 1, 1, 2, "d3JhcHBlZA==",
                  '["s0@id.example.net_8084", "s1@id.example.net_8084"]', 1.0, 2.0]],
    "segments": [[V1, 0, 5]],
    "blocks": [[V1, 0, 0, SHA_A, "s0@id.example.net_8084"], [V1, 0, 1, SHA_B, ""]],
}).encode()

PROPERTY = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def sample_catalog() -> Catalog:
    """A catalog with folders (one with metadata), a link, files with complete, uploading and failed versions."""
    catalog = Catalog(":memory:")
    catalog.create(KEY, "docs", as_folder=True, mode=0o755, mtime_ns=1_600_000_000_000_000_000)
    catalog.create(KEY, "docs/empty", as_folder=True)
    catalog.create_link(KEY, "docs/link", "../outside/target", mtime_ns=5)
    suppliers = ["s0@h_1", "s1@h_1", ""]
    catalog.begin_version(KEY, "docs/a.txt", "V1", 250, 100, 3, 2, 3, b"wrapped", suppliers, now=1.0,
                          mode=0o644, mtime_ns=1_700_000_000_123_456_789)
    for index, length in enumerate((100, 100, 50)):
        catalog.record_segment("V1", SegmentMeta(index, length, (SHA_A, SHA_B, "cc" * 32), (0, 1)))
    catalog.finish_version("V1", now=2.0)
    catalog.begin_version(KEY, "b.bin", "V2", 0, 100, 1, 1, 1, b"w2", ["s0@h_1"], now=3.0)
    catalog.begin_version(KEY, "c.bin", "V3", 10, 100, 1, 1, 1, b"w3", ["s0@h_1"], now=4.0)
    catalog.finish_version("V3", state="failed", now=5.0)
    return catalog


def read_everything(case: unittest.TestCase, catalog: Catalog) -> None:
    """What listing, file_info and a download read; none of it may raise on an imported catalog."""
    for item in catalog.list():
        got = catalog.get(item["key_id"], item["path"])
        for version in got["versions"]:
            n = version["n"]
            case.assertEqual(len(version["suppliers"]), n)
            case.assertTrue(1 <= version["k"] <= n)
            for seg, pos, _sha, _holder in catalog.blocks(version["version_id"]):
                case.assertTrue(0 <= pos < n and 0 <= seg < version["segments_total"])
            for meta in catalog.segments(version["version_id"]):
                case.assertEqual(len(meta.block_sha256), n)
    catalog.missing_blocks()
    again = Catalog(":memory:")
    try:
        again.import_(catalog.export())  # what was accepted exports and imports again
    finally:
        again.close()


class VectorTests(unittest.TestCase):
    def test_a_format_1_export_still_imports(self):
        catalog = Catalog(":memory:")
        self.addCleanup(catalog.close)
        catalog.import_(FORMAT_1_VECTOR)
        item = catalog.get(KEY, "docs/a.txt")
        self.assertEqual((item["type"], item["mode"], item["mtime_ns"], item["link_target"]), ("file", None, None, None))
        version = catalog.latest_complete(KEY, "docs/a.txt")
        self.assertEqual((version["size"], version["k"], version["n"], version["wrapped_key"]), (5, 1, 2, b"wrapped"))
        self.assertEqual((version["mode"], version["mtime_ns"]), (None, None))
        self.assertEqual(catalog.segments(V1), (SegmentMeta(0, 5, (SHA_A, SHA_B), (0,)),))
        self.assertEqual(json.loads(catalog.export())["format"], EXPORT_FORMAT)

    def test_format_2_keeps_metadata_links_and_empty_folders(self):
        catalog = sample_catalog()
        self.addCleanup(catalog.close)
        doc = json.loads(catalog.export())
        self.assertEqual(doc["format"], 2)
        self.assertIn([KEY, "docs/link", 0, 0.0, None, 5, "../outside/target"], doc["items"])
        other = Catalog(":memory:")
        self.addCleanup(other.close)
        other.import_(catalog.export())
        self.assertEqual(other.export(), catalog.export())
        self.assertEqual(other.get(KEY, "docs")["mode"], 0o755)
        self.assertEqual(other.get(KEY, "docs/empty")["type"], "folder")
        self.assertEqual(other.get(KEY, "docs/link")["type"], "link")
        version = other.latest_complete(KEY, "docs/a.txt")
        self.assertEqual((version["mode"], version["mtime_ns"]), (0o644, 1_700_000_000_123_456_789))

    def test_missing_parent_folders_are_added(self):
        doc = json.loads(FORMAT_1_VECTOR)
        doc["items"] = doc["items"][1:]
        rows = parse_export(doc)
        self.assertEqual([r[1] for r in rows.items], ["docs/a.txt", "docs"])


class HostileRowTests(unittest.TestCase):
    """Each row a malicious share owner could send to crash a reader is refused, and nothing is imported."""

    def setUp(self):
        self.catalog = sample_catalog()
        self.addCleanup(self.catalog.close)
        self.doc = json.loads(self.catalog.export())

    def refused(self, change) -> str:
        doc = copy.deepcopy(self.doc)
        change(doc)
        target = Catalog(":memory:")
        self.addCleanup(target.close)
        target.create(KEY, "keep.txt")
        err = self.assertRaises(BadRequest, target.import_, json.dumps(doc).encode())
        self.assertTrue(target.exists(KEY, "keep.txt"))
        return str(err)

    def version_row(self, doc, version_id="V1"):
        return next(row for row in doc["versions"] if row[0] == version_id)

    def test_paths_that_climb_out_or_are_absolute(self):
        for bad in ("../../.bashrc", "/etc/passwd", "a//b", "a/./b", "", "a\\b", "x\x00"):
            self.refused(lambda doc, bad=bad: doc["items"].append([KEY, bad, 0, 1.0, None, None, None]))

    def test_bad_key_ids_and_version_ids(self):
        self.refused(lambda doc: doc["items"].append(["no key", "x", 0, 1.0, None, None, None]))
        self.refused(lambda doc: self.version_row(doc).__setitem__(0, "../V1"))

    def test_impossible_k_and_n(self):
        for k, n in ((0, 3), (4, 3), (2, 300), (True, 3)):
            def change(doc, k=k, n=n):
                row = self.version_row(doc)
                row[7], row[8] = k, n
            self.refused(change)

    def test_block_positions_out_of_range_or_twice(self):
        self.refused(lambda doc: doc["blocks"][0].__setitem__(2, 7))
        self.refused(lambda doc: doc["blocks"][1].__setitem__(2, 0))
        self.refused(lambda doc: doc["blocks"].pop(0))

    def test_segments_out_of_range_or_of_the_wrong_length(self):
        self.refused(lambda doc: doc["segments"][0].__setitem__(1, 9))
        self.refused(lambda doc: doc["segments"][0].__setitem__(2, 99))
        self.refused(lambda doc: doc["segments"].pop(0))  # a complete version missing a segment

    def test_supplier_lists_hashes_and_keys(self):
        self.refused(lambda doc: self.version_row(doc).__setitem__(10, '["only one"]'))
        self.refused(lambda doc: self.version_row(doc).__setitem__(10, "not json"))
        self.refused(lambda doc: doc["blocks"][0].__setitem__(3, "h0"))
        self.refused(lambda doc: self.version_row(doc).__setitem__(9, "!!not base64"))

    def test_links_folders_and_files_do_not_mix(self):
        self.refused(lambda doc: doc["items"].append([KEY, "docs/link/inside", 0, 1.0, None, None, None]))
        self.refused(lambda doc: doc["items"].append([KEY, "docs/a.txt/inside", 1, 1.0, None, None, None]))
        self.refused(lambda doc: doc["items"].append([KEY, "f", 1, 1.0, None, None, "target"]))
        self.refused(lambda doc: doc["items"].append([KEY, "docs/link", 0, 1.0, None, None, "again"]))

    def test_metadata_out_of_range(self):
        self.refused(lambda doc: doc["items"][0].__setitem__(4, 0o70000))
        self.refused(lambda doc: doc["items"][0].__setitem__(5, 2**70))
        self.refused(lambda doc: self.version_row(doc).__setitem__(13, -1))

    def test_unknown_format_or_shape(self):
        for bad in (b"\xff", b"[]", b"null", b'{"format": 3}', b'{"format": 2, "items": {}}', b"[" * 100000):
            self.assertRaises(BadRequest, parse_export, bad)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


def mutate(doc: dict, data: st.DataObject) -> dict:
    """One to three random edits of a valid export: a field replaced, a row dropped, cut or duplicated."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        table = data.draw(st.sampled_from(["items", "versions", "segments", "blocks", "format"]), label="table")
        if table == "format":
            doc["format"] = data.draw(_JSON, label="format")
            continue
        rows = doc[table]
        if not rows:
            continue
        index = data.draw(st.integers(0, len(rows) - 1), label="row")
        action = data.draw(st.sampled_from(["field", "drop", "cut", "copy", "swap"]), label="action")
        row = rows[index]
        if not isinstance(row, list) or not row:
            continue
        if action == "field":
            row[data.draw(st.integers(0, len(row) - 1), label="field")] = data.draw(_JSON, label="value")
        elif action == "drop":
            rows.pop(index)
        elif action == "cut":
            rows[index] = row[: data.draw(st.integers(0, len(row)), label="cut")]
        elif action == "copy":
            rows.append(copy.deepcopy(row))
        else:
            other = data.draw(st.integers(0, len(rows) - 1), label="other")
            field = data.draw(st.integers(0, len(row) - 1), label="field")
            if isinstance(rows[other], list) and field < len(rows[other]):
                row[field], rows[other][field] = rows[other][field], row[field]
    return doc


class PropertyTests(unittest.TestCase):
    """Random and mutated documents: BadRequest or a catalog that reads back; never another exception."""

    def setUp(self):
        catalog = sample_catalog()
        self.valid = json.loads(catalog.export())
        catalog.close()

    def import_checked(self, data) -> None:
        catalog = Catalog(":memory:")
        try:
            try:
                catalog.import_(data)
            except BadRequest:
                self.assertTrue(catalog.is_empty())
                return
            read_everything(self, catalog)
        finally:
            catalog.close()

    @PROPERTY
    @given(st.binary(max_size=512))
    def test_random_bytes(self, data):
        self.import_checked(data)

    @PROPERTY
    @given(st.fixed_dictionaries({"format": st.sampled_from([1, 2]), "items": _JSON, "versions": _JSON,
                                  "segments": _JSON, "blocks": _JSON}))
    def test_random_documents(self, doc):
        self.import_checked(json.dumps(doc).encode())

    @PROPERTY
    @given(st.data())
    def test_mutated_valid_exports(self, data):
        self.import_checked(json.dumps(mutate(self.valid, data)).encode())

    @PROPERTY
    @given(st.data())
    def test_mutated_bytes_of_a_valid_export(self, data):
        raw = bytearray(json.dumps(self.valid).encode())
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        self.import_checked(bytes(raw))
