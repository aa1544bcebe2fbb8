"""What a broker keeps on disk: the logs of the groups it hosts (``metadata/group-logs.sqlite``).

One sqlite file (:class:`~bitnode.main.sqlitedb.SqliteFile`: WAL, FULL sync),
format :data:`LOG_FORMAT`. The rules the rows follow are
:mod:`bitnode.access.group_replica`'s; this module only keeps them, one
committed transaction per call, before the caller answers anyone.

- ``logs``        one row per hosted group: its signed ``config``, the highest ``term`` this broker
  took part in (it promised not to accept older ones), ``head`` (the newest entry), ``commit`` (the
  newest entry known to be on a majority), ``base`` (entries up to it were trimmed), and the bytes and
  count of the message entries kept;
- ``entries``     ``(group, seq)`` -> the entry: the ``term`` of the primary that wrote it, ``kind``
  (0 message, 1 control), sender, message id, times and the blob. A sender's message id is unique in a
  log, so a publish repeated after a lost answer gets its first sequence number back;
- ``subscribers`` who asked this broker for pushes (kept across restarts).

The class is synchronous and thread-safe; the node calls it from its thread pool.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Optional

from bitnode.errors import Conflict, NotFound
from bitnode.main.sqlitedb import SqliteFile

LOG_FORMAT = 1
MESSAGE, CONTROL = 0, 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    group_key_id TEXT PRIMARY KEY,
    creator      TEXT NOT NULL,
    config       TEXT NOT NULL,
    created      REAL NOT NULL,
    term         INTEGER NOT NULL DEFAULT 0,
    head         INTEGER NOT NULL DEFAULT 0,
    commit_seq   INTEGER NOT NULL DEFAULT 0,
    base         INTEGER NOT NULL DEFAULT 0,
    message_bytes INTEGER NOT NULL DEFAULT 0,
    messages     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS entries (
    group_key_id TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    term         INTEGER NOT NULL,
    kind         INTEGER NOT NULL,
    sender       TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    time         REAL NOT NULL,
    stored_time  REAL NOT NULL,
    blob         BLOB NOT NULL,
    PRIMARY KEY (group_key_id, seq),
    UNIQUE (group_key_id, sender, message_id)
);
CREATE TABLE IF NOT EXISTS subscribers (
    group_key_id TEXT NOT NULL,
    member_id    TEXT NOT NULL,
    since        REAL NOT NULL,
    PRIMARY KEY (group_key_id, member_id)
);
"""


@dataclass(frozen=True)
class Entry:
    """One log entry."""

    seq: int
    term: int
    kind: int
    sender: str
    message_id: str
    time: float
    blob: bytes

    def wire(self) -> dict:
        """The entry's fields as a sync frame lists them (the blob travels apart)."""
        return {"seq": self.seq, "term": self.term, "kind": self.kind, "sender": self.sender,
                "message_id": self.message_id, "time": self.time}


@dataclass(frozen=True)
class LogState:
    """Where one hosted log stands."""

    group_key_id: str
    config: str
    term: int
    head: int
    last_term: int
    commit: int
    base: int


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(row["seq"], row["term"], row["kind"], row["sender"], row["message_id"], row["time"], bytes(row["blob"]))


