"""The catalog's exported document: its formats, its writer, and the strict reader every import goes through.

:meth:`Catalog.export <bitnode.storage.catalog.Catalog.export>` writes a
compact JSON document that travels: encrypted to my suppliers as the catalog
backup, and (a subset) to the readers of a share as its index. Whoever made
the bytes — a supplier replaying an old backup, or the owner of a share who
wants to crash a reader — :func:`parse_export` reads them strictly and
raises only :class:`~bitnode.errors.BadRequest`: every row is checked (key
ids, paths, version ids, states, sizes, k-of-n, segment indexes and lengths,
block positions and hashes, supplier lists, metadata), so whatever it
accepts can be listed, shown by ``file_info`` and downloaded without an
exception.

Format 2 (written now)::

    {"format": 2,
     "items":    [[key_id, path, is_folder, created, mode, mtime_ns, link_target], ...],
     "versions": [[version_id, key_id, path, state, size, segment_size, segments_total, k, n,
                   wrapped_key (base64), suppliers (JSON text of n ids), created, completed,
                   mode, mtime_ns], ...],
     "segments": [[version_id, seg_index, plaintext_length], ...],
     "blocks":   [[version_id, seg_index, position, sha256 hex, supplier ("" = missing)], ...]}

Format 3 (written when the catalog holds packs, :mod:`bitnode.storage.pack_format`) adds::

     "packed":   [[version_id, pack version_id, offset, length], ...]

and lets a version belong to a folder: that version is a pack of files
uploaded into the folder. Each ``packed`` row names a version of a file
under the pack's folder whose size is ``length`` and whose bytes lie inside
the pack; such a version has no segments of its own. A catalog without
packs is still written as format 2, for readers that know only 1 and 2.

``mode`` is the permission bits (``st_mode & 0o7777``) and ``mtime_ns`` the
modification time in nanoseconds of what was uploaded (None when unknown);
``link_target`` is the text of a symbolic link (None for files and folders).
Format 1 (still read) has items rows of the first 4 fields and versions rows
of the first 13: no metadata, no links.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import sqlite3
import stat
from dataclasses import dataclass, field
from typing import Any, Iterator

from bitnode.errors import BadRequest, BitnodeError
from bitnode.globalid import parse_key_id, validate_path
from bitnode.storage.erasure import MAX_N
from bitnode.storage.segment_crypto import validate_version_id

EXPORT_FORMAT = 2
#: The format of an export that holds packs.
PACKS_EXPORT_FORMAT = 3
READABLE_EXPORT_FORMATS = (1, 2, 3)
UPLOADING, COMPLETE, FAILED = "uploading", "complete", "failed"
VERSION_STATES = (UPLOADING, COMPLETE, FAILED)
MAX_SEGMENT_SIZE = 256 * 1024 * 1024
MAX_FILE_SIZE = 2**62
MAX_LINK_TARGET = 4096
MAX_SUPPLIER_ID = 256
MAX_WRAPPED_KEY = 8192
#: Permission bits kept: rwx for user, group and others, plus setuid, setgid and sticky.
MODE_BITS = 0o7777
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ITEM_FIELDS = {1: 4, 2: 7, 3: 7}
_VERSION_FIELDS = {1: 13, 2: 15, 3: 15}


@dataclass(frozen=True)
class ExportRows:
    """A checked export, as format 2 rows ready to insert (``wrapped_key`` as bytes), in the document's order.

    Folders the document left out above its items come after them.
    """

    items: list[tuple]
    versions: list[tuple]
    segments: list[tuple]
    blocks: list[tuple]
    packed: list[tuple] = field(default_factory=list)


def segment_count(file_size: int, segment_size: int) -> int:
    """How many segments a file of ``file_size`` bytes has (an empty file has one)."""
    return max(1, -(-file_size // segment_size))


def parents_of(path: str) -> list[str]:
    """The folders above ``path``, outermost first: ``a/b/c`` → ``["a", "a/b"]``."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def segment_length(size: int, segment_size: int, index: int) -> int:
    """The plaintext length of segment ``index`` of a version of ``size`` bytes."""
    return max(0, min(segment_size, size - index * segment_size))


