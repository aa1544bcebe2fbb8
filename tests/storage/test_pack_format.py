"""Tests for bitnode.storage.pack_format: the pack index, its fixed bytes, and its parser on hostile input."""

from __future__ import annotations

import hashlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.storage import pack_format
from bitnode.storage.pack_format import PackEntry, PackFormatError, PackSource

# Format 1 of a pack holding "a" (b"hi") then "d/b" (b""), its index and trailer: these bytes must stay readable.
VECTOR_DATA = b"hi"
VECTOR_INDEX = bytes.fromhex(
    "424e504901" "00000002"
    "0000000000000000" "0000000000000002") + hashlib.sha256(b"hi").digest() + bytes.fromhex("0001") + b"a" + \
    bytes.fromhex("0000000000000002" "0000000000000000") + hashlib.sha256(b"").digest() + bytes.fromhex("0003") + b"d/b"
VECTOR_TRAILER = len(VECTOR_INDEX).to_bytes(4, "big") + b"\x01BNPK"
VECTOR_ENTRIES = (PackEntry("a", 0, 2, hashlib.sha256(b"hi").digest()),
                  PackEntry("d/b", 2, 0, hashlib.sha256(b"").digest()))


def entries_for(files: list[tuple[str, bytes]]) -> list[PackEntry]:
    out, offset = [], 0
    for path, data in files:
        out.append(PackEntry(path, offset, len(data), hashlib.sha256(data).digest()))
        offset += len(data)
    return out


names = st.text(alphabet="abcxyz/._-é", min_size=1, max_size=20).filter(
    lambda p: not p.startswith("/") and all(part not in ("", ".", "..") for part in p.split("/")))


class VectorTests(unittest.TestCase):
    def test_format_1_bytes_read_back_as_they_were_written(self):
        self.assertEqual(pack_format.encode_index(VECTOR_ENTRIES), VECTOR_INDEX + VECTOR_TRAILER)
        self.assertEqual(pack_format.parse_trailer(VECTOR_TRAILER), len(VECTOR_INDEX))
        self.assertEqual(pack_format.parse_index(VECTOR_INDEX, len(VECTOR_DATA)), VECTOR_ENTRIES)

    def test_a_written_pack_reads_back_with_each_file_checked(self):
        folder = self.mktemp()
        os.makedirs(folder)
        sources = []
        for i, data in enumerate((b"one", b"", os.urandom(5000))):
            path = os.path.join(folder, f"f{i}")
            with open(path, "wb") as handle:
                handle.write(data)
            os.chmod(path, 0o640)
            sources.append((PackSource(f"sub/f{i}", path), data))
        sources.append((PackSource("gone", os.path.join(folder, "nothing-here")), None))
        dest = os.path.join(folder, "pack")
        built = pack_format.write_pack(dest, [s for s, _ in sources])
        self.assertEqual(len(built.files), 3)
        self.assertEqual([s["local_path"] for s in built.skipped], [os.path.join(folder, "nothing-here")])
        self.assertEqual(built.size, os.path.getsize(dest))
        self.assertEqual(built.files[0].mode, 0o640)
        entries = pack_format.read_index(dest)
        self.assertEqual(entries, tuple(f.entry for f in built.files))
        got = {e.path: data for e, data in pack_format.iter_members(dest, entries)}
        self.assertEqual(got, {f"sub/f{i}": data for i, (_, data) in enumerate(sources[:3])})

    def test_a_member_whose_bytes_changed_is_refused(self):
        folder = self.mktemp()
        os.makedirs(folder)
        src = os.path.join(folder, "f")
        with open(src, "wb") as handle:
            handle.write(b"abcdef")
        dest = os.path.join(folder, "pack")
        pack_format.write_pack(dest, [PackSource("f", src)])
        with open(dest, "r+b") as handle:
            handle.write(b"X")
        entries = pack_format.read_index(dest)
        self.assertRaises(PackFormatError, list, pack_format.iter_members(dest, entries))

    def test_what_is_not_an_index_is_refused(self):
        for bad in (b"", b"BNPI", b"XXXX\x01\x00\x00\x00\x00", b"BNPI\x02\x00\x00\x00\x00",
                    b"BNPI\x01\xff\xff\xff\xff", VECTOR_INDEX + b"\x00", VECTOR_INDEX[:-1]):
            self.assertRaises(PackFormatError, pack_format.parse_index, bad)
        # The files must fill the pack up to its index exactly.
        self.assertRaises(PackFormatError, pack_format.parse_index, VECTOR_INDEX, 3)
        for bad in (b"", b"\x00" * 9, VECTOR_TRAILER[:-1] + b"X", VECTOR_TRAILER[:4] + b"\x02BNPK",
                    b"\xff\xff\xff\xff\x01BNPK"):
            self.assertRaises(PackFormatError, pack_format.parse_trailer, bad)

    def test_overlapping_duplicate_or_unsafe_entries_are_refused(self):
        digest = hashlib.sha256(b"").digest()
        for entries in ([PackEntry("a", 1, 0, digest)], [PackEntry("a", 0, 0, digest), PackEntry("a", 0, 0, digest)],
                        [PackEntry("../x", 0, 0, digest)], [PackEntry("", 0, 0, digest)],
                        [PackEntry("a", 0, 0, b"short")]):
            self.assertRaises(PackFormatError, pack_format.encode_index, entries)


class PropertyTests(unittest.TestCase):
    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(st.binary(max_size=400))
    def test_random_bytes_give_entries_or_a_pack_format_error(self, data):
        for parse in (pack_format.parse_index, lambda b: pack_format.parse_trailer(b[:pack_format.TRAILER_SIZE])):
            try:
                parse(data)
            except PackFormatError:
                pass

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(st.lists(st.tuples(names, st.binary(max_size=30)), max_size=6, unique_by=lambda f: f[0]))
    def test_any_index_reads_back(self, files):
        entries = entries_for(files)
        blob = pack_format.encode_index(entries)
        length = pack_format.parse_trailer(blob[-pack_format.TRAILER_SIZE:])
        data_end = sum(len(d) for _, d in files)
        self.assertEqual(pack_format.parse_index(blob[:length], data_end), tuple(entries))

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(st.lists(st.tuples(names, st.binary(max_size=30)), min_size=1, max_size=4, unique_by=lambda f: f[0]),
           st.data())
    def test_a_mutated_index_gives_sound_entries_or_a_pack_format_error(self, files, data):
        entries = entries_for(files)
        blob = bytearray(pack_format.encode_index(entries))
        index = blob[:-pack_format.TRAILER_SIZE]
        for _ in range(data.draw(st.integers(1, 4))):
            kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
            at = data.draw(st.integers(0, max(0, len(index) - 1)))
            if kind == "flip" and index:
                index[at] ^= data.draw(st.integers(1, 255))
            elif kind == "cut":
                del index[at:at + data.draw(st.integers(1, 8))]
            else:
                index[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        data_end = sum(len(d) for _, d in files)
        try:
            parsed = pack_format.parse_index(bytes(index), data_end)
        except PackFormatError:
            return
        # Whatever is accepted is a sound index: back to back from 0 up to the data's end, safe distinct paths.
        offset = 0
        for entry in parsed:
            self.assertEqual(entry.offset, offset)
            offset += entry.length
        self.assertEqual(offset, data_end)
        self.assertEqual(len({e.path for e in parsed}), len(parsed))