class GroupLog:
    """The logs file at ``path`` (``":memory:"`` for tests)."""

    def __init__(self, path: str) -> None:
        self._file = SqliteFile(path, _SCHEMA, LOG_FORMAT, "group logs")

    def close(self) -> None:
        """Close the database."""
        self._file.close()

    # -- hosting ------------------------------------------------------------------------

    def host(self, group_key_id: str, creator: str, config: str, now: float) -> LogState:
        """Host a new, empty log (a log hosted already is kept as it is); its state."""
        with self._file.transaction() as db:
            db.execute("INSERT OR IGNORE INTO logs (group_key_id, creator, config, created) VALUES (?, ?, ?, ?)",
                       (group_key_id, creator, config, float(now)))
        return self.state(group_key_id)

    def drop(self, group_key_id: str) -> bool:
        """Forget a hosted log, its entries and subscribers; whether it existed."""
        with self._file.transaction() as db:
            cursor = db.execute("DELETE FROM logs WHERE group_key_id = ?", (group_key_id,))
            db.execute("DELETE FROM entries WHERE group_key_id = ?", (group_key_id,))
            db.execute("DELETE FROM subscribers WHERE group_key_id = ?", (group_key_id,))
        return cursor.rowcount > 0

    def states(self) -> list[LogState]:
        """Every hosted log's state, oldest first."""
        with self._file.locked() as db:
            ids = [row[0] for row in db.execute("SELECT group_key_id FROM logs ORDER BY created, group_key_id")]
            return [self._state(db, group_key_id) for group_key_id in ids]

    def state(self, group_key_id: str) -> LogState:
        """One hosted log's state (NotFound if not hosted here)."""
        with self._file.locked() as db:
            return self._state(db, group_key_id)

    def _state(self, db: sqlite3.Connection, group_key_id: str) -> LogState:
        row = db.execute("SELECT * FROM logs WHERE group_key_id = ?", (group_key_id,)).fetchone()
        if row is None:
            raise NotFound(f"this node hosts no log of group {group_key_id}")
        last = db.execute("SELECT term FROM entries WHERE group_key_id = ? AND seq = ?",
                          (group_key_id, row["head"])).fetchone()
        return LogState(group_key_id, row["config"], row["term"], row["head"], last[0] if last else 0,
                        row["commit_seq"], row["base"])

    def summaries(self) -> list[dict]:
        """Per hosted log: ``{group_key_id, creator, created, term, head, commit, base, messages, bytes,
        subscribers, producers}``."""
        rows = self._read(
            "SELECT l.*, (SELECT COUNT(*) FROM subscribers s WHERE s.group_key_id = l.group_key_id) AS subs,"
            " (SELECT COUNT(DISTINCT sender) FROM entries e WHERE e.group_key_id = l.group_key_id AND e.kind = 0)"
            " AS producers FROM logs l ORDER BY l.created, l.group_key_id")
        return [{"group_key_id": r["group_key_id"], "creator": r["creator"], "created": r["created"],
                 "term": r["term"], "head": r["head"], "commit": r["commit_seq"], "base": r["base"],
                 "messages": r["messages"], "bytes": r["message_bytes"], "subscribers": r["subs"],
                 "producers": r["producers"]} for r in rows]

    def count_hosted(self, creator: Optional[str] = None) -> int:
        """How many logs are hosted here (for ``creator`` only, when given)."""
        if creator is None:
            return self._read("SELECT COUNT(*) FROM logs")[0][0]
        return self._read("SELECT COUNT(*) FROM logs WHERE creator = ?", (creator,))[0][0]

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._file.locked() as db:
            return db.execute(sql, args).fetchall()

    # -- terms -------------------------------------------------------------------------

    def promise(self, group_key_id: str, term: int) -> LogState:
        """Take part in ``term`` from now on (terms only grow); the state after."""
        with self._file.transaction() as db:
            db.execute("UPDATE logs SET term = MAX(term, ?) WHERE group_key_id = ?", (int(term), group_key_id))
        return self.state(group_key_id)

    # -- the primary's appends -----------------------------------------------------------

    def append(self, group_key_id: str, term: int, kind: int, sender: str, message_id: str, time: float,
               blob: bytes, now: float) -> tuple[int, bool]:
        """Write an entry after the head in ``term``: (its sequence, whether it is new).

        A message id the sender already used keeps its first sequence number (committed or not).
        Conflict if the log's term moved past ``term`` (this broker is no longer that term's primary).
        """
        with self._file.transaction() as db:
            row = db.execute("SELECT term, head FROM logs WHERE group_key_id = ?", (group_key_id,)).fetchone()
            if row is None:
                raise NotFound(f"this node hosts no log of group {group_key_id}")
            if row["term"] != term:
                raise Conflict(f"group {group_key_id} is in term {row['term']} now, not {term}")
            found = db.execute("SELECT seq FROM entries WHERE group_key_id = ? AND sender = ? AND message_id = ?",
                               (group_key_id, sender, message_id)).fetchone()
            if found is not None:
                return found[0], False
            seq = row["head"] + 1
            self._insert(db, group_key_id, Entry(seq, term, kind, sender, message_id, float(time), bytes(blob)), now)
            db.execute("UPDATE logs SET head = ? WHERE group_key_id = ?", (seq, group_key_id))
        return seq, True

    @staticmethod
    def _insert(db: sqlite3.Connection, group_key_id: str, entry: Entry, now: float) -> None:
        db.execute("INSERT INTO entries (group_key_id, seq, term, kind, sender, message_id, time, stored_time, blob)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (group_key_id, entry.seq, entry.term, entry.kind, entry.sender, entry.message_id, entry.time,
                    float(now), entry.blob))
        if entry.kind == MESSAGE:
            db.execute("UPDATE logs SET messages = messages + 1, message_bytes = message_bytes + ?"
                       " WHERE group_key_id = ?", (len(entry.blob), group_key_id))

    @staticmethod
    def _delete_from(db: sqlite3.Connection, group_key_id: str, seq: int) -> None:
        """Delete the entries from ``seq`` on (an uncommitted suffix another primary replaced)."""
        gone = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(blob)), 0) FROM entries WHERE group_key_id = ?"
                          " AND seq >= ? AND kind = 0", (group_key_id, seq)).fetchone()
        db.execute("DELETE FROM entries WHERE group_key_id = ? AND seq >= ?", (group_key_id, seq))
        db.execute("UPDATE logs SET messages = messages - ?, message_bytes = message_bytes - ? WHERE group_key_id = ?",
                   (gone[0], gone[1], group_key_id))

    def set_commit(self, group_key_id: str, commit: int) -> int:
        """The commit index, raised to ``commit`` (never past the head, never lowered); the new value."""
        with self._file.transaction() as db:
            db.execute("UPDATE logs SET commit_seq = MAX(commit_seq, MIN(?, head)) WHERE group_key_id = ?",
                       (int(commit), group_key_id))
            row = db.execute("SELECT commit_seq FROM logs WHERE group_key_id = ?", (group_key_id,)).fetchone()
        if row is None:
            raise NotFound(f"this node hosts no log of group {group_key_id}")
        return row[0]

    # -- a backup's side of a sync ----------------------------------------------------------

    def accept(self, group_key_id: str, term: int, prev_seq: int, prev_term: Optional[int], base: int,
               entries: list[Entry], commit: int, now: float) -> tuple[str, LogState]:
        """Take entries a primary of ``term`` sends after ``prev_seq`` (whose term is ``prev_term``).

        Returns ``("stale", state)`` when this log is in a later term (nothing changes),
        ``("behind", state)`` when the log does not hold ``prev_seq`` as the primary does (send from
        ``state.commit``), else ``("ok", state)``: entries this log holds with the same term are kept,
        the first one that differs and everything after it is replaced. ``base`` beyond this log's
        commit index: the primary trimmed entries this log has not committed, so it drops its
        uncommitted tail and starts again after ``base``. The commit index follows the primary's, up to the entries held.
        """
        with self._file.transaction() as db:
            state = self._state(db, group_key_id)
            if term < state.term:
                return "stale", state
            if term > state.term:
                db.execute("UPDATE logs SET term = ? WHERE group_key_id = ?", (term, group_key_id))
            if base > state.commit and prev_seq <= base:
                self._delete_from(db, group_key_id, state.commit + 1)
                db.execute("UPDATE logs SET base = ?, commit_seq = MAX(commit_seq, ?) WHERE group_key_id = ?",
                           (base, base, group_key_id))
                self._set_head(db, group_key_id)
                state = self._state(db, group_key_id)
            elif not self._holds(db, state, prev_seq, prev_term):
                return "behind", self._state(db, group_key_id)
            for entry in entries:
                held = db.execute("SELECT term FROM entries WHERE group_key_id = ? AND seq = ?",
                                  (group_key_id, entry.seq)).fetchone()
                if held is not None and held[0] == entry.term:
                    continue
                if entry.seq <= state.commit:
                    # committed entries are the same everywhere: fill a hole (a control entry kept below
                    # the base), never replace one
                    if held is None and (entry.kind == CONTROL or entry.seq > state.base):
                        self._insert(db, group_key_id, entry, now)
                    continue
                self._delete_from(db, group_key_id, entry.seq)
                self._insert(db, group_key_id, entry, now)
            self._set_head(db, group_key_id)
            known = entries[-1].seq if entries else prev_seq
            db.execute("UPDATE logs SET commit_seq = MAX(commit_seq, MIN(?, ?, head)) WHERE group_key_id = ?",
                       (int(commit), known, group_key_id))
            return "ok", self._state(db, group_key_id)

    @staticmethod
    def _set_head(db: sqlite3.Connection, group_key_id: str) -> None:
        """The head after entries were added or replaced: the newest entry, or the base when none is left."""
        db.execute("UPDATE logs SET head = MAX(base, COALESCE((SELECT MAX(seq) FROM entries e"
                   " WHERE e.group_key_id = logs.group_key_id), 0)) WHERE group_key_id = ?", (group_key_id,))

    @staticmethod
    def _holds(db: sqlite3.Connection, state: LogState, prev_seq: int, prev_term: Optional[int]) -> bool:
        if prev_seq <= state.commit or prev_seq <= state.base:
            return prev_seq <= state.head
        if prev_seq > state.head:
            return False
        held = db.execute("SELECT term FROM entries WHERE group_key_id = ? AND seq = ?",
                          (state.group_key_id, prev_seq)).fetchone()
        return held is not None and prev_term is not None and held[0] == prev_term

    def replace_after(self, group_key_id: str, after: int, base: int, entries: list[Entry], now: float) -> LogState:
        """A new primary adopts another broker's log: its entries after ``after`` become ``entries``
        (after ``base`` when that broker trimmed past ``after``). Entries up to the commit stay."""
        with self._file.transaction() as db:
            state = self._state(db, group_key_id)
            start = max(after, state.commit) + 1
            self._delete_from(db, group_key_id, start)
            if base >= start:
                db.execute("UPDATE logs SET base = ?, commit_seq = MAX(commit_seq, ?) WHERE group_key_id = ?",
                           (base, base, group_key_id))
            for entry in entries:
                if entry.seq >= start:
                    self._insert(db, group_key_id, entry, now)
            self._set_head(db, group_key_id)
            return self._state(db, group_key_id)

    # -- reading -------------------------------------------------------------------------

    def entries_after(self, group_key_id: str, after: int, upto: int, limit: int, max_bytes: int,
                      kind: Optional[int] = None) -> list[Entry]:
        """Entries with ``after`` < seq <= ``upto``, oldest first: at most ``limit`` and about ``max_bytes``
        (at least one when there is one); only of ``kind`` when given."""
        sql = "SELECT * FROM entries WHERE group_key_id = ? AND seq > ? AND seq <= ?"
        args: list[Any] = [group_key_id, int(after), int(upto)]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        rows = self._read(sql + " ORDER BY seq LIMIT ?", (*args, int(limit)))
        batch, size = [], 0
        for row in rows:
            if batch and size + len(row["blob"]) > max_bytes:
                break
            batch.append(_entry(row))
            size += len(row["blob"])
        return batch

    def controls(self, group_key_id: str, upto: Optional[int] = None) -> list[tuple[int, bytes]]:
        """Every control entry of a log (up to ``upto``), oldest first: ``[(seq, blob)]``."""
        rows = self._read("SELECT seq, blob FROM entries WHERE group_key_id = ? AND kind = 1 AND seq <= ? ORDER BY seq",
                          (group_key_id, (1 << 62) if upto is None else int(upto)))
        return [(row[0], bytes(row[1])) for row in rows]

    def term_of(self, group_key_id: str, seq: int) -> Optional[int]:
        """The term of entry ``seq`` (None when it is not here: trimmed, or beyond the head)."""
        rows = self._read("SELECT term FROM entries WHERE group_key_id = ? AND seq = ?", (group_key_id, int(seq)))
        return rows[0][0] if rows else None

    def producers(self) -> list[dict]:
        """Per hosted log and sender of messages: ``{group_key_id, sender, published, last_sequence, last_published}``."""
        rows = self._read("SELECT group_key_id, sender, COUNT(*) AS n, MAX(seq) AS last, MAX(stored_time) AS at"
                          " FROM entries WHERE kind = 0 GROUP BY group_key_id, sender ORDER BY group_key_id, sender")
        return [{"group_key_id": r["group_key_id"], "sender": r["sender"], "published": r["n"],
                 "last_sequence": r["last"], "last_published": r["at"]} for r in rows]

    # -- limits --------------------------------------------------------------------------

    def trim(self, group_key_id: str, max_messages: int, max_bytes: int) -> int:
        """Delete the oldest committed message entries beyond ``max_messages`` or ``max_bytes`` (control
        entries stay: they are the roster); how many went."""
        with self._file.transaction() as db:
            row = db.execute("SELECT messages, message_bytes, commit_seq FROM logs WHERE group_key_id = ?",
                             (group_key_id,)).fetchone()
            if row is None or (row["messages"] <= max_messages and row["message_bytes"] <= max_bytes):
                return 0
            count, size, removed, last = row["messages"], row["message_bytes"], 0, 0
            for entry in db.execute("SELECT seq, LENGTH(blob) FROM entries WHERE group_key_id = ? AND kind = 0"
                                    " AND seq <= ? ORDER BY seq", (group_key_id, row["commit_seq"])).fetchall():
                if count <= max_messages and size <= max_bytes:
                    break
                count, size, removed, last = count - 1, size - entry[1], removed + 1, entry[0]
            if removed:
                db.execute("DELETE FROM entries WHERE group_key_id = ? AND kind = 0 AND seq <= ?", (group_key_id, last))
                db.execute("UPDATE logs SET messages = ?, message_bytes = ?, base = MAX(base, ?) WHERE group_key_id = ?",
                           (count, size, last, group_key_id))
        return removed

    # -- subscribers -----------------------------------------------------------------------

    def subscribe(self, group_key_id: str, member_id: str, subscribed: bool, now: float) -> None:
        """Record that a member asked for pushes (or stopped)."""
        with self._file.transaction() as db:
            if subscribed:
                db.execute("INSERT OR IGNORE INTO subscribers (group_key_id, member_id, since) VALUES (?, ?, ?)",
                           (group_key_id, member_id, float(now)))
            else:
                db.execute("DELETE FROM subscribers WHERE group_key_id = ? AND member_id = ?",
                           (group_key_id, member_id))

    def subscribers(self) -> dict[str, list[str]]:
        """``{group_key_id: [member_id, ...]}`` of every hosted log."""
        result: dict[str, list[str]] = {}
        for row in self._read("SELECT group_key_id, member_id FROM subscribers ORDER BY group_key_id, member_id"):
            result.setdefault(row[0], []).append(row[1])
        return result
