"""What groups keep on disk: the queues this node hosts, and where its memberships stand.

One sqlite file (``metadata/groups.sqlite``, format :data:`STORE_FORMAT`,
opened by :class:`~bitnode.main.sqlitedb.SqliteFile`: WAL, FULL sync).

Broker side (the groups this node created):

- ``queues``   one row per hosted group queue: ``head`` is the newest sequence number;
- ``entries``  the queue: ``(group_key_id, sequence)`` -> the sealed message
  (``blob``) with its sender, message id and times. A sender's message id is
  unique in a queue, so a publish repeated after a lost ``Ack`` gets its
  first sequence number back instead of a second entry;
- ``members``  who proved they hold the group key (``verified``), who is
  subscribed (the queue's *consumers*) and how much each published (its
  *producers*).

Member side (every group this node joined, its own included):

- ``cursors``  ``active`` (joined: rejoined when the node starts) and
  ``last_sequence``, the newest entry stored in the message history. It may
  lag behind the history after a crash: entries are fetched again and the
  history stores a message once.

Every write is one committed transaction before the caller answers anyone.
The class is synchronous and thread-safe; the node calls it from its thread pool.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from bitnode.errors import NotFound
from bitnode.main.sqlitedb import SqliteFile

STORE_FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queues (
    group_key_id TEXT PRIMARY KEY,
    created      REAL NOT NULL,
    head         INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS entries (
    group_key_id TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    sender       TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    time         REAL NOT NULL,
    stored_time  REAL NOT NULL,
    blob         BLOB NOT NULL,
    PRIMARY KEY (group_key_id, sequence),
    UNIQUE (group_key_id, sender, message_id)
);
CREATE TABLE IF NOT EXISTS members (
    group_key_id    TEXT NOT NULL,
    member_id       TEXT NOT NULL,
    verified        INTEGER NOT NULL DEFAULT 0,
    verified_time   REAL NOT NULL DEFAULT 0,
    subscribed      INTEGER NOT NULL DEFAULT 0,
    subscribed_time REAL NOT NULL DEFAULT 0,
    published       INTEGER NOT NULL DEFAULT 0,
    last_sequence   INTEGER NOT NULL DEFAULT 0,
    last_published  REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (group_key_id, member_id)
);
CREATE TABLE IF NOT EXISTS cursors (
    group_key_id  TEXT PRIMARY KEY,
    active        INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL,
    changed       REAL NOT NULL
);
"""


def _member(row: sqlite3.Row) -> dict:
    return {
        "group_key_id": row["group_key_id"],
        "member_id": row["member_id"],
        "verified": bool(row["verified"]),
        "verified_time": row["verified_time"],
        "subscribed": bool(row["subscribed"]),
        "subscribed_time": row["subscribed_time"],
        "published": row["published"],
        "last_sequence": row["last_sequence"],
        "last_published": row["last_published"],
    }


