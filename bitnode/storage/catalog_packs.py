"""The catalog's packs: a pack is a version of the folder its files were uploaded into.

See :mod:`bitnode.storage.pack_format` for the pack itself and
:mod:`bitnode.storage.catalog_file` for the ``packed`` table. A pack is
begun like any version (state ``uploading``, its segments recorded as they
are acknowledged); :meth:`CatalogPacks.finish_pack` then, in ONE transaction,
marks it complete and records every file in it as a complete version (with
its offset in the pack), and drops the versions of those files beyond the
ones kept. A crash before that transaction leaves the pack ``uploading`` and
no file of it in the catalog: nothing is reported done that is not stored.

Mixed into :class:`bitnode.storage.catalog.Catalog` (its lock, transaction
and row helpers).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Iterable

from bitnode.errors import BadRequest, BitnodeError, Conflict, NotFound
from bitnode.globalid import parse_key_id, validate_path
from bitnode.storage.catalog_format import (
    COMPLETE,
    FAILED,
    UPLOADING,
    check_mode,
    check_mtime_ns,
    check_suppliers,
    segment_count,
)
from bitnode.storage.erasure import MAX_N
from bitnode.storage.segment_crypto import validate_version_id

#: meta: how many files left a pack (deleted, or replaced by a newer version) since the catalog was made.
PACKED_DELETED_META = "packed-files-deleted"


@dataclass(frozen=True)
class PackMember:
    """One file of a pack as the catalog records it: its path below the pack's folder, its new version id,
    where its bytes are in the pack, its mode and mtime, and the local file it was read from (kept as a
    version's source is: ``backup_start_id`` uploads it again)."""

    relative: str
    version_id: str
    offset: int
    length: int
    mode: int | None = None
    mtime_ns: int | None = None
    local_path: str = ""


class CatalogPacks:
    """Pack methods of the catalog (a mixin: see the module docstring)."""

    def begin_pack(self, key_id: str, folder: str, pack_id: str, size: int, segment_size: int, k: int, n: int,
                   wrapped_key: bytes, suppliers: Iterable[str], now: float = 0.0) -> dict:
        """Record a pack being uploaded into the folder ``key_id:folder`` (made if needed)."""
        validate_version_id(pack_id)
        suppliers = check_suppliers(list(suppliers), n)
        if not folder:
            raise BadRequest("a pack belongs to a named folder, not to the root")
        if not 1 <= k <= n <= MAX_N or size < 0 or segment_size <= 0:
            raise BadRequest("invalid pack parameters")
        parse_key_id(key_id)
        validate_path(folder)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM versions WHERE version_id = ?", (pack_id,)).fetchone():
                raise Conflict(f"version {pack_id} already exists")
            self._ensure_item(db, key_id, folder, True, True, now)
            item = self._item_row(db, key_id, folder)
            db.execute(
                "INSERT INTO versions (version_id, item_id, state, size, segment_size, segments_total, k, n,"
                " wrapped_key, suppliers, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pack_id, item["item_id"], UPLOADING, size, segment_size, segment_count(size, segment_size), k, n,
                 bytes(wrapped_key), json.dumps(suppliers), now))
        return self.version(pack_id)

    def finish_pack(self, pack_id: str, members: Iterable[PackMember], now: float = 0.0,
                    keep: int = 2) -> dict:
        """One transaction: the pack is complete and each member a complete version of its file.

        Older versions of those files beyond the ``keep`` newest complete ones
        (and failed ones) are dropped. Returns ``{"files": recorded,
        "dropped": [ids whose blocks the caller deletes], "skipped": [{"path",
        "error"}]}`` (a member whose path is now a folder or a link is skipped).
        Conflict if a segment of the pack is not recorded.
        """
        members = list(members)
        for m in members:
            validate_version_id(m.version_id)
            validate_path(m.relative)
            check_mode(m.mode)
            check_mtime_ns(m.mtime_ns)
        if keep < 1:
            raise BadRequest("keep at least one version")
        recorded, dropped, skipped, packed_dropped = 0, [], [], 0
        with self._transaction() as db:
            pack = self._version_row(db, pack_id)
            folder = db.execute("SELECT is_folder FROM items WHERE item_id = ?", (pack["item_id"],)).fetchone()
            if pack["state"] != UPLOADING or not folder["is_folder"]:
                raise Conflict(f"{pack_id} is not a pack being uploaded")
            have = db.execute("SELECT COUNT(*) FROM segments WHERE version_id = ?", (pack_id,)).fetchone()[0]
            if have != pack["segments_total"]:
                raise Conflict(f"{pack_id} has {have} of {pack['segments_total']} segments recorded")
            for m in members:
                if not 0 <= m.offset <= m.offset + m.length <= pack["size"]:
                    raise BadRequest(f"{m.relative} lies outside pack {pack_id}")
            db.execute("UPDATE versions SET state = ?, completed = ? WHERE version_id = ?", (COMPLETE, now, pack_id))
            key_id, base = pack["key_id"], pack["path"]
            for m in members:
                path = f"{base}/{m.relative}"
                try:
                    self._ensure_item(db, key_id, path, False, True, now)
                except BitnodeError as err:
                    skipped.append({"path": f"{key_id}:{path}", "error": str(err)})
                    continue
                item_id = self._item_row(db, key_id, path)["item_id"]
                db.execute(
                    "INSERT INTO versions (version_id, item_id, state, size, segment_size, segments_total, k, n,"
                    " wrapped_key, suppliers, created, completed, mode, mtime_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    # No key of its own (b""): a file of a pack is read with its pack's key, whatever pack that is.
                    (m.version_id, item_id, COMPLETE, m.length, pack["segment_size"],
                     segment_count(m.length, pack["segment_size"]), pack["k"], pack["n"], b"",
                     pack["suppliers"], now, now, m.mode, m.mtime_ns))
                db.execute("INSERT INTO packed (version_id, pack_id, offset, length) VALUES (?, ?, ?, ?)",
                           (m.version_id, pack_id, m.offset, m.length))
                if m.local_path:
                    db.execute("INSERT INTO sources (version_id, local_path, size, mtime) VALUES (?, ?, ?, ?)",
                               (m.version_id, m.local_path, m.length, (m.mtime_ns or 0) / 1e9))
                recorded += 1
                old = db.execute("SELECT v.version_id, v.state, p.pack_id FROM versions v"
                                 " LEFT JOIN packed p USING (version_id) WHERE v.item_id = ? AND v.version_id != ?"
                                 " ORDER BY v.created DESC, v.version_id DESC", (item_id, m.version_id)).fetchall()
                complete_kept = 1
                for row in old:
                    if row["state"] == UPLOADING:
                        continue  # a single upload of this file still running: its job decides
                    if row["state"] == COMPLETE and complete_kept < keep:
                        complete_kept += 1
                        continue
                    db.execute("DELETE FROM versions WHERE version_id = ?", (row["version_id"],))
                    if row["pack_id"] is None:
                        dropped.append(row["version_id"])
                    else:
                        packed_dropped += 1
            if packed_dropped:
                add_meta_count(db, PACKED_DELETED_META, packed_dropped)
        return {"files": recorded, "dropped": sorted(dropped), "skipped": skipped}

    def pack_members(self, pack_id: str) -> list[dict]:
        """The files of a pack: ``{"version_id", "remote_path", "path", "offset", "length", "mode", "mtime_ns"}``,
        in offset order; NotFound if there is no such pack."""
        with self._lock:
            self._version_row(self._db, pack_id)
            rows = self._db.execute(
                "SELECT p.version_id, p.offset, p.length, v.mode, v.mtime_ns, i.key_id, i.path FROM packed p"
                " JOIN versions v USING (version_id) JOIN items i ON i.item_id = v.item_id"
                " WHERE p.pack_id = ? ORDER BY p.offset", (pack_id,)).fetchall()
        return [{"version_id": r["version_id"], "remote_path": f"{r['key_id']}:{r['path']}", "path": r["path"],
                 "offset": r["offset"], "length": r["length"], "mode": r["mode"], "mtime_ns": r["mtime_ns"]}
                for r in rows]

    def packed_under(self, key_id: str, folder: str) -> list[dict]:
        """The files under ``key_id:folder`` whose newest complete version is in a pack, as
        :meth:`pack_members` gives them plus ``pack_id``; by pack, then offset."""
        with self._lock:
            rows = self._db.execute(
                "SELECT v.version_id, p.pack_id, p.offset, p.length, v.mode, v.mtime_ns, i.key_id, i.path"
                " FROM items i JOIN versions v ON v.item_id = i.item_id JOIN packed p ON p.version_id = v.version_id"
                " WHERE i.key_id = ? AND substr(i.path, 1, ?) = ? AND i.is_folder = 0 AND v.state = ?"
                " AND v.version_id = (SELECT v2.version_id FROM versions v2 WHERE v2.item_id = i.item_id"
                " AND v2.state = ? ORDER BY v2.created DESC, v2.version_id DESC LIMIT 1)"
                " ORDER BY p.pack_id, p.offset", (key_id, len(folder) + 1, folder + "/", COMPLETE, COMPLETE)).fetchall()
        return [{"version_id": r["version_id"], "pack_id": r["pack_id"], "remote_path": f"{r['key_id']}:{r['path']}",
                 "path": r["path"], "offset": r["offset"], "length": r["length"], "mode": r["mode"],
                 "mtime_ns": r["mtime_ns"]} for r in rows]

    def packs(self) -> list[dict]:
        """Every pack: ``{"pack_id", "remote_path", "state", "size", "files", "live_bytes"}`` (live: the
        bytes of files still in the catalog), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT v.version_id, v.state, v.size, i.key_id, i.path,"
                " (SELECT COUNT(*) FROM packed p WHERE p.pack_id = v.version_id) AS files,"
                " (SELECT COALESCE(SUM(p.length), 0) FROM packed p WHERE p.pack_id = v.version_id) AS live"
                " FROM versions v JOIN items i USING (item_id) WHERE i.is_folder = 1"
                " ORDER BY v.created, v.version_id").fetchall()
        return [{"pack_id": r["version_id"], "remote_path": f"{r['key_id']}:{r['path']}", "state": r["state"],
                 "size": r["size"], "files": r["files"], "live_bytes": r["live"]} for r in rows]

    def finish_repack(self, old_pack: str, new_pack: str, moves: Iterable[tuple[str, int]], now: float = 0.0) -> int:
        """Repack, in ONE transaction: the new pack (every segment recorded) is complete and the files
        ``(version_id, new offset)`` live in it; returns how many moved (a file deleted meanwhile does not).
        The old pack is left to the caller (its blocks deleted, then its row). Conflict if the new pack is
        not whole."""
        moved = 0
        with self._transaction() as db:
            new = self._version_row(db, new_pack)
            old = self._version_row(db, old_pack)
            have = db.execute("SELECT COUNT(*) FROM segments WHERE version_id = ?", (new_pack,)).fetchone()[0]
            if new["state"] != UPLOADING or have != new["segments_total"] or new["item_id"] != old["item_id"]:
                raise Conflict(f"{new_pack} is not a whole new pack of the folder of {old_pack}")
            db.execute("UPDATE versions SET state = ?, completed = ? WHERE version_id = ?", (COMPLETE, now, new_pack))
            for version_id, offset in moves:
                moved += db.execute("UPDATE packed SET pack_id = ?, offset = ? WHERE version_id = ? AND pack_id = ?",
                                    (new_pack, offset, version_id, old_pack)).rowcount
            # The files of the new pack take its layout and holders (their key is always read from their pack).
            db.execute("UPDATE versions SET k = ?, n = ?, suppliers = ?, segment_size = ?"
                       " WHERE version_id IN (SELECT version_id FROM packed WHERE pack_id = ?)",
                       (new["k"], new["n"], new["suppliers"], new["segment_size"], new_pack))
        return moved

    def finish_pack_failed(self, pack_id: str, now: float = 0.0) -> None:
        """A pack that will never complete (its files were never recorded): FAILED, for the caller to drop."""
        with self._transaction() as db:
            changed = db.execute("UPDATE versions SET state = ?, completed = ? WHERE version_id = ? AND state = ?",
                                 (FAILED, now, pack_id, UPLOADING)).rowcount
            if not changed:
                raise NotFound(f"no pack {pack_id} being uploaded")


def add_meta_count(db: sqlite3.Connection, name: str, count: int) -> None:
    """Add ``count`` to the number kept in meta ``name`` (inside the caller's transaction)."""
    row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    before = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
    db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, str(before + count)))
