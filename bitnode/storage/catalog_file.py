"""The catalog's sqlite file: its tables, their format, the migration from format 1, and the soundness check.

Tables, format version :data:`CATALOG_FORMAT`:

- ``items``     one row per file, folder or symbolic link: (key_id, path)
  unique; parent folders are created implicitly, as a file system would show
  them; a folder keeps its mode and mtime, a link its target text;
- ``versions``  one row per stored version of a file: its id (the block path
  prefix on suppliers), state (``uploading`` → ``complete`` / ``failed``), size,
  segment size and count, the erasure parameters k-of-n, the version key
  wrapped with the owner's key, which supplier held which position when it
  was uploaded, and the mode and mtime of the file it was read from;
- ``segments``  per version and segment: plaintext length;
- ``blocks``    per segment and position: the block's SHA-256, the supplier
  that acknowledged it (empty when it is missing and must be rebuilt);
- ``sources``   per version: the local file it was read from, with the size
  and mtime seen when the version began, so an interrupted upload resumes
  only while the file is unchanged, and whether its upload made the file item
  (an abandoned first upload removes it again). Local to this machine: not
  exported.
- ``packed``    per file version stored inside a pack (format 4): the pack's
  version id, the offset and length of the file's bytes in it. A pack is a
  version of the folder the files were uploaded into (a version of a folder
  is a pack: :mod:`bitnode.storage.pack_format`); the files of a pack are
  always under its folder, so deleting that folder deletes the pack too.
  A file version in ``packed`` has no segments of its own.
- ``meta``      the format and small node-local facts.

Format 2 added the metadata columns (items: mode, mtime_ns, link_target;
versions: mode, mtime_ns), format 3 ``sources.new_item``; older files are
migrated when opened (:func:`migrate`; the new columns are NULL: unknown, or 0).
Format 4 added the ``packed`` table (created empty for an older file).

:func:`check_file` raises :class:`CatalogUnreadable` for a file sqlite
cannot read, that its ``quick_check`` finds damaged, or that holds tables but
no catalog.
"""

from __future__ import annotations

import os
import sqlite3

from bitnode.errors import BitnodeError

CATALOG_FORMAT = 4
#: The folder an item is in, with its trailing slash ("a/b/" for "a/b/c", "" at the root): rtrim drops the
#: trailing characters found in its second argument, here every character of the path but "/", so it stops
#: at the last "/". sqlite has no "last index of"; this expression is what ``items_by_parent`` indexes, and
#: a query uses that index only when it writes the same expression.
PARENT_OF_PATH = "rtrim(path, replace(path, '/', ''))"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id    TEXT NOT NULL,
    path      TEXT NOT NULL,
    is_folder INTEGER NOT NULL,
    created   REAL NOT NULL,
    mode        INTEGER,
    mtime_ns    INTEGER,
    link_target TEXT,
    UNIQUE (key_id, path)
);
-- A folder's own entries (files_list recursive=false) without reading its subfolders' (added after format 3:
-- an index only, the format did not change; an older file gets it when it is next opened).
CREATE INDEX IF NOT EXISTS items_by_parent ON items(key_id, {PARENT_OF_PATH}, path);
CREATE TABLE IF NOT EXISTS versions (
    version_id     TEXT PRIMARY KEY,
    item_id        INTEGER NOT NULL REFERENCES items(item_id) ON DELETE CASCADE,
    state          TEXT NOT NULL,
    size           INTEGER NOT NULL,
    segment_size   INTEGER NOT NULL,
    segments_total INTEGER NOT NULL,
    k              INTEGER NOT NULL,
    n              INTEGER NOT NULL,
    wrapped_key    BLOB NOT NULL,
    suppliers      TEXT NOT NULL,
    created        REAL NOT NULL,
    completed      REAL,
    mode           INTEGER,
    mtime_ns       INTEGER
);
CREATE INDEX IF NOT EXISTS versions_by_item ON versions(item_id);
-- An item's newest complete version (every listed row asks for it) in one probe, no sort.
CREATE INDEX IF NOT EXISTS versions_latest ON versions(item_id, state, created);
CREATE TABLE IF NOT EXISTS segments (
    version_id       TEXT NOT NULL REFERENCES versions(version_id) ON DELETE CASCADE,
    seg_index        INTEGER NOT NULL,
    plaintext_length INTEGER NOT NULL,
    PRIMARY KEY (version_id, seg_index)
);
CREATE TABLE IF NOT EXISTS blocks (
    version_id TEXT NOT NULL,
    seg_index  INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    supplier   TEXT NOT NULL,
    PRIMARY KEY (version_id, seg_index, position),
    FOREIGN KEY (version_id, seg_index) REFERENCES segments(version_id, seg_index) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS sources (
    version_id TEXT PRIMARY KEY REFERENCES versions(version_id) ON DELETE CASCADE,
    local_path TEXT NOT NULL,
    size       INTEGER NOT NULL,
    mtime      REAL NOT NULL,
    new_item   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS packed (
    version_id TEXT PRIMARY KEY REFERENCES versions(version_id) ON DELETE CASCADE,
    pack_id    TEXT NOT NULL REFERENCES versions(version_id) ON DELETE CASCADE,
    offset     INTEGER NOT NULL,
    length     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS packed_by_pack ON packed(pack_id);
"""

#: Columns added since format 1, by the format that added them: (table, column, type).
_ADDED_COLUMNS = (
    (2, "items", "mode", "INTEGER"), (2, "items", "mtime_ns", "INTEGER"), (2, "items", "link_target", "TEXT"),
    (2, "versions", "mode", "INTEGER"), (2, "versions", "mtime_ns", "INTEGER"),
    (3, "sources", "new_item", "INTEGER NOT NULL DEFAULT 0"),
)


def migrate(db: sqlite3.Connection, old_format: int) -> None:
    """Format 1, 2 or 3 → 4: the columns added since, NULL (unknown) or 0 for what was stored before.

    (Format 4's ``packed`` table is made by the schema itself, empty.)
    """
    for added_in, table, column, kind in _ADDED_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if added_in > old_format and column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


class CatalogUnreadable(BitnodeError):
    """The catalog file is damaged (sqlite cannot read it) or is not a catalog."""

    http_code = 503


def check_file(path: str) -> None:
    """CatalogUnreadable unless ``path`` is missing, empty, or a sound sqlite file holding a catalog."""
    if path == ":memory:" or not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    try:
        db = sqlite3.connect(path)
    except sqlite3.Error as err:
        raise CatalogUnreadable(f"sqlite cannot open it: {err}") from None
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        check = [row[0] for row in db.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise CatalogUnreadable(f"sqlite finds it damaged: {'; '.join(map(str, check[:3]))}")
        found = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() if "meta" in tables else None
        if tables and (found is None or not str(found[0]).isdigit() or not {"items", "versions"} <= tables):
            raise CatalogUnreadable("it is an sqlite file but not a catalog")
    except sqlite3.Error as err:
        raise CatalogUnreadable(f"sqlite cannot read it: {err}") from None
    finally:
        db.close()