def check_sha256(value: Any) -> str:
    """A block hash: 64 lowercase hex digits; BadRequest otherwise."""
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise BadRequest(f"invalid SHA-256 {value!r:.80}")
    return value


def check_suppliers(holders: Any, n: int) -> list[str]:
    """The supplier of each of the ``n`` positions ("" = none); BadRequest otherwise."""
    if (not isinstance(holders, list) or len(holders) != n
            or not all(isinstance(s, str) and len(s) <= MAX_SUPPLIER_ID for s in holders)):
        raise BadRequest(f"a version must name {n} supplier positions")
    return holders


def check_mode(mode: Any) -> int | None:
    """Permission bits or None; BadRequest otherwise."""
    if mode is None:
        return None
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= MODE_BITS:
        raise BadRequest(f"invalid mode {mode!r}")
    return mode


def check_mtime_ns(mtime_ns: Any) -> int | None:
    """A modification time in nanoseconds (a signed 64-bit number) or None; BadRequest otherwise."""
    if mtime_ns is None:
        return None
    if isinstance(mtime_ns, bool) or not isinstance(mtime_ns, int) or not -(2**63) <= mtime_ns < 2**63:
        raise BadRequest(f"invalid mtime {mtime_ns!r}")
    return mtime_ns


def check_link_target(target: Any) -> str:
    """The text of a symbolic link: 1..4096 characters, no NUL."""
    if not isinstance(target, str) or not 0 < len(target) <= MAX_LINK_TARGET or "\x00" in target:
        raise BadRequest("invalid symbolic link target")
    return target


#: Rows encoded by one ``json.dumps`` call of the streamed export: bounded memory at C speed, and short enough
#: (well under a millisecond) that the reactor thread, waiting for the GIL meanwhile, answers API calls on time.
EXPORT_CHUNK_ROWS = 256
_EXPORT_QUERIES = (
    ("items", "SELECT key_id, path, is_folder, created, mode, mtime_ns, link_target FROM items ORDER BY item_id"),
    ("versions", "SELECT v.version_id, i.key_id, i.path, v.state, v.size, v.segment_size, v.segments_total,"
                 " v.k, v.n, v.wrapped_key, v.suppliers, v.created, v.completed, v.mode, v.mtime_ns"
                 " FROM versions v JOIN items i USING (item_id) ORDER BY v.version_id"),
    ("segments", "SELECT version_id, seg_index, plaintext_length FROM segments ORDER BY version_id, seg_index"),
    ("blocks", "SELECT version_id, seg_index, position, sha256, supplier FROM blocks"
               " ORDER BY version_id, seg_index, position"),
)


_PACKED_QUERY = "SELECT version_id, pack_id, offset, length FROM packed ORDER BY version_id"


def write_export(db: sqlite3.Connection) -> bytes:
    """The export document (format 2) of the catalog tables in ``db`` (the caller holds the catalog's lock)."""
    return b"".join(export_chunks(db))


def export_chunks(db: sqlite3.Connection) -> Iterator[bytes]:
    """The export document in pieces, the same bytes as ``json.dumps(doc, separators=(",", ":"))``.

    Memory stays bounded by :data:`EXPORT_CHUNK_ROWS` rows whatever the
    catalog's size. The caller keeps ``db`` still while this runs (the
    catalog's lock, or a read transaction of its own: one snapshot). A
    catalog holding packs is format 3, with its ``packed`` rows last.
    """
    has_packs = (db.execute("SELECT 1 FROM packed LIMIT 1").fetchone() is not None or db.execute(
        "SELECT 1 FROM versions v JOIN items i USING (item_id) WHERE i.is_folder = 1 LIMIT 1").fetchone() is not None)
    queries = _EXPORT_QUERIES + ((("packed", _PACKED_QUERY),) if has_packs else ())
    yield b'{"format":' + str(PACKS_EXPORT_FORMAT if has_packs else EXPORT_FORMAT).encode("ascii")
    for name, query in queries:
        yield f',"{name}":['.encode("ascii")
        cursor = db.execute(query)
        first = True
        while True:
            rows = cursor.fetchmany(EXPORT_CHUNK_ROWS)
            if not rows:
                break
            if name == "versions":  # the wrapped key (a blob) is written as base64 text
                rows = [(*row[:9], base64.b64encode(row[9]).decode("ascii"), *row[10:]) for row in rows]
            text = json.dumps([tuple(row) for row in rows], separators=(",", ":"))[1:-1]
            yield (text if first else "," + text).encode("utf-8")
            first = False
        yield b"]"
    yield b"}"


