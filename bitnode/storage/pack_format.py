"""Packs: many small files stored as one version, with an index at the end (like restic's pack files).

A folder upload puts its small files into packs (:mod:`bitnode.storage.packs`)
so that a thousand files of 16 KiB cost a few segments on each supplier, not
a thousand. The pack is an ordinary version in the catalog (its segments and
blocks are encrypted, erasure-coded, rebuilt and re-laid out like any file's);
the catalog records, per file, the pack and the offset of its bytes. The
pack itself also says what it holds, so it can be checked when it is read:

Pack format 1 (big-endian)::

    member bytes, one file after the other, from offset 0
    index:   b"BNPI" | version u8 (1) | count u32 |
             count x ( offset u64 | length u64 | sha256 32 bytes | path length u16 | path utf-8 )
    trailer: index length u32 | version u8 (1) | b"BNPK"

Entries are in offset order, back to back from 0 (no gap, no overlap), and
the index starts where the last one ends. ``path`` is the file's path below
the folder that was uploaded (a valid catalog path). :func:`parse_index` and
:func:`parse_trailer` read the bytes of a pack strictly (whoever stored them
may have been wrong): anything off raises :class:`PackFormatError`, a
BadRequest, never another exception.

:func:`write_pack` builds a pack file from local files (a worker thread);
:func:`read_pack` checks a whole pack and yields its files.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

from bitnode.errors import BadRequest
from bitnode.globalid import validate_path

PACK_FORMAT = 1
READABLE_PACK_FORMATS = (1,)
INDEX_MAGIC = b"BNPI"
TRAILER_MAGIC = b"BNPK"
#: Files one pack may list (the index of a pack is read whole: this bounds it).
MAX_PACK_FILES = 100_000
_HEAD = struct.Struct(">4sBI")
_ENTRY = struct.Struct(">QQ32sH")
_TRAILER = struct.Struct(">IB4s")
TRAILER_SIZE = _TRAILER.size
MAX_INDEX_BYTES = _HEAD.size + MAX_PACK_FILES * (_ENTRY.size + 4096)
#: Bytes of a pack's index and trailer whatever it holds.
INDEX_FIXED_BYTES = _HEAD.size + TRAILER_SIZE


def index_entry_bytes(path: str) -> int:
    """Bytes the index entry of a file at ``path`` takes."""
    return _ENTRY.size + len(path.encode("utf-8"))


class PackFormatError(BadRequest):
    """The bytes are not a pack (or its index) this node can read."""


@dataclass(frozen=True)
class PackEntry:
    """One file of a pack: where its bytes are, how many, their SHA-256, its path below the uploaded folder."""

    path: str
    offset: int
    length: int
    sha256: bytes


@dataclass(frozen=True)
class PackSource:
    """A local file to put in a pack: its path below the uploaded folder and where it is."""

    relative: str
    local_path: str


@dataclass(frozen=True)
class PackedFile:
    """A file written into a pack: its entry, what a restore gives back (mode, mtime), and where it was read."""

    entry: PackEntry
    mode: int
    mtime_ns: int
    local_path: str = ""


@dataclass(frozen=True)
class BuiltPack:
    """What :func:`write_pack` made: the files in it, the pack's size, and the files left out with why."""

    files: tuple[PackedFile, ...]
    size: int
    skipped: tuple[dict, ...]


def encode_index(entries: Iterable[PackEntry]) -> bytes:
    """The index and trailer of a pack holding ``entries`` (in offset order, back to back from 0)."""
    entries = list(entries)
    _check_entries(entries)
    parts = [_HEAD.pack(INDEX_MAGIC, PACK_FORMAT, len(entries))]
    for e in entries:
        name = e.path.encode("utf-8")
        parts.append(_ENTRY.pack(e.offset, e.length, e.sha256, len(name)))
        parts.append(name)
    index = b"".join(parts)
    return index + _TRAILER.pack(len(index), PACK_FORMAT, TRAILER_MAGIC)


def parse_trailer(tail: bytes) -> int:
    """The index length a pack's last :data:`TRAILER_SIZE` bytes give; PackFormatError if they are not a trailer."""
    if len(tail) != TRAILER_SIZE:
        raise PackFormatError(f"a pack trailer is {TRAILER_SIZE} bytes, got {len(tail)}")
    length, version, magic = _TRAILER.unpack(tail)
    if magic != TRAILER_MAGIC:
        raise PackFormatError("not a pack: no trailer")
    if version not in READABLE_PACK_FORMATS:
        raise PackFormatError(f"pack format {version}, this node reads {READABLE_PACK_FORMATS}")
    if not _HEAD.size <= length <= MAX_INDEX_BYTES:
        raise PackFormatError(f"a pack index cannot be {length} bytes")
    return length


def parse_index(index: bytes, data_end: int | None = None) -> tuple[PackEntry, ...]:
    """The entries of a pack index (without its trailer); PackFormatError when anything is off.

    ``data_end``: where the index starts in the pack; the entries must fill
    exactly the bytes before it.
    """
    index = bytes(index)
    if len(index) < _HEAD.size:
        raise PackFormatError("a pack index is too short")
    magic, version, count = _HEAD.unpack_from(index, 0)
    if magic != INDEX_MAGIC:
        raise PackFormatError("not a pack index")
    if version not in READABLE_PACK_FORMATS:
        raise PackFormatError(f"pack index format {version}, this node reads {READABLE_PACK_FORMATS}")
    if count > MAX_PACK_FILES:
        raise PackFormatError(f"a pack index cannot list {count} files")
    at = _HEAD.size
    entries = []
    for _ in range(count):
        if at + _ENTRY.size > len(index):
            raise PackFormatError("a pack index entry is cut short")
        offset, length, digest, name_length = _ENTRY.unpack_from(index, at)
        at += _ENTRY.size
        if at + name_length > len(index):
            raise PackFormatError("a pack index path is cut short")
        try:
            path = index[at:at + name_length].decode("utf-8")
        except UnicodeDecodeError:
            raise PackFormatError("a pack index path is not UTF-8") from None
        at += name_length
        entries.append(PackEntry(path, offset, length, digest))
    if at != len(index):
        raise PackFormatError(f"{len(index) - at} bytes after the last pack index entry")
    _check_entries(entries, data_end)
    return tuple(entries)


