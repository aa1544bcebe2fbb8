"""The supplier's index of stored blocks: the size and SHA-256 of each, taken when the block was written.

A ``ListFiles`` answer carries every listed block's size and SHA-256. Hashing
the files for each listing made one customer's ``ListFiles ""`` cost the
supplier a full read of that customer's data, as often as it was asked.
Instead the store hashes a block once, when it arrives (its bytes are in
memory then), and keeps the hash here together with the file's identity at
that moment: size, ``st_mtime_ns`` and inode.

One sqlite file, ``basedir/metadata/supplier-blocks.sqlite`` for the supplier
(``<store root>/.index.sqlite`` when the store is given no path; format :data:`INDEX_FORMAT`,
WAL, ``synchronous=NORMAL``): the index is a cache of the disk, never the
truth, so it need not be flushed with every block. When a customer's space is
first used after a start, :class:`~bitnode.supplier.disk_store.DiskStore`
walks it and compares every file's identity with its row: a row whose file is
gone is dropped; a file without a row, or whose identity changed (an
overwrite whose row was lost in a power cut, a file put there by hand), is
hashed again, by the first listing that includes it (until then its row says
:data:`UNHASHED`, so the walk costs a ``stat`` per file, not a read). From then on every write and delete
of that space goes through the store under the customer's lock, so the rows
stay exact and a listing is one query.

Rows are keyed by the customer's directory name (see
:func:`~bitnode.supplier.disk_store.customer_dirname`) and the block path.
Blocking calls, thread-safe (one lock around the one connection): the store
calls them from its worker threads.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from bitnode.main.sqlitedb import SqliteFile

INDEX_FORMAT = 1
INDEX_NAME = ".index.sqlite"
#: The hash of a row whose file was found by a walk and is not hashed yet (the next listing of it does).
UNHASHED = ""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    space    TEXT NOT NULL,
    path     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    sha256   TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode    INTEGER NOT NULL,
    PRIMARY KEY (space, path)
) WITHOUT ROWID;
"""


class FileIdentity(NamedTuple):
    """What says a file is still the one that was hashed."""

    size: int
    mtime_ns: int
    inode: int


class IndexedBlock(NamedTuple):
    """One row: a block path, its identity on disk and its SHA-256 hex."""

    path: str
    identity: FileIdentity
    sha256: str


def _prefix_clause(prefix: str) -> tuple[str, tuple]:
    """SQL selecting the paths a listing prefix means: "" all, "a/" a subtree, else one path."""
    if prefix == "":
        return "", ()
    if prefix.endswith("/"):
        # Paths are ASCII; "0" is the character after "/", so this range is exactly the subtree.
        return " AND path >= ? AND path < ?", (prefix, prefix[:-1] + "0")
    return " AND path = ?", (prefix,)


class BlockIndex:
    """The index file at ``path`` (``":memory:"`` for tests)."""

    def __init__(self, path: str):
        self._file = SqliteFile(path, _SCHEMA, INDEX_FORMAT, "supplier block index", synchronous="NORMAL")

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def put(self, space: str, block: IndexedBlock) -> None:
        """Record (or replace) one block's row."""
        self.replace(space, (block,), ())

    def replace(self, space: str, stale: Iterable[IndexedBlock], gone: Iterable[str]) -> None:
        """One transaction: write the ``stale`` rows again and drop the rows of ``gone`` paths."""
        with self._file.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
                           [(space, b.path, b.identity.size, b.sha256, b.identity.mtime_ns, b.identity.inode)
                            for b in stale])
            db.executemany("DELETE FROM blocks WHERE space = ? AND path = ?", [(space, p) for p in gone])

    def remove(self, space: str, paths: Iterable[str]) -> None:
        """Drop the rows of ``paths``."""
        self.replace(space, (), paths)

    def drop_space(self, space: str) -> None:
        """Drop every row of one customer."""
        with self._file.transaction() as db:
            db.execute("DELETE FROM blocks WHERE space = ?", (space,))

    def identities(self, space: str) -> dict[str, FileIdentity]:
        """Every row of one customer as ``{path: identity}`` (for the walk that checks them)."""
        with self._file.lock:
            rows = self._file.db.execute("SELECT path, size, mtime_ns, inode FROM blocks WHERE space = ?",
                                         (space,)).fetchall()
        return {row["path"]: FileIdentity(row["size"], row["mtime_ns"], row["inode"]) for row in rows}

    def listing(self, space: str, prefix: str, after: str = "", limit: int = -1) -> dict[str, tuple[int, str]]:
        """``{path: (size, sha256)}`` of the blocks a listing prefix selects, sorted by path.

        ``after``: only paths sorting after it; ``limit``: at most that many (-1: all).
        """
        clause, args = _prefix_clause(prefix)
        with self._file.lock:
            rows = self._file.db.execute(
                f"SELECT path, size, sha256 FROM blocks WHERE space = ?{clause} AND path > ? ORDER BY path LIMIT ?",
                (space, *args, after, int(limit))).fetchall()
        return {row["path"]: (row["size"], row["sha256"]) for row in rows}

    def sizes(self, space: str, prefix: str) -> dict[str, int]:
        """``{path: size}`` of the blocks a prefix selects (what a delete removes)."""
        clause, args = _prefix_clause(prefix)
        with self._file.lock:
            rows = self._file.db.execute(f"SELECT path, size FROM blocks WHERE space = ?{clause}",
                                         (space, *args)).fetchall()
        return {row["path"]: row["size"] for row in rows}

    def shortfall(self, space: str, min_charge: int) -> int:
        """What charging every block of one customer at least ``min_charge`` adds to their sizes."""
        with self._file.lock:
            row = self._file.db.execute("SELECT COALESCE(SUM(MAX(? - size, 0)), 0) FROM blocks WHERE space = ?",
                                        (int(min_charge), space)).fetchone()
        return int(row[0])
