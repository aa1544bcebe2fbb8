"""Tests for bitnode.access.share_index: the catalog rows of a share, sealed by the owner, opened by a reader."""

from __future__ import annotations

import json
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.access import share_index
from bitnode.crypt import aes, keys
from bitnode.errors import BadRequest
from bitnode.storage.catalog import Catalog
from bitnode.storage.ports import SegmentMeta
from tests.storage.test_catalog_format import _JSON, mutate

OWNER = "alice@id.example.net_8084"
SHARE = f"share_0123456789abcdef0123456789abcdef${OWNER}"
MASTER = f"master${OWNER}"
TAG = "share_0123456789abcdef0123456789abcdef."


def fill(catalog: Catalog) -> None:
    """Two files under the share (one complete, one still uploading) and one under the master key."""
    for key_id, path, version_id in ((SHARE, "docs/a.txt", TAG + "F1-aa"), (SHARE, "docs/b.txt", TAG + "F2-bb"),
                                     (MASTER, "private.txt", "F3-cc")):
        catalog.begin_version(key_id, path, version_id, 10, 64, 1, 1, 2, b"wrapped-" + path.encode(), ["s0", "s1"])
        catalog.record_segment(version_id, SegmentMeta(0, 10, ("a0" * 32, "b1" * 32), (0, 1)))
        if path != "docs/b.txt":
            catalog.finish_version(version_id)


_KEYS: dict[str, keys.RsaPrivateKey] = {}


def key(name: str) -> keys.RsaPrivateKey:
    """A 2048-bit key made once per test run (generating one costs more than a test)."""
    if name not in _KEYS:
        _KEYS[name] = keys.generate_rsa(2048)
    return _KEYS[name]


class IndexTests(unittest.TestCase):
    def setUp(self):
        self.master, self.share = key("master"), key("share")
        self.catalog = Catalog(":memory:")
        self.addCleanup(self.catalog.close)
        fill(self.catalog)

    def test_the_subset_holds_the_share_folders_and_complete_files_only(self):
        subset = share_index.share_subset(self.catalog.export(), SHARE)
        self.assertEqual(sorted(row[1] for row in subset["items"]), ["docs", "docs/a.txt"])  # b.txt is uploading
        self.assertEqual([row[0] for row in subset["versions"]], [TAG + "F1-aa"])
        self.assertEqual({row[0] for row in subset["segments"] + subset["blocks"]}, {TAG + "F1-aa"})
        self.assertEqual(share_index.subset_digest(subset), share_index.subset_digest(json.loads(json.dumps(subset))))
        self.assertRaises(BadRequest, share_index.share_subset, b"not json", SHARE)

    def test_sealed_index_opens_for_a_reader_and_imports_into_a_catalog(self):
        subset = share_index.share_subset(self.catalog.export(), SHARE)
        stored = share_index.seal_index(self.master, self.share.public_key(), OWNER, SHARE, 4, 100.0, subset)
        self.assertNotIn(b"docs/a.txt", stored)  # suppliers see nothing of the files
        signed = share_index.verify_index(self.master.public_key(), stored, OWNER, SHARE)
        self.assertEqual(signed.serial, 4)
        opened = share_index.open_index(self.share, signed)
        self.assertEqual((opened["serial"], opened["created"]), (4, 100.0))
        view = Catalog(":memory:")
        self.addCleanup(view.close)
        view.import_(json.dumps(opened["catalog"]).encode())
        self.assertEqual(view.latest_complete(SHARE, "docs/a.txt")["wrapped_key"], b"wrapped-docs/a.txt")
        self.assertFalse(view.exists(MASTER, "private.txt"))

    def test_a_forged_altered_or_misdirected_index_is_refused(self):
        subset = share_index.share_subset(self.catalog.export(), SHARE)
        stored = share_index.seal_index(self.master, self.share.public_key(), OWNER, SHARE, 1, 1.0, subset)
        someone = key("someone")
        forged = share_index.seal_index(someone, self.share.public_key(), OWNER, SHARE, 9, 1.0, subset)
        self.assertRaises(BadRequest, share_index.verify_index, self.master.public_key(), forged, OWNER, SHARE)
        outer = json.loads(stored)
        outer["signed"] = outer["signed"].replace('"serial":1', '"serial":2')
        self.assertRaises(BadRequest, share_index.verify_index, self.master.public_key(),
                          json.dumps(outer).encode(), OWNER, SHARE)
        other_share = f"share_ffffffffffffffffffffffffffffffff${OWNER}"
        self.assertRaises(BadRequest, share_index.verify_index, self.master.public_key(), stored, OWNER, other_share)
        for garbage in (b"", b"{}", b"[1]", b"\xff"):
            self.assertRaises(BadRequest, share_index.verify_index, self.master.public_key(), garbage, OWNER, SHARE)
        # a holder of another key cannot open it
        signed = share_index.verify_index(self.master.public_key(), stored, OWNER, SHARE)
        self.assertRaises(BadRequest, share_index.open_index, someone, signed)

    def test_an_index_listing_other_keys_is_refused_by_the_reader(self):
        export = json.loads(self.catalog.export())
        stored = share_index.seal_index(self.master, self.share.public_key(), OWNER, SHARE, 1, 1.0, export)
        signed = share_index.verify_index(self.master.public_key(), stored, OWNER, SHARE)
        self.assertIn("other than", str(self.assertRaises(BadRequest, share_index.open_index, self.share, signed)))

    def test_an_index_whose_rows_would_crash_a_reader_is_refused(self):
        subset = share_index.share_subset(self.catalog.export(), SHARE)
        subset["blocks"][0][2] = 9  # a block position beyond n
        stored = share_index.seal_index(self.master, self.share.public_key(), OWNER, SHARE, 1, 1.0, subset)
        signed = share_index.verify_index(self.master.public_key(), stored, OWNER, SHARE)
        self.assertIn("malformed", str(self.assertRaises(BadRequest, share_index.open_index, self.share, signed)))

    def test_links_are_in_the_subset(self):
        self.catalog.create_link(SHARE, "docs/link", "a.txt")
        subset = share_index.share_subset(self.catalog.export(), SHARE)
        self.assertIn("docs/link", [row[1] for row in subset["items"]])