def _check_entries(entries: list[PackEntry], data_end: int | None = None) -> None:
    expected = 0
    seen = set()
    for e in entries:
        if not e.path:
            raise PackFormatError("a pack entry has no path")
        try:
            validate_path(e.path)
        except BadRequest as err:
            raise PackFormatError(f"a pack entry has an invalid path: {err}") from None
        if len(e.path.encode("utf-8")) > 0xFFFF or len(e.sha256) != 32:
            raise PackFormatError(f"pack entry {e.path!r} is malformed")
        if e.path in seen:
            raise PackFormatError(f"{e.path!r} is in the pack twice")
        seen.add(e.path)
        if e.offset != expected or e.length < 0:
            raise PackFormatError(f"pack entry {e.path!r} is not where the one before it ends")
        expected = e.offset + e.length
    if data_end is not None and expected != data_end:
        raise PackFormatError(f"the pack's files end at {expected}, its index starts at {data_end}")


def write_pack(dest: str, sources: Iterable[PackSource]) -> BuiltPack:
    """Write the pack of ``sources`` to the new file ``dest`` (exclusive, 0600); what it holds. Worker thread.

    Each file is read once, whole (small files only: the caller chooses
    them); its mode and mtime are taken from the open file. A file that is
    gone, unreadable or no longer a regular file is left out and listed in
    ``skipped`` with why. The pack is not fsynced: it is a temporary file,
    uploaded and removed; after a crash its upload starts over.
    """
    files: list[PackedFile] = []
    skipped: list[dict] = []
    offset = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        for source in sources:
            try:
                src = os.open(source.local_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as err:
                skipped.append({"local_path": source.local_path, "error": f"cannot be read: {err.strerror}"})
                continue
            with os.fdopen(src, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    skipped.append({"local_path": source.local_path, "error": "no longer a regular file"})
                    continue
                try:
                    data = fh.read()
                except OSError as err:
                    skipped.append({"local_path": source.local_path, "error": f"cannot be read: {err.strerror}"})
                    continue
            out.write(data)
            entry = PackEntry(source.relative, offset, len(data), hashlib.sha256(data).digest())
            files.append(PackedFile(entry, stat.S_IMODE(st.st_mode), st.st_mtime_ns, source.local_path))
            offset += len(data)
        tail = encode_index(f.entry for f in files)
        out.write(tail)
    return BuiltPack(tuple(files), offset + len(tail), tuple(skipped))


def write_repack(src: str, keep: Iterable[tuple[str, int, int]], dest: str) -> BuiltPack:
    """Write to the new file ``dest`` a pack of the files ``(path, offset, length)`` of the pack ``src``. Worker
    thread.

    Each file kept must be in ``src``'s index at that offset and length, and
    its bytes must match its SHA-256 there (PackFormatError otherwise). The
    files' mode and mtime are not in a pack (the catalog keeps them): 0 here.
    """
    entries = {e.path: e for e in read_index(src)}
    files: list[PackedFile] = []
    offset = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
        for path, old_offset, length in keep:
            entry = entries.get(path)
            if entry is None or (entry.offset, entry.length) != (old_offset, length):
                raise PackFormatError(f"{path!r} is not in the pack where the catalog says")
            out.write(read_member(fh, entry))
            files.append(PackedFile(PackEntry(path, offset, length, entry.sha256), 0, 0))
            offset += length
        tail = encode_index(f.entry for f in files)
        out.write(tail)
    return BuiltPack(tuple(files), offset + len(tail), ())


def read_index(path: str) -> tuple[PackEntry, ...]:
    """The checked index of the whole pack in the local file ``path``. Worker thread."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < TRAILER_SIZE:
            raise PackFormatError("too short to be a pack")
        fh.seek(size - TRAILER_SIZE)
        length = parse_trailer(fh.read(TRAILER_SIZE))
        start = size - TRAILER_SIZE - length
        if start < 0:
            raise PackFormatError("the pack index is longer than the pack")
        fh.seek(start)
        return parse_index(fh.read(length), start)


def read_member(fh, entry: PackEntry, base: int = 0) -> bytes:
    """The bytes of ``entry`` from an open pack (or a part of it starting at pack offset ``base``), checked
    against the entry's SHA-256; PackFormatError when they differ."""
    fh.seek(entry.offset - base)
    data = fh.read(entry.length)
    if len(data) != entry.length or hashlib.sha256(data).digest() != entry.sha256:
        raise PackFormatError(f"{entry.path!r} in the pack does not match its index")
    return data


def iter_members(path: str, entries: Iterable[PackEntry]) -> Iterator[tuple[PackEntry, bytes]]:
    """Each entry of the local pack file ``path`` with its checked bytes. Worker thread."""
    with open(path, "rb") as fh:
        for entry in entries:
            yield entry, read_member(fh, entry)
