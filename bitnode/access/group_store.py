"""What a member keeps on disk about its groups (``metadata/groups.sqlite``).

One sqlite file (:class:`~bitnode.main.sqlitedb.SqliteFile`: WAL, FULL sync),
format :data:`STORE_FORMAT`. (The logs this node hosts as a broker are in
another file, :mod:`bitnode.access.group_log`.)

- ``groups``   every group this node was invited to or created: its signed ``config``, who invited
  it, and the last broker known to lead it (``leader``, ``term``: where to ask first);
- ``cursors``  ``active`` (joined: rejoined when the node starts) and ``last_sequence``, the newest
  entry stored in the message history. It may lag behind the history after a crash: entries are
  fetched again and the history stores a message once;
- ``secrets``  the group's message keys by generation (from the key bundles of the roster);
- ``recent``   the newest entries as they came (sealed), a bounded tail per group that goes into the
  catalog backup (:mod:`bitnode.access.group_backup`).

Every write is one committed transaction before the caller answers anyone.
The class is synchronous and thread-safe; the node calls it from its thread pool.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Optional

from bitnode.main.sqlitedb import SqliteFile

STORE_FORMAT = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
    group_key_id TEXT PRIMARY KEY,
    config       TEXT NOT NULL,
    invited_by   TEXT NOT NULL DEFAULT '',
    invited      REAL NOT NULL DEFAULT 0,
    leader       TEXT NOT NULL DEFAULT '',
    term         INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS cursors (
    group_key_id  TEXT PRIMARY KEY,
    active        INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL,
    changed       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    group_key_id TEXT NOT NULL,
    generation   INTEGER NOT NULL,
    secret       BLOB NOT NULL,
    PRIMARY KEY (group_key_id, generation)
);
CREATE TABLE IF NOT EXISTS recent (
    group_key_id TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    blob         BLOB NOT NULL,
    PRIMARY KEY (group_key_id, seq)
);
"""


def _migrate(db: sqlite3.Connection, old: int) -> None:
    """Format 1 kept the single broker's queue in this file and had no configs: its groups cannot work with
    several brokers, so only the file is kept (the tables of format 2 are created by the schema)."""
    for table in ("queues", "entries", "members"):
        db.execute(f"DROP TABLE IF EXISTS {table}")
    db.execute("DELETE FROM cursors")


