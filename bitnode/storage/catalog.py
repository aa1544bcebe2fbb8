"""The catalog: what a user stored, where its blocks are, in one sqlite file (WAL).

Remote paths are ``key_id:path`` (:mod:`bitnode.globalid`): the key id
says whose key encrypts the file (the user's master key or a share key). The
tables (items, versions, segments, blocks, sources, meta) and their format
are described in :mod:`bitnode.storage.catalog_file`, which also refuses a
file that is damaged or not a catalog (:func:`open_catalog` sets such a file
aside).

Rules: a segment is recorded only after its suppliers acknowledged its blocks
(persist before acknowledging the user); every change is one transaction, so
a crash leaves the previous consistent state. The whole catalog exports to a
compact, versioned JSON document (:meth:`Catalog.export`,
:mod:`bitnode.storage.catalog_format`) that the node encrypts and backs up to
its suppliers, and :meth:`Catalog.import_` restores it on a new machine after
checking every row.

The class is synchronous and thread-safe (one lock, one connection): the node
calls it from its thread pool, never on the reactor thread for big work.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterable, Iterator, Sequence

from bitnode.errors import BadRequest, Conflict, NotFound
from bitnode.globalid import parse_key_id, validate_path
from bitnode.main.sqlitedb import SqliteFile
from bitnode.storage.catalog_file import (
    CATALOG_FORMAT,
    PARENT_OF_PATH,
    SCHEMA,
    CatalogUnreadable,
    check_file,
    migrate,
)
from bitnode.storage.catalog_format import (
    COMPLETE,
    EXPORT_FORMAT,
    FAILED,
    UPLOADING,
    VERSION_STATES,
    ExportRows,
    check_link_target,
    check_mode,
    check_mtime_ns,
    check_sha256,
    check_suppliers,
    export_chunks,
    insert_rows,
    parents_of,
    parse_export,
    segment_count,
    segment_length,
    write_export,
)
from bitnode.storage.catalog_packs import PACKED_DELETED_META, CatalogPacks, PackMember, add_meta_count
from bitnode.storage.erasure import MAX_N
from bitnode.storage.ports import SegmentMeta
from bitnode.storage.segment_crypto import validate_version_id

__all__ = ["CATALOG_FORMAT", "CatalogUnreadable", "COMPLETE", "EXPORT_FORMAT", "FAILED", "UPLOADING", "VERSION_STATES", "Catalog",
           "PackMember", "split_remote_path"]

_RESERVED_META = ("format",)
#: A version with its file's key id and path and how many segments are recorded (one query for any number).
_VERSIONS = ("SELECT v.*, i.key_id, i.path, i.is_folder, p.pack_id, p.offset AS pack_offset, p.length AS pack_length,"
             " (SELECT COUNT(*) FROM segments s WHERE s.version_id = v.version_id)"
             " AS segments_done FROM versions v JOIN items i USING (item_id) LEFT JOIN packed p USING (version_id)")
#: An item with its newest complete version's id and size (the correlated subquery reads versions_latest);
#: the columns are :func:`_listed_dict`'s arguments.
_LISTING = (
    "SELECT i.key_id, i.path, i.is_folder, i.created, i.mode, i.mtime_ns, i.link_target,"
    " v.version_id AS latest_version, v.size AS latest_size FROM items i"
    # A folder's versions are its packs (pack_format): not a size or version of the folder.
    " LEFT JOIN versions v ON i.is_folder = 0 AND v.version_id = (SELECT version_id FROM versions"
    f" WHERE item_id = i.item_id AND state = '{COMPLETE}' ORDER BY created DESC LIMIT 1)")


def split_remote_path(remote_path: str) -> tuple[str, str]:
    """``key_id:path`` → (key_id, path), both validated; the path may be empty (the root)."""
    if not isinstance(remote_path, str) or ":" not in remote_path:
        raise BadRequest(f"remote path must look like key_id:path, got {remote_path!r}")
    key_id, _, path = remote_path.partition(":")
    parse_key_id(key_id)
    path = path.strip("/")
    return key_id, (validate_path(path) if path else "")


def open_catalog(path: str, now: float) -> tuple[Catalog, dict | None]:
    """Open the catalog at ``path``; one that cannot be read is moved aside (kept) and a new one opened.

    Returns the catalog and, when the old file was set aside, ``{"error",
    "moved_to", "at"}`` for the caller to report. A catalog of a newer format
    is not damaged: BadRequest, and nothing is moved. Worker thread.
    """
    try:
        return Catalog(path), None
    except CatalogUnreadable as err:
        problem = str(err)
    moved = f"{path}.unreadable-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}"
    for suffix in ("", "-wal", "-shm"):  # sqlite's companions go with it: they belong to that file
        if os.path.exists(path + suffix):
            os.replace(path + suffix, moved + suffix)
    return Catalog(path), {"error": f"the catalog {path} cannot be used: {problem}", "moved_to": moved, "at": now}


class Catalog(CatalogPacks):
    """One node's catalog in the sqlite file at ``path`` (``":memory:"`` for tests).

    Raises :class:`CatalogUnreadable` for a damaged file or one that is not a catalog.
    """

    def __init__(self, path: str):
        self.path = path
        check_file(path)
        try:
            self._file = SqliteFile(path, SCHEMA, CATALOG_FORMAT, "catalog", foreign_keys=True, migrate=migrate)
        except sqlite3.DatabaseError as err:
            raise CatalogUnreadable(f"sqlite cannot read it: {err}") from None
        self._lock, self._db = self._file.lock, self._file.db

    def close(self) -> None:
        """Close the database."""
        self._file.close()

    def _transaction(self) -> ContextManager[sqlite3.Connection]:
        return self._file.transaction()

    # --- files and folders ---------------------------------------------------------

    def create(self, key_id: str, path: str, as_folder: bool = False, exist_ok: bool = False,
               now: float = 0.0, mode: int | None = None, mtime_ns: int | None = None) -> dict:
        """Add a file or folder (and its parent folders); Conflict if it exists (unless ``exist_ok``).

        ``mode`` and ``mtime_ns`` (a folder's, from an upload) are kept, also
        on a folder that exists already.
        """
        if not path:
            raise BadRequest("the root folder always exists")
        parse_key_id(key_id)
        validate_path(path)
        check_mode(mode)
        check_mtime_ns(mtime_ns)
        with self._transaction() as db:
            self._ensure_item(db, key_id, path, as_folder, exist_ok, now, mode, mtime_ns)
        return self.get(key_id, path)

    def _ensure_item(self, db: sqlite3.Connection, key_id: str, path: str, as_folder: bool, exist_ok: bool,
                     now: float, mode: int | None = None, mtime_ns: int | None = None) -> bool:
        """Make the item and its parent folders inside the caller's transaction; True if the item is new."""
        found = self._make_parents(db, key_id, path, now)
        if found is None:
            db.execute("INSERT INTO items (key_id, path, is_folder, created, mode, mtime_ns)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (key_id, path, int(as_folder), now, mode, mtime_ns))
            return True
        if bool(found["is_folder"]) != as_folder or found["link_target"] is not None:
            raise Conflict(f"{key_id}:{path} already exists as a {_kind(found)}")
        if not exist_ok:
            raise Conflict(f"{key_id}:{path} already exists")
        if mode is not None or mtime_ns is not None:
            db.execute("UPDATE items SET mode = ?, mtime_ns = ? WHERE item_id = ?", (mode, mtime_ns, found["item_id"]))
        return False

    def _make_parents(self, db: sqlite3.Connection, key_id: str, path: str, now: float) -> sqlite3.Row | None:
        """Make the folders above ``path`` (Conflict if one is a file or link); the row at ``path``, if any."""
        for parent in parents_of(path):
            found = self._item_row(db, key_id, parent)
            if found is None:
                db.execute("INSERT INTO items (key_id, path, is_folder, created) VALUES (?, ?, 1, ?)",
                           (key_id, parent, now))
            elif not found["is_folder"]:
                raise Conflict(f"{key_id}:{parent} is a {_kind(found)}, not a folder")
        return self._item_row(db, key_id, path)

    def create_link(self, key_id: str, path: str, target: str, mtime_ns: int | None = None,
                    now: float = 0.0) -> dict:
        """Keep a symbolic link (its target text, never what it points to); an existing link is updated.

        Conflict when a file or folder is at ``path``.
        """
        if not path:
            raise BadRequest("the root folder always exists")
        parse_key_id(key_id)
        validate_path(path)
        check_link_target(target)
        check_mtime_ns(mtime_ns)
        with self._transaction() as db:
            found = self._make_parents(db, key_id, path, now)
            if found is None:
                db.execute("INSERT INTO items (key_id, path, is_folder, created, mtime_ns, link_target)"
                           " VALUES (?, ?, 0, ?, ?, ?)", (key_id, path, now, mtime_ns, target))
            elif found["link_target"] is None:
                raise Conflict(f"{key_id}:{path} already exists as a {_kind(found)}")
            else:
                db.execute("UPDATE items SET link_target = ?, mtime_ns = ? WHERE item_id = ?",
                           (target, mtime_ns, found["item_id"]))
        return self.get(key_id, path)

    def exists(self, key_id: str, path: str) -> bool:
        """Whether a file or folder is catalogued (the root always exists)."""
        with self._lock:
            return not path or self._item_row(self._db, key_id, path) is not None

    def get(self, key_id: str, path: str) -> dict:
        """One file or folder with its versions (newest first); NotFound if absent."""
        with self._lock:
            row = self._item_row(self._db, key_id, path)
            if row is None:
                raise NotFound(f"{key_id}:{path} is not in the catalog")
            item = self._item_dict(row)
            versions = self._db.execute(
                _VERSIONS + " WHERE v.item_id = ? ORDER BY v.created DESC, v.version_id DESC",
                (row["item_id"],)).fetchall()
            item["versions"] = [self._version_dict(v) for v in versions]
            if row["is_folder"]:  # a folder's versions are the packs of the files uploaded into it
                item["packs"], item["versions"] = item["versions"], []
            return item

    def list(self, key_id: str | None = None, path: str = "", recursive: bool = True) -> list[dict]:
        """Files and folders under ``path`` (all keys when ``key_id`` is None), sorted by remote path.

        Each row also has ``size`` and ``latest_version`` (the newest complete
        version's, 0 and None without one). One query, through an index: a
        folder's listing costs its own rows, not the catalog's (see
        catalog_file's ``items_by_parent``).
        """
        clauses, args = [], []
        if key_id is not None:
            clauses.append("i.key_id = ?")
            args.append(key_id)
        if not recursive:
            clauses.append(f"{PARENT_OF_PATH} = ?")
            args.append(path + "/" if path else "")
        elif path:
            # Everything whose path starts with "path/": the range [path + "/", path + "0"), as "0" follows "/".
            clauses += ["i.path >= ?", "i.path < ?"]
            args += [path + "/", path + "0"]
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        with self._lock:
            cursor = self._db.cursor()
            cursor.row_factory = None  # plain tuples: a 1,000-row listing is read in one pass, by position
            rows = cursor.execute(_LISTING + where + " ORDER BY i.key_id, i.path", args).fetchall()
        return [_listed_dict(*row) for row in rows]

    def list_item(self, key_id: str, path: str) -> dict:
        """One file or folder as :meth:`list` shows it (with ``size`` and ``latest_version``); NotFound if absent."""
        with self._lock:
            cursor = self._db.cursor()
            cursor.row_factory = None
            row = cursor.execute(_LISTING + " WHERE i.key_id = ? AND i.path = ?", (key_id, path)).fetchone()
        if row is None:
            raise NotFound(f"{key_id}:{path} is not in the catalog")
        return _listed_dict(*row)

    def delete(self, key_id: str, path: str) -> list[str]:
        """Remove a file, or a folder with everything in it; returns the removed version ids.

        The caller deletes those versions' blocks from the suppliers.
        """
        with self._transaction() as db:
            row = self._item_row(db, key_id, path)
            if row is None:
                raise NotFound(f"{key_id}:{path} is not in the catalog")
            ids = self._item_ids_under(db, row)
            versions = self._version_ids_of(db, ids)
            self._count_packed_deletes(db, ids)
            for marks, part in self._file.in_lists(ids):
                db.execute(f"DELETE FROM items WHERE item_id IN ({marks})", part)
            return versions

    # --- versions, segments, blocks ----------------------------------------------------

    def begin_version(self, key_id: str, path: str, version_id: str, size: int, segment_size: int,
                      segments_total: int, k: int, n: int, wrapped_key: bytes, suppliers: Iterable[str],
                      now: float = 0.0, source: tuple[str, int, float] | None = None,
                      mode: int | None = None, mtime_ns: int | None = None) -> dict:
        """Record a new version being uploaded (the file item is created if needed).

        ``source`` is ``(local_path, size, mtime)`` of the file being read, kept
        in the same transaction so a resumed upload can tell whether it changed;
        ``mode`` and ``mtime_ns`` are the file's, given back by a restore.
        """
        validate_version_id(version_id)
        check_mode(mode)
        check_mtime_ns(mtime_ns)
        suppliers = list(suppliers)
        if len(suppliers) != n:
            raise BadRequest(f"{n} blocks per segment need {n} supplier positions, got {len(suppliers)}")
        check_suppliers(suppliers, n)
        # What is recorded must read back from an export (catalog_format checks the same).
        if (not 1 <= k <= n <= MAX_N or size < 0 or segment_size <= 0
                or segments_total != segment_count(size, segment_size)):
            raise BadRequest("invalid version parameters")
        parse_key_id(key_id)
        validate_path(path)
        with self._transaction() as db:  # item and version together: a crash leaves neither half made
            if db.execute("SELECT 1 FROM versions WHERE version_id = ?", (version_id,)).fetchone():
                raise Conflict(f"version {version_id} already exists")
            new_item = self._ensure_item(db, key_id, path, False, True, now)
            item = self._item_row(db, key_id, path)
            db.execute(
                "INSERT INTO versions (version_id, item_id, state, size, segment_size, segments_total, k, n,"
                " wrapped_key, suppliers, created, mode, mtime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (version_id, item["item_id"], UPLOADING, size, segment_size, segments_total, k, n,
                 bytes(wrapped_key), json.dumps(suppliers), now, mode, mtime_ns))
            if source is not None:
                local_path, local_size, mtime = source
                db.execute("INSERT INTO sources (version_id, local_path, size, mtime, new_item) VALUES (?, ?, ?, ?, ?)",
                           (version_id, str(local_path), int(local_size), float(mtime), int(new_item)))
        return self.version(version_id)

    def begin_copy_version(self, old_id: str, new_id: str, k: int, n: int, wrapped_key: bytes,
                           suppliers: Iterable[str]) -> dict:
        """A new version holding the same file as ``old_id`` in another k-of-n layout (re-layout).

        It keeps the old one's file, size, segment size and ``created`` (so the
        versions of a file keep their order) and its source; NotFound if the old
        one is gone. Per-version facts added later must be copied here too.
        """
        validate_version_id(new_id)
        suppliers = list(suppliers)
        if len(suppliers) != n or not 1 <= k <= n:
            raise BadRequest(f"invalid layout {k}-of-{n} for {len(suppliers)} positions")
        with self._transaction() as db:
            old = self._version_row(db, old_id)
            if db.execute("SELECT 1 FROM versions WHERE version_id = ?", (new_id,)).fetchone():
                raise Conflict(f"version {new_id} already exists")
            db.execute(
                "INSERT INTO versions (version_id, item_id, state, size, segment_size, segments_total, k, n,"
                " wrapped_key, suppliers, created, mode, mtime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (new_id, old["item_id"], UPLOADING, old["size"], old["segment_size"], old["segments_total"], k, n,
                 bytes(wrapped_key), json.dumps(suppliers), old["created"], old["mode"], old["mtime_ns"]))
            db.execute("INSERT INTO sources (version_id, local_path, size, mtime)"
                       " SELECT ?, local_path, size, mtime FROM sources WHERE version_id = ?", (new_id, old_id))
        return self.version(new_id)

    def replace_version(self, old_id: str, new_id: str) -> dict:
        """In one transaction: the copy ``new_id`` (every segment recorded) is complete and ``old_id`` is gone.

        The copy keeps the old one's completion time. NotFound if either is gone
        (the file was deleted or pruned meanwhile), Conflict if the copy is not whole.
        """
        with self._transaction() as db:
            old = self._version_row(db, old_id)
            new = self._version_row(db, new_id)
            have = db.execute("SELECT COUNT(*) FROM segments WHERE version_id = ?", (new_id,)).fetchone()[0]
            if have != new["segments_total"] or new["item_id"] != old["item_id"]:
                raise Conflict(f"{new_id} is not a whole copy of {old_id}")
            db.execute("UPDATE versions SET state = ?, completed = ? WHERE version_id = ?",
                       (old["state"], old["completed"], new_id))
            # The files of a pack follow it to its copy (same bytes at the same offsets).
            db.execute("UPDATE packed SET pack_id = ? WHERE pack_id = ?", (new_id, old_id))
            db.execute("DELETE FROM versions WHERE version_id = ?", (old_id,))
        return self.version(new_id)

    def source(self, version_id: str) -> dict | None:
        """``{"local_path", "size", "mtime"}`` a version was read from, or None if not recorded."""
        with self._lock:
            row = self._db.execute("SELECT local_path, size, mtime FROM sources WHERE version_id = ?",
                                   (version_id,)).fetchone()
            return dict(row) if row is not None else None

    def latest_source(self, key_id: str, path: str) -> dict | None:
        """The local file the newest version of a file was read from (any state), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT s.local_path, s.size, s.mtime FROM sources s JOIN versions v USING (version_id)"
                " JOIN items i USING (item_id) WHERE i.key_id = ? AND i.path = ?"
                " ORDER BY v.created DESC, v.version_id DESC LIMIT 1", (key_id, path)).fetchone()
            return dict(row) if row is not None else None

    def latest_complete(self, key_id: str, path: str) -> dict:
        """The newest complete version of a file; NotFound if the file or such a version is absent."""
        item = self.get(key_id, path)
        for version in item["versions"]:
            if version["state"] == COMPLETE:
                return version
        raise NotFound(f"{key_id}:{path} has no complete version")

    def version_ids_under(self, key_id: str, path: str) -> list[str]:
        """Every version of a file, or of every file under a folder; NotFound if absent.

        What :meth:`delete` would remove, without removing it: the caller
        deletes the blocks on the suppliers first.
        """
        with self._lock:
            row = self._item_row(self._db, key_id, path)
            if row is None:
                raise NotFound(f"{key_id}:{path} is not in the catalog")
            return self._version_ids_of(self._db, self._item_ids_under(self._db, row))

    def drop_version(self, version_id: str, forget_new_file: bool = False) -> None:
        """Forget one version (its segments, blocks and source go with it); NotFound if absent.

        ``forget_new_file``: when that version's upload made the file item and
        no other version is left, the item goes too (an abandoned first upload
        leaves no empty file behind).
        """
        with self._transaction() as db:
            row = db.execute("SELECT v.item_id, s.new_item FROM versions v LEFT JOIN sources s USING (version_id)"
                             " WHERE v.version_id = ?", (version_id,)).fetchone()
            if row is None:
                raise NotFound(f"no version {version_id!r} in the catalog")
            db.execute("DELETE FROM versions WHERE version_id = ?", (version_id,))
            if forget_new_file and row["new_item"] and not db.execute(
                    "SELECT 1 FROM versions WHERE item_id = ?", (row["item_id"],)).fetchone():
                db.execute("DELETE FROM items WHERE item_id = ? AND is_folder = 0 AND link_target IS NULL",
                           (row["item_id"],))

    def rewrap(self, key_id: str, rewrap: Callable[[bytes], bytes | None]) -> int:
        """Replace the wrapped version key of every version under ``key_id`` by ``rewrap(old)`` (a share key was
        renewed); None leaves one as it is. The work runs outside the lock; a row changed meanwhile is left
        alone. Returns how many were replaced."""
        with self._lock:
            rows = self._db.execute("SELECT v.version_id, v.wrapped_key FROM versions v JOIN items i USING (item_id)"
                                    " WHERE i.key_id = ?", (key_id,)).fetchall()
        updates = []
        for row in rows:
            old = bytes(row["wrapped_key"])
            new = rewrap(old)
            if new is not None:
                updates.append((new, row["version_id"], old))
        with self._transaction() as db:
            done = 0
            for new, version_id, old in updates:
                done += db.execute("UPDATE versions SET wrapped_key = ? WHERE version_id = ? AND wrapped_key = ?",
                                   (new, version_id, old)).rowcount
        return done

    def is_empty(self) -> bool:
        """True when no file or folder is catalogued."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is None

    def get_meta(self, name: str, default: str | None = None) -> str | None:
        """A node-local fact kept next to the catalog (not exported)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            return row["value"] if row is not None else default

    def set_meta(self, name: str, value: str) -> None:
        """Store a node-local fact; the catalog format entry cannot be changed this way."""
        if not isinstance(name, str) or not name or name in _RESERVED_META:
            raise BadRequest(f"invalid catalog meta name {name!r}")
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, str(value)))

    def record_segment(self, version_id: str, meta: SegmentMeta, suppliers: Iterable[str] | None = None) -> None:
        """Record one acknowledged segment: its blocks and who holds each (missing ones hold "")."""
        with self._transaction() as db:
            version = self._version_row(db, version_id)
            holders = list(suppliers) if suppliers is not None else json.loads(version["suppliers"])
            if len(meta.block_sha256) != version["n"] or len(holders) != version["n"]:
                raise BadRequest(f"segment {meta.index} of {version_id} needs {version['n']} blocks")
            if not 0 <= meta.index < version["segments_total"]:
                raise BadRequest(f"segment {meta.index} out of range for {version_id}")
            if meta.plaintext_length != segment_length(version["size"], version["segment_size"], meta.index):
                raise BadRequest(f"segment {meta.index} of {version_id} cannot be {meta.plaintext_length} bytes")
            for sha in meta.block_sha256:
                check_sha256(sha)
            db.execute("INSERT OR REPLACE INTO segments (version_id, seg_index, plaintext_length) VALUES (?, ?, ?)",
                       (version_id, meta.index, meta.plaintext_length))
            db.executemany(
                "INSERT OR REPLACE INTO blocks (version_id, seg_index, position, sha256, supplier)"
                " VALUES (?, ?, ?, ?, ?)",
                [(version_id, meta.index, pos, sha, holders[pos] if pos in meta.stored else "")
                 for pos, sha in enumerate(meta.block_sha256)])

    def finish_version(self, version_id: str, state: str = COMPLETE, now: float = 0.0) -> dict:
        """Mark a version complete (every segment recorded) or failed."""
        if state not in (COMPLETE, FAILED):
            raise BadRequest(f"a version finishes as {COMPLETE} or {FAILED}")
        with self._transaction() as db:
            version = self._version_row(db, version_id)
            if state == COMPLETE:
                have = db.execute("SELECT COUNT(*) FROM segments WHERE version_id = ?", (version_id,)).fetchone()[0]
                if have != version["segments_total"]:
                    raise Conflict(f"{version_id} has {have} of {version['segments_total']} segments recorded")
            db.execute("UPDATE versions SET state = ?, completed = ? WHERE version_id = ?", (state, now, version_id))
        return self.version(version_id)

    def version(self, version_id: str) -> dict:
        """A version with its remote path; NotFound if absent."""
        with self._lock:
            return self._version_dict(self._version_row(self._db, version_id))

    def segments(self, version_id: str) -> tuple[SegmentMeta, ...]:
        """The recorded segments of a version, as the downloader wants them."""
        with self._lock:
            self._version_row(self._db, version_id)
            out = []
            for seg in self._db.execute("SELECT * FROM segments WHERE version_id = ? ORDER BY seg_index",
                                        (version_id,)):
                blocks = self._db.execute(
                    "SELECT position, sha256, supplier FROM blocks WHERE version_id = ? AND seg_index = ?"
                    " ORDER BY position", (version_id, seg["seg_index"])).fetchall()
                out.append(SegmentMeta(seg["seg_index"], seg["plaintext_length"],
                                       tuple(b["sha256"] for b in blocks),
                                       tuple(b["position"] for b in blocks if b["supplier"])))
            return tuple(out)

    def resume_point(self, version_id: str) -> int:
        """The first segment index not yet recorded: where an interrupted upload goes on."""
        with self._lock:
            self._version_row(self._db, version_id)
            done = {r[0] for r in self._db.execute("SELECT seg_index FROM segments WHERE version_id = ?",
                                                   (version_id,))}
        index = 0
        while index in done:
            index += 1
        return index

    def versions(self, state: str | None = None) -> list[dict]:
        """Every version (optionally only those in ``state``), oldest first."""
        with self._lock:
            if state is None:
                rows = self._db.execute(_VERSIONS + " ORDER BY v.created, v.version_id").fetchall()
            else:
                rows = self._db.execute(_VERSIONS + " WHERE v.state = ? ORDER BY v.created, v.version_id",
                                        (state,)).fetchall()
            return [self._version_dict(r) for r in rows]

    def missing_blocks(self, version_id: str | None = None) -> list[tuple[str, int, int]]:
        """(version, segment, position) of every block no supplier holds: what a rebuild must make."""
        with self._lock:
            query = "SELECT version_id, seg_index, position FROM blocks WHERE supplier = ''"
            args: tuple = ()
            if version_id is not None:
                query += " AND version_id = ?"
                args = (version_id,)
            return [tuple(r) for r in self._db.execute(query + " ORDER BY version_id, seg_index, position", args)]

    def blocks_held_by(self, supplier: str) -> list[tuple[str, int, int, str]]:
        """(version, segment, position, sha256) of every block ``supplier`` acknowledged."""
        with self._lock:
            return [tuple(r) for r in self._db.execute(
                "SELECT version_id, seg_index, position, sha256 FROM blocks WHERE supplier = ?"
                " ORDER BY version_id, seg_index, position", (supplier,))]

    def blocks(self, version_id: str) -> list[tuple[int, int, str, str]]:
        """(segment, position, sha256, supplier) of every recorded block of a version ("" = missing)."""
        with self._lock:
            self._version_row(self._db, version_id)
            return [tuple(r) for r in self._db.execute(
                "SELECT seg_index, position, sha256, supplier FROM blocks WHERE version_id = ?"
                " ORDER BY seg_index, position", (version_id,))]

    def set_block_holder(self, version_id: str, seg_index: int, position: int, supplier: str) -> None:
        """Record who holds a block now ("" when it was lost): after a rebuild or a failed check."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE blocks SET supplier = ? WHERE version_id = ? AND seg_index = ? AND position = ?",
                (supplier, version_id, seg_index, position)).rowcount
            if not changed:
                raise NotFound(f"no block {version_id}/{seg_index}/{position} in the catalog")

    def set_block_holders(self, updates: Sequence[tuple[str, int, int, str]]) -> int:
        """Record many holders in one transaction, in order: ``(version_id, seg_index, position, supplier)``.

        A rebuild records its blocks in batches (one commit, so one fsync, for
        many). A block gone meanwhile (its version deleted) is skipped, not an
        error. Returns how many blocks were updated.
        """
        with self._transaction() as db:
            return sum(db.execute(
                "UPDATE blocks SET supplier = ? WHERE version_id = ? AND seg_index = ? AND position = ?",
                (supplier, version_id, seg_index, position)).rowcount
                for version_id, seg_index, position, supplier in updates)

    def forget_supplier(self, supplier: str) -> int:
        """A supplier was fired: its blocks become missing. Returns how many."""
        with self._transaction() as db:
            return db.execute("UPDATE blocks SET supplier = '' WHERE supplier = ?", (supplier,)).rowcount

    def prune_versions(self, key_id: str, path: str, keep: int) -> list[str]:
        """Drop all but the ``keep`` newest complete versions of a file (and its failed ones)."""
        if keep < 1:
            raise BadRequest("keep at least one version")
        item = self.get(key_id, path)
        complete = [v for v in item["versions"] if v["state"] == COMPLETE]
        drop = [v["version_id"] for v in complete[keep:]] + [v["version_id"] for v in item["versions"]
                                                             if v["state"] == FAILED]
        if not drop:
            return drop
        with self._transaction() as db:
            in_packs = set()
            for marks, part in self._file.in_lists(drop):
                in_packs.update(r[0] for r in db.execute(
                    f"SELECT version_id FROM packed WHERE version_id IN ({marks})", part))
                db.execute(f"DELETE FROM versions WHERE version_id IN ({marks})", part)
            if in_packs:
                add_meta_count(db, PACKED_DELETED_META, len(in_packs))
        return [v for v in drop if v not in in_packs]  # the versions whose blocks the caller deletes

    # --- backup ---------------------------------------------------------------------------

    def export(self) -> bytes:
        """The whole catalog as a versioned JSON document (bytes), for the encrypted backup (see catalog_format)."""
        with self._lock:
            return write_export(self._db)

    def export_chunks(self) -> Iterator[bytes]:
        """:meth:`export`'s bytes in pieces of bounded size, read from one snapshot of the catalog.

        A file catalog is read through a connection of its own (sqlite's WAL
        lets writers go on meanwhile), so a big catalog's backup neither holds
        the whole document in memory nor blocks listings for seconds. Worker
        thread; exhaust or close the iterator (it holds the snapshot until then).
        """
        with self._snapshot() as db:
            yield from export_chunks(db)

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on a connection of its own (under the lock for an in-memory catalog)."""
        with self._file.locked() as db:
            if self.path == ":memory:":
                yield db
                return
        reader = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode=ro", uri=True,
                                 isolation_level=None, check_same_thread=False)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # the snapshot starts at the first read
            yield reader
        finally:
            reader.close()

    def import_(self, data: bytes) -> None:
        """Replace everything with an exported document (restoring on a new machine, or a share's index).

        Every row is checked first (:func:`~bitnode.storage.catalog_format.parse_export`):
        BadRequest and nothing changed when anything is off.
        """
        rows = parse_export(data)
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM items")
                insert_rows(db, rows)
        except sqlite3.Error as err:
            raise BadRequest(f"catalog backup is not valid: {err}") from None

    def add_rows(self, rows: ExportRows) -> None:
        """Add checked rows (:func:`~bitnode.storage.catalog_format.parse_export`) in one transaction.

        For many files at once (a benchmark's catalog, a bulk import): Conflict,
        and nothing added, when one of the items or versions is there already.
        """
        try:
            with self._transaction() as db:
                insert_rows(db, rows)
        except sqlite3.IntegrityError as err:
            raise Conflict(f"rows already in the catalog: {err}") from None

    # --- rows -----------------------------------------------------------------------------

    @staticmethod
    def _item_ids_under(db: sqlite3.Connection, row: sqlite3.Row) -> list[int]:
        """The item of ``row`` and, for a folder, every item under it."""
        ids = [row["item_id"]]
        if row["is_folder"]:
            path = row["path"]
            ids += [r["item_id"] for r in db.execute(
                "SELECT item_id FROM items WHERE key_id = ? AND substr(path, 1, ?) = ?",
                (row["key_id"], len(path) + 1, path + "/"))]
        return ids

    def _version_ids_of(self, db: sqlite3.Connection, item_ids: list[int]) -> list[str]:
        """Every version of those items that holds blocks, sorted (a file in a pack holds none: its pack
        does); asked in slices: a folder may hold more than sqlite's limit."""
        found = []
        for marks, part in self._file.in_lists(item_ids):
            found += [r["version_id"] for r in db.execute(
                f"SELECT version_id FROM versions WHERE item_id IN ({marks})"
                " AND version_id NOT IN (SELECT version_id FROM packed)", part)]
        return sorted(found)

    def _count_packed_deletes(self, db: sqlite3.Connection, item_ids: list[int]) -> None:
        """Files leaving packs (deleted): counted in meta, for the repack counters."""
        gone = 0
        for marks, part in self._file.in_lists(item_ids):
            gone += db.execute(f"SELECT COUNT(*) FROM packed p JOIN versions v USING (version_id)"
                               f" WHERE v.item_id IN ({marks})", part).fetchone()[0]
        if gone:
            add_meta_count(db, PACKED_DELETED_META, gone)

    @staticmethod
    def _item_row(db: sqlite3.Connection, key_id: str, path: str) -> sqlite3.Row | None:
        return db.execute("SELECT * FROM items WHERE key_id = ? AND path = ?", (key_id, path)).fetchone()

    @staticmethod
    def _version_row(db: sqlite3.Connection, version_id: str) -> sqlite3.Row:
        row = db.execute(_VERSIONS + " WHERE v.version_id = ?", (version_id,)).fetchone()
        if row is None:
            raise NotFound(f"no version {version_id!r} in the catalog")
        return row

    @staticmethod
    def _item_dict(row: sqlite3.Row) -> dict:
        return {"remote_path": f"{row['key_id']}:{row['path']}", "key_id": row["key_id"], "path": row["path"],
                "type": _kind(row), "created": row["created"], "mode": row["mode"], "mtime_ns": row["mtime_ns"],
                "link_target": row["link_target"]}

    def _version_dict(self, row: sqlite3.Row) -> dict:
        out = {name: row[name] for name in ("version_id", "state", "size", "segment_size", "segments_total",
                                            "k", "n", "created", "completed", "mode", "mtime_ns", "segments_done")}
        out["suppliers"] = json.loads(row["suppliers"])
        out["wrapped_key"] = bytes(row["wrapped_key"])
        out["remote_path"] = f"{row['key_id']}:{row['path']}"
        if row["is_folder"]:  # a version of a folder is a pack of files uploaded into it
            out["is_pack"] = True
        if row["pack_id"] is not None:
            # Stored inside a pack: its layout, key and holders are the pack's (which may have been re-laid out).
            pack = self._db.execute("SELECT k, n, suppliers, wrapped_key, segment_size, state FROM versions"
                                    " WHERE version_id = ?", (row["pack_id"],)).fetchone()
            out.update(k=pack["k"], n=pack["n"], suppliers=json.loads(pack["suppliers"]),
                       wrapped_key=bytes(pack["wrapped_key"]), segment_size=pack["segment_size"],
                       segments_done=out["segments_total"])
            out["pack"] = {"pack_id": row["pack_id"], "offset": row["pack_offset"], "length": row["pack_length"],
                           "pack_state": pack["state"]}
        return out


def _listed_dict(key_id: str, path: str, is_folder: int, created: float, mode: int | None, mtime_ns: int | None,
                 link_target: str | None, latest_version: str | None, latest_size: int | None) -> dict:
    """A row of :data:`_LISTING` as :meth:`Catalog.list` gives it (the item's fields, then size and latest_version)."""
    return {"remote_path": f"{key_id}:{path}", "key_id": key_id, "path": path,
            "type": _kind_of(is_folder, link_target), "created": created,
            "mode": mode, "mtime_ns": mtime_ns, "link_target": link_target,
            "size": latest_size if latest_size is not None else 0, "latest_version": latest_version}


def _kind(row: sqlite3.Row) -> str:
    """What an items row is: folder, link or file."""
    return _kind_of(row["is_folder"], row["link_target"])


def _kind_of(is_folder: int, link_target: str | None) -> str:
    return "folder" if is_folder else "link" if link_target is not None else "file"