PROPERTY = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class IndexPropertyTests(unittest.TestCase):
    """Random and mutated indexes raise only BadRequest in the reader's parsers (verify_index, open_index)."""

    def setUp(self):
        self.master, self.share = key("master"), key("share")
        catalog = Catalog(":memory:")
        self.addCleanup(catalog.close)
        fill(catalog)
        self.subset = share_index.share_subset(catalog.export(), SHARE)
        self.stored = share_index.seal_index(self.master, self.share.public_key(), OWNER, SHARE, 3, 1.0, self.subset)

    def verify(self, data: bytes):
        try:
            return share_index.verify_index(self.master.public_key(), data, OWNER, SHARE)
        except BadRequest:
            return None

    def open(self, signed):
        try:
            opened = share_index.open_index(self.share, signed)
        except BadRequest:
            return
        view = Catalog(":memory:")
        try:
            view.import_(json.dumps(opened["catalog"]).encode())  # what open_index accepts, a reader imports
        finally:
            view.close()

    @PROPERTY
    @given(st.binary(max_size=600))
    def test_random_stored_bytes(self, data):
        self.verify(data)

    @PROPERTY
    @given(st.data())
    def test_mutated_stored_index(self, data):
        raw = bytearray(self.stored)
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        signed = self.verify(bytes(raw[:cut] if data.draw(st.booleans()) else raw))
        if signed is not None:
            self.open(signed)

    @PROPERTY
    @given(st.binary(max_size=600), st.integers(min_value=1, max_value=2**40))
    def test_random_bodies(self, body, serial):
        self.open(share_index.SignedIndex(OWNER, SHARE, serial, body))

    @PROPERTY
    @given(st.data())
    def test_sealed_bodies_of_random_or_mutated_catalogs(self, data):
        if data.draw(st.booleans()):
            catalog = data.draw(_JSON)
        else:
            catalog = mutate(self.subset, data)
        inner = {"format": 1, "owner": OWNER, "key_id": SHARE, "serial": 5, "created": 1.0, "catalog": catalog}
        if data.draw(st.booleans()):
            inner[data.draw(st.sampled_from(sorted(inner)))] = data.draw(_JSON)
        raw = zlib.compress(json.dumps(inner).encode())
        body = aes.hybrid_encrypt(self.share.public_key(), raw, aad=share_index._aad(OWNER, SHARE, 5))
        self.open(share_index.SignedIndex(OWNER, SHARE, 5, body))