class GroupStore:
    """The groups file at ``path`` (``":memory:"`` for tests)."""

    def __init__(self, path: str) -> None:
        self._file = SqliteFile(path, _SCHEMA, STORE_FORMAT, "group store", migrate=_migrate)

    def close(self) -> None:
        """Close the database."""
        self._file.close()

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._file.locked() as db:
            return db.execute(sql, args).fetchall()

    # -- groups ------------------------------------------------------------------------------

    def add_group(self, group_key_id: str, config: str, invited_by: str, now: float) -> None:
        """Remember a group's (checked) config; a group known already keeps its first one."""
        with self._file.transaction() as db:
            db.execute("INSERT OR IGNORE INTO groups (group_key_id, config, invited_by, invited) VALUES (?, ?, ?, ?)",
                       (group_key_id, config, invited_by, float(now)))

    def groups(self) -> dict[str, dict]:
        """``{group_key_id: {"config", "invited_by", "invited", "leader", "term"}}``."""
        return {row["group_key_id"]: {"config": row["config"], "invited_by": row["invited_by"],
                                      "invited": row["invited"], "leader": row["leader"], "term": row["term"]}
                for row in self._read("SELECT * FROM groups ORDER BY group_key_id")}

    def set_leader(self, group_key_id: str, leader: str, term: int) -> None:
        """Where to ask first next time."""
        with self._file.transaction() as db:
            db.execute("UPDATE groups SET leader = ?, term = ? WHERE group_key_id = ? AND term <= ?",
                       (leader, int(term), group_key_id, int(term)))

    def forget_group(self, group_key_id: str) -> None:
        """Forget everything about a group (its key was erased)."""
        with self._file.transaction() as db:
            for table in ("groups", "cursors", "secrets", "recent"):
                db.execute(f"DELETE FROM {table} WHERE group_key_id = ?", (group_key_id,))

    # -- memberships -------------------------------------------------------------------------

    def cursors(self) -> dict[str, dict]:
        """Every group this node joined once: ``{group_key_id: {"active", "last_sequence", "changed"}}``."""
        rows = self._read("SELECT * FROM cursors ORDER BY group_key_id")
        return {row["group_key_id"]: {"active": bool(row["active"]), "last_sequence": row["last_sequence"],
                                      "changed": row["changed"]} for row in rows}

    def save_cursor(self, group_key_id: str, active: bool, last_sequence: int, now: float) -> None:
        """Record whether this node is in a group and how far it has stored the group's messages."""
        with self._file.transaction() as db:
            db.execute("INSERT OR REPLACE INTO cursors (group_key_id, active, last_sequence, changed)"
                       " VALUES (?, ?, ?, ?)", (group_key_id, int(active), int(last_sequence), float(now)))

    def drop_cursor(self, group_key_id: str) -> None:
        """Forget a membership."""
        with self._file.transaction() as db:
            db.execute("DELETE FROM cursors WHERE group_key_id = ?", (group_key_id,))

    # -- keys ----------------------------------------------------------------------------------

    def add_secrets(self, group_key_id: str, generations: dict[int, bytes]) -> None:
        """Keep message keys (a generation known already keeps its key)."""
        with self._file.transaction() as db:
            for generation, secret in generations.items():
                db.execute("INSERT OR IGNORE INTO secrets (group_key_id, generation, secret) VALUES (?, ?, ?)",
                           (group_key_id, int(generation), bytes(secret)))

    def secrets(self, group_key_id: Optional[str] = None) -> dict[str, dict[int, bytes]]:
        """``{group_key_id: {generation: secret}}`` (of one group, when given)."""
        if group_key_id is None:
            rows = self._read("SELECT * FROM secrets ORDER BY group_key_id, generation")
        else:
            rows = self._read("SELECT * FROM secrets WHERE group_key_id = ? ORDER BY generation", (group_key_id,))
        result: dict[str, dict[int, bytes]] = {}
        for row in rows:
            result.setdefault(row["group_key_id"], {})[row["generation"]] = bytes(row["secret"])
        return result

    # -- the recent tail (for the backup) --------------------------------------------------------

    def keep_recent(self, group_key_id: str, seq: int, blob: bytes, keep: int) -> None:
        """Keep an entry as it came, and only the newest ``keep`` of the group."""
        with self._file.transaction() as db:
            db.execute("INSERT OR IGNORE INTO recent (group_key_id, seq, blob) VALUES (?, ?, ?)",
                       (group_key_id, int(seq), bytes(blob)))
            db.execute("DELETE FROM recent WHERE group_key_id = ? AND seq <= (SELECT seq FROM recent"
                       " WHERE group_key_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                       (group_key_id, group_key_id, max(0, int(keep))))

    def recent(self, group_key_id: str, max_bytes: int) -> list[tuple[int, bytes]]:
        """The newest kept entries of a group, oldest first, about ``max_bytes`` in all."""
        rows = self._read("SELECT seq, blob FROM recent WHERE group_key_id = ? ORDER BY seq DESC", (group_key_id,))
        picked, size = [], 0
        for row in rows:
            if size + len(row["blob"]) > max_bytes:
                break
            picked.append((row["seq"], bytes(row["blob"])))
            size += len(row["blob"])
        return picked[::-1]

    def describe(self) -> dict[str, Any]:
        """Counts for service_info."""
        with self._file.locked() as db:
            return {"groups_known": db.execute("SELECT COUNT(*) FROM groups").fetchone()[0],
                    "memberships": db.execute("SELECT COUNT(*) FROM cursors WHERE active").fetchone()[0],
                    "recent_entries": db.execute("SELECT COUNT(*) FROM recent").fetchone()[0]}