def insert_rows(db: sqlite3.Connection, rows: ExportRows) -> None:
    """Put checked rows into empty catalog tables (inside the caller's transaction)."""
    ids = {}
    for key_id, path, is_folder, created, mode, mtime_ns, link in rows.items:
        ids[(key_id, path)] = db.execute(
            "INSERT INTO items (key_id, path, is_folder, created, mode, mtime_ns, link_target)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (key_id, path, is_folder, created, mode, mtime_ns, link)).lastrowid
    db.executemany(
        "INSERT INTO versions (version_id, item_id, state, size, segment_size, segments_total,"
        " k, n, wrapped_key, suppliers, created, completed, mode, mtime_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(v[0], ids[(v[1], v[2])], *v[3:]) for v in rows.versions])
    db.executemany("INSERT INTO segments (version_id, seg_index, plaintext_length) VALUES (?, ?, ?)", rows.segments)
    db.executemany("INSERT INTO blocks (version_id, seg_index, position, sha256, supplier) VALUES (?, ?, ?, ?, ?)",
                   rows.blocks)
    db.executemany("INSERT INTO packed (version_id, pack_id, offset, length) VALUES (?, ?, ?, ?)", rows.packed)


def describe_metadata(kind: str, mode: int | None, mtime_ns: int | None, link_target: str | None = None) -> dict:
    """What ``file_info`` shows of the metadata kept for a file, folder or link (None where unknown)."""
    type_bits = {"folder": stat.S_IFDIR, "link": stat.S_IFLNK}.get(kind, stat.S_IFREG)
    return {"kept": mode is not None or mtime_ns is not None or link_target is not None,
            "mode": None if mode is None else f"{mode:04o}",
            "permissions": None if mode is None else stat.filemode(type_bits | mode),
            "mtime": None if mtime_ns is None else mtime_ns / 1e9, "mtime_ns": mtime_ns,
            "link_target": link_target}


def parse_export(data: bytes | dict) -> ExportRows:
    """Read and check an exported catalog (bytes, or the already decoded document); BadRequest if anything is off."""
    try:
        doc = data if isinstance(data, dict) else json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as err:
        raise BadRequest(f"catalog backup is not readable: {err}") from None
    if not isinstance(doc, dict):
        raise BadRequest("catalog backup is not a JSON object")
    fmt = doc.get("format")
    if isinstance(fmt, bool) or fmt not in READABLE_EXPORT_FORMATS:
        raise BadRequest(f"catalog backup has format {fmt!r}, this node reads {READABLE_EXPORT_FORMATS}")
    try:
        return _Reader(fmt).read(doc)
    except BitnodeError as err:
        raise BadRequest(f"catalog backup is not valid: {err}") from None
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, binascii.Error) as err:
        raise BadRequest(f"catalog backup is not valid: {err.__class__.__name__}: {err}") from None


class _Reader:
    """One pass over a document: rows checked against each other."""

    def __init__(self, fmt: int):
        self.fmt = fmt
        self.items: dict[tuple[str, str], tuple] = {}
        self.versions: dict[str, tuple] = {}
        self.segments: dict[tuple[str, int], int] = {}
        self.positions: dict[tuple[str, int], set[int]] = {}
        self.packs: set[str] = set()
        self.packed: dict[str, tuple] = {}

    def read(self, doc: dict) -> ExportRows:
        names = ("items", "versions", "segments", "blocks") + (("packed",) if self.fmt >= 3 else ())
        for name in names:
            if not isinstance(doc.get(name, [] if name == "packed" else None), list):
                raise BadRequest(f"{name} must be a list")
        for row in doc["items"]:
            self.item(row)
        self.add_missing_parents()
        versions = [self.version(row) for row in doc["versions"]]
        segments = [self.segment(row) for row in doc["segments"]]
        blocks = [self.block(row) for row in doc["blocks"]]
        packed = [self.packed_row(row) for row in doc.get("packed", [])] if self.fmt >= 3 else []
        for version_id, index in self.segments:
            n = self.versions[version_id][8]
            count = len(self.positions.get((version_id, index), ()))
            if count != n:
                raise BadRequest(f"segment {index} of {version_id} has {count} blocks, n={n}")
        for version_id, row in self.versions.items():
            done = sum(1 for v, _ in self.segments if v == version_id)
            if version_id in self.packed:
                if done:
                    raise BadRequest(f"version {version_id} is in a pack and has segments of its own")
                continue
            if row[3] == COMPLETE and done != row[6]:
                raise BadRequest(f"complete version {version_id} has {done} of {row[6]} segments")
        return ExportRows(list(self.items.values()), versions, segments, blocks, packed)

    # --- rows ------------------------------------------------------------------------------

    def item(self, row: Any) -> None:
        fields = _row(row, _ITEM_FIELDS[self.fmt], "item")
        key_id, path, is_folder, created = fields[:4]
        mode, mtime_ns, link = fields[4:] if self.fmt >= 2 else (None, None, None)
        parse_key_id(_text(key_id, "key id"))
        if not path:
            raise BadRequest("an item has an empty path")
        validate_path(_text(path, "path"))
        if is_folder not in (0, 1) or isinstance(is_folder, float):
            raise BadRequest(f"{path}: is_folder must be 0 or 1")
        if link is not None:
            check_link_target(link)
            if is_folder:
                raise BadRequest(f"{path}: a folder cannot be a link")
        if (key_id, path) in self.items:
            raise BadRequest(f"{key_id}:{path} is listed twice")
        self.items[(key_id, path)] = (key_id, path, int(is_folder), _number(created, "created"), check_mode(mode),
                                      check_mtime_ns(mtime_ns), link)

    def add_missing_parents(self) -> None:
        for (key_id, path), row in list(self.items.items()):
            for parent in parents_of(path):
                found = self.items.get((key_id, parent))
                if found is None:
                    self.items[(key_id, parent)] = (key_id, parent, 1, row[3], None, None, None)
                elif not found[2]:
                    raise BadRequest(f"{key_id}:{parent} is a file or link, yet {path} is under it")

    def version(self, row: Any) -> tuple:
        fields = _row(row, _VERSION_FIELDS[self.fmt], "version")
        (version_id, key_id, path, state, size, segment_size, segments_total, k, n, wrapped, suppliers,
         created, completed) = fields[:13]
        mode, mtime_ns = fields[13:] if self.fmt >= 2 else (None, None)
        validate_version_id(_text(version_id, "version id"))
        if version_id in self.versions:
            raise BadRequest(f"version {version_id} is listed twice")
        item = self.items.get((key_id, path)) if isinstance(key_id, str) and isinstance(path, str) else None
        if item is not None and item[2] and self.fmt >= 3:
            self.packs.add(version_id)  # a version of a folder is a pack of files uploaded into it
        elif item is None or item[2] or item[6] is not None:
            raise BadRequest(f"version {version_id} names no file of the catalog")
        if state not in VERSION_STATES:
            raise BadRequest(f"version {version_id} has the unknown state {state!r}")
        size = _integer(size, 0, MAX_FILE_SIZE, "size")
        segment_size = _integer(segment_size, 1, MAX_SEGMENT_SIZE, "segment size")
        if _integer(segments_total, 1, MAX_FILE_SIZE, "segments total") != segment_count(size, segment_size):
            raise BadRequest(f"version {version_id}: {segments_total} segments for {size} bytes")
        n = _integer(n, 1, MAX_N, "n")
        k = _integer(k, 1, n, "k")
        if not isinstance(wrapped, str) or len(wrapped) > MAX_WRAPPED_KEY:
            raise BadRequest(f"version {version_id} has no valid wrapped key")
        wrapped_key = base64.b64decode(wrapped, validate=True)
        holders = check_suppliers(json.loads(_text(suppliers, "suppliers")), n)
        created = _number(created, "created")
        completed = None if completed is None else _number(completed, "completed")
        checked = (version_id, key_id, path, state, size, segment_size, segments_total, k, n, wrapped_key,
                   json.dumps(holders), created, completed, check_mode(mode), check_mtime_ns(mtime_ns))
        self.versions[version_id] = checked
        return checked

    def segment(self, row: Any) -> tuple:
        version_id, index, length = _row(row, 3, "segment")
        version = self.versions.get(version_id) if isinstance(version_id, str) else None
        if version is None:
            raise BadRequest("a segment names an unknown version")
        size, segment_size, total = version[4], version[5], version[6]
        index = _integer(index, 0, total - 1, f"segment index of {version_id}")
        expected = segment_length(size, segment_size, index)
        if _integer(length, 0, MAX_SEGMENT_SIZE, "segment length") != expected:
            raise BadRequest(f"segment {index} of {version_id} is {length} bytes, {expected} expected")
        if (version_id, index) in self.segments:
            raise BadRequest(f"segment {index} of {version_id} is listed twice")
        self.segments[(version_id, index)] = length
        return (version_id, index, length)

    def block(self, row: Any) -> tuple:
        version_id, index, position, sha256, supplier = _row(row, 5, "block")
        if not isinstance(version_id, str) or not isinstance(index, int) or isinstance(index, bool) \
                or (version_id, index) not in self.segments:
            raise BadRequest("a block names an unknown segment")
        position = _integer(position, 0, self.versions[version_id][8] - 1, f"block position in {version_id}")
        check_sha256(sha256)
        if not isinstance(supplier, str) or len(supplier) > MAX_SUPPLIER_ID:
            raise BadRequest(f"block {version_id}/{index}/{position} names no valid supplier")
        held = self.positions.setdefault((version_id, index), set())
        if position in held:
            raise BadRequest(f"block {version_id}/{index}/{position} is listed twice")
        held.add(position)
        return (version_id, index, position, sha256, supplier)


    def packed_row(self, row: Any) -> tuple:
        version_id, pack_id, offset, length = _row(row, 4, "packed")
        member = self.versions.get(version_id) if isinstance(version_id, str) else None
        pack = self.versions.get(pack_id) if isinstance(pack_id, str) else None
        if member is None or version_id in self.packs or version_id in self.packed:
            raise BadRequest("a packed row names no file version, or one twice")
        if pack is None or pack_id not in self.packs:
            raise BadRequest(f"version {version_id} is in an unknown pack")
        if member[1] != pack[1] or not member[2].startswith(pack[2] + "/"):
            raise BadRequest(f"version {version_id} is not under the folder of its pack")
        offset = _integer(offset, 0, pack[4], "pack offset")
        length = _integer(length, 0, pack[4] - offset, "packed length")
        if length != member[4]:
            raise BadRequest(f"version {version_id} is {member[4]} bytes, its pack holds {length}")
        if member[3] == COMPLETE and pack[3] != COMPLETE:
            raise BadRequest(f"complete version {version_id} is in the unfinished pack {pack_id}")
        self.packed[version_id] = (version_id, pack_id, offset, length)
        return self.packed[version_id]


def _row(row: Any, length: int, what: str) -> list:
    if not isinstance(row, list) or len(row) != length:
        raise BadRequest(f"a {what} row must have {length} fields")
    return row


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be text")
    return value


def _integer(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{what} must be a whole number in {low}..{high}, got {value!r}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{what} must be a number")
    return float(value) if isinstance(value, float) else value