class GroupStore:
    """The groups file at ``path`` (``":memory:"`` for tests)."""

    def __init__(self, path: str) -> None:
        self._file = SqliteFile(path, _SCHEMA, STORE_FORMAT, "group store")

    def close(self) -> None:
        """Close the database."""
        self._file.close()

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._file.locked() as db:
            return db.execute(sql, args).fetchall()

    # -- hosted queues ------------------------------------------------------------------

    def create_queue(self, group_key_id: str, now: float) -> dict:
        """Host a new, empty queue (kept as it is if it exists); its summary."""
        with self._file.transaction() as db:
            db.execute("INSERT OR IGNORE INTO queues (group_key_id, created, head) VALUES (?, ?, 0)",
                       (group_key_id, float(now)))
        return self.queue(group_key_id)

    def delete_queue(self, group_key_id: str) -> bool:
        """Forget a hosted queue, its entries and its members; whether it existed."""
        with self._file.transaction() as db:
            cursor = db.execute("DELETE FROM queues WHERE group_key_id = ?", (group_key_id,))
            db.execute("DELETE FROM entries WHERE group_key_id = ?", (group_key_id,))
            db.execute("DELETE FROM members WHERE group_key_id = ?", (group_key_id,))
        return cursor.rowcount > 0

    def queue_ids(self) -> list[str]:
        """The hosted queues."""
        return [row[0] for row in self._read("SELECT group_key_id FROM queues ORDER BY created, group_key_id")]

    def queues(self) -> list[dict]:
        """Every hosted queue: ``{group_key_id, created, head, messages, consumers, producers}``."""
        rows = self._read(
            "SELECT q.group_key_id, q.created, q.head,"
            " (SELECT COUNT(*) FROM entries e WHERE e.group_key_id = q.group_key_id) AS messages,"
            " (SELECT COUNT(*) FROM members m WHERE m.group_key_id = q.group_key_id AND m.subscribed) AS consumers,"
            " (SELECT COUNT(*) FROM members m WHERE m.group_key_id = q.group_key_id AND m.published > 0)"
            " AS producers FROM queues q ORDER BY q.created, q.group_key_id")
        return [dict(row) for row in rows]

    def queue(self, group_key_id: str) -> dict:
        """One hosted queue's summary (NotFound if this node does not host it)."""
        for found in self.queues():
            if found["group_key_id"] == group_key_id:
                return found
        raise NotFound(f"this node hosts no queue for group {group_key_id}")

    def restore_queue(self, group_key_id: str, created: float, head: int, members: list[dict]) -> dict:
        """Host a queue again from a backup (no entries): its head is at least ``head`` so sequence numbers
        go on after the backed-up ones; members (``member_id``, ``verified``, ``subscribed``) not known are
        added. Its summary."""
        with self._file.transaction() as db:
            db.execute("INSERT OR IGNORE INTO queues (group_key_id, created, head) VALUES (?, ?, 0)",
                       (group_key_id, float(created)))
            db.execute("UPDATE queues SET head = MAX(head, ?) WHERE group_key_id = ?", (int(head), group_key_id))
            for member in members:
                db.execute("INSERT OR IGNORE INTO members (group_key_id, member_id, verified, subscribed)"
                           " VALUES (?, ?, ?, ?)", (group_key_id, member["member_id"], int(member["verified"]),
                                                   int(member["subscribed"])))
        return self.queue(group_key_id)

    def head(self, group_key_id: str) -> int:
        """The newest sequence number of a hosted queue (NotFound if not hosted)."""
        rows = self._read("SELECT head FROM queues WHERE group_key_id = ?", (group_key_id,))
        if not rows:
            raise NotFound(f"this node hosts no queue for group {group_key_id}")
        return rows[0][0]

    def append(self, group_key_id: str, sender: str, message_id: str, time: float, blob: bytes,
               now: float) -> tuple[int, int, bool]:
        """Add a message at the end of a queue: (its sequence, the new head, whether it is new).

        A message id the sender already published keeps its first sequence number.
        """
        with self._file.transaction() as db:
            queue = db.execute("SELECT head FROM queues WHERE group_key_id = ?", (group_key_id,)).fetchone()
            if queue is None:
                raise NotFound(f"this node hosts no queue for group {group_key_id}")
            found = db.execute("SELECT sequence FROM entries WHERE group_key_id = ? AND sender = ? AND message_id = ?",
                               (group_key_id, sender, message_id)).fetchone()
            if found is not None:
                return found[0], queue[0], False
            sequence = queue[0] + 1
            db.execute("INSERT INTO entries (group_key_id, sequence, sender, message_id, time, stored_time, blob)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (group_key_id, sequence, sender, message_id, float(time), float(now), bytes(blob)))
            db.execute("UPDATE queues SET head = ? WHERE group_key_id = ?", (sequence, group_key_id))
            db.execute("INSERT OR IGNORE INTO members (group_key_id, member_id) VALUES (?, ?)",
                       (group_key_id, sender))
            db.execute("UPDATE members SET published = published + 1, last_sequence = ?, last_published = ?"
                       " WHERE group_key_id = ? AND member_id = ?", (sequence, float(now), group_key_id, sender))
        return sequence, sequence, True

    def entries_after(self, group_key_id: str, after: int, limit: int,
                      max_bytes: int) -> tuple[list[tuple[int, bytes]], int]:
        """Entries with a sequence above ``after``, oldest first: at most ``limit`` of them and about
        ``max_bytes`` (always at least one when there is one); and the head."""
        with self._file.locked() as db:
            head = self.head(group_key_id)
            rows = db.execute(
                "SELECT sequence, blob FROM entries WHERE group_key_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (group_key_id, int(after), int(limit))).fetchall()
        batch, size = [], 0
        for row in rows:
            if batch and size + len(row["blob"]) > max_bytes:
                break
            batch.append((row["sequence"], bytes(row["blob"])))
            size += len(row["blob"])
        return batch, head

    # -- members of hosted queues -----------------------------------------------------------

    def member(self, group_key_id: str, member_id: str) -> dict | None:
        """What the queue knows of one member, or None."""
        rows = self._read("SELECT * FROM members WHERE group_key_id = ? AND member_id = ?", (group_key_id, member_id))
        return _member(rows[0]) if rows else None

    def members(self, group_key_id: str | None = None) -> list[dict]:
        """The members of one hosted queue (or of all), by queue then member."""
        if group_key_id is None:
            rows = self._read("SELECT * FROM members ORDER BY group_key_id, member_id")
        else:
            rows = self._read("SELECT * FROM members WHERE group_key_id = ? ORDER BY member_id", (group_key_id,))
        return [_member(row) for row in rows]

    def update_member(self, group_key_id: str, member_id: str, now: float, verified: bool | None = None,
                      subscribed: bool | None = None) -> dict:
        """Record that a member proved it holds the key, or (un)subscribed; the member's row."""
        with self._file.transaction() as db:
            db.execute("INSERT OR IGNORE INTO members (group_key_id, member_id) VALUES (?, ?)",
                       (group_key_id, member_id))
            if verified is not None:
                db.execute("UPDATE members SET verified = ?, verified_time = ? WHERE group_key_id = ? AND member_id = ?",
                           (int(verified), float(now), group_key_id, member_id))
            if subscribed is not None:
                db.execute("UPDATE members SET subscribed = ?, subscribed_time = ? WHERE group_key_id = ?"
                           " AND member_id = ?", (int(subscribed), float(now), group_key_id, member_id))
        return self.member(group_key_id, member_id)  # type: ignore[return-value]

    # -- this node's memberships -----------------------------------------------------------

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
        """Forget a membership (its key was erased)."""
        with self._file.transaction() as db:
            db.execute("DELETE FROM cursors WHERE group_key_id = ?", (group_key_id,))

    def describe(self) -> dict[str, Any]:
        """Counts for service_info."""
        with self._file.locked() as db:
            return {"hosted_queues": db.execute("SELECT COUNT(*) FROM queues").fetchone()[0],
                    "hosted_entries": db.execute("SELECT COUNT(*) FROM entries").fetchone()[0],
                    "memberships": db.execute("SELECT COUNT(*) FROM cursors WHERE active").fetchone()[0]}
