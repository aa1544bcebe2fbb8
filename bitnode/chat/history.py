"""Message history: every message sent or received, in one sqlite file (WAL).

Table ``messages`` (format :data:`HISTORY_FORMAT`), one row per message and
direction:

- ``seq``              local, only-growing row number: the order messages
  reached this node's history, and the cursor of ``message_receive``;
- ``message_id``       chosen by the sender;
- ``conversation_id``  the other party's global id for a private message (a
  group's key id for a group message);
- ``direction``        ``outgoing`` or ``incoming``;
- ``sender``, ``recipient``  global ids (recipient: a group key id for groups);
- ``message_type``     ``private_message`` or ``group_message`` (stored by
  :mod:`bitnode.access.groups_service`, in the group's order);
- ``data``             the message content as JSON text;
- ``time``             the sender's time; ``stored_time`` when written here;
- ``state``            ``sent`` (stored, on its way, no Ack yet), ``acked``
  (the recipient stored it and said so), ``queued`` (the recipient was
  offline: its suppliers keep it for it), ``delivered`` (a queued message the
  recipient stored: its receipt came), ``failed`` (not delivered; ``error``
  says why) for outgoing rows, ``received`` for incoming ones.

Table ``receipts_owed``: the queued messages this node stored whose senders
have not been sent their delivery receipt yet (written in the same transaction
as the message; removed once the receipt went out). Table ``refusals_owed``:
the same for queued messages this node refused (a limit), with the reason the
sender's receipt gives.

An incoming message is unique by (sender, message_id): the same message
delivered twice (the sender retried after a lost Ack) is stored once.

The class is synchronous and thread-safe (one lock, one connection); every
write is one committed transaction with ``synchronous=FULL``, so a row is on
disk before the caller tells anyone about it. The node calls it from its
thread pool.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, ContextManager, Iterable

from bitnode.errors import BadRequest, NotFound
from bitnode.main.sqlitedb import SqliteFile

HISTORY_FORMAT = 1
OUTGOING, INCOMING = "outgoing", "incoming"
DIRECTIONS = (OUTGOING, INCOMING)
SENT, ACKED, FAILED, RECEIVED = "sent", "acked", "failed", "received"
QUEUED, DELIVERED = "queued", "delivered"
STATES = (SENT, ACKED, FAILED, RECEIVED, QUEUED, DELIVERED)
MAX_LIMIT = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    direction       TEXT NOT NULL,
    sender          TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    message_type    TEXT NOT NULL,
    data            TEXT NOT NULL,
    time            REAL NOT NULL,
    stored_time     REAL NOT NULL,
    state           TEXT NOT NULL,
    error           TEXT NOT NULL DEFAULT '',
    UNIQUE (direction, sender, message_id)
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, seq);
CREATE INDEX IF NOT EXISTS messages_by_sender ON messages(sender, seq);
CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages(recipient, seq);
CREATE INDEX IF NOT EXISTS messages_incoming_by_sender ON messages(direction, sender, stored_time);
CREATE INDEX IF NOT EXISTS messages_incoming_by_time ON messages(direction, stored_time);
CREATE TABLE IF NOT EXISTS receipts_owed (
    sender     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    since      REAL NOT NULL,
    PRIMARY KEY (sender, message_id)
);
CREATE TABLE IF NOT EXISTS refusals_owed (
    sender     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    reason     TEXT NOT NULL,
    since      REAL NOT NULL,
    PRIMARY KEY (sender, message_id)
);
"""


def check_page(offset: int, limit: int) -> tuple[int, int]:
    """Validate pagination: offset 0 or more, limit 1..MAX_LIMIT (BadRequest otherwise)."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadRequest("offset must be an integer, 0 or more")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer between 1 and {MAX_LIMIT}")
    return offset, limit


def _row(row: sqlite3.Row) -> dict:
    return {
        "seq": row["seq"],
        "message_id": row["message_id"],
        "conversation_id": row["conversation_id"],
        "message_type": row["message_type"],
        "direction": row["direction"],
        "sender": row["sender"],
        "recipient": row["recipient"],
        "data": json.loads(row["data"]),
        "time": row["time"],
        "stored_time": row["stored_time"],
        "state": row["state"],
        "error": row["error"],
    }


def _in(column: str, values: Iterable[str]) -> tuple[str, list]:
    values = list(values)
    return f"{column} IN ({', '.join('?' for _ in values)})", values


class MessageHistory:
    """The history of one node in the sqlite file at ``path`` (``":memory:"`` for tests)."""

    def __init__(self, path: str):
        self.path = path
        self._file = SqliteFile(path, _SCHEMA, HISTORY_FORMAT, "message history")
        self._lock, self._db = self._file.lock, self._file.db

    def close(self) -> None:
        """Close the database."""
        self._file.close()

    def _transaction(self) -> ContextManager[sqlite3.Connection]:
        return self._file.transaction()

    # --- writing ---------------------------------------------------------------------

    def add(self, *, message_id: str, conversation_id: str, direction: str, sender: str, recipient: str,
            message_type: str, data: Any, time: float, stored_time: float, state: str,
            receipt_owed: bool = False) -> tuple[dict, bool]:
        """Store one message; (its row, True) or, if already stored, (the existing row, False).

        ``receipt_owed``: the sender is owed a delivery receipt for it (noted even when it was stored before:
        the sender queued it again, so it did not learn).
        """
        if direction not in DIRECTIONS:
            raise BadRequest(f"direction must be one of {', '.join(DIRECTIONS)}")
        if state not in STATES:
            raise BadRequest(f"state must be one of {', '.join(STATES)}")
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        with self._transaction() as db:
            if receipt_owed:
                db.execute("INSERT OR IGNORE INTO receipts_owed (sender, message_id, since) VALUES (?, ?, ?)",
                           (sender, message_id, float(stored_time)))
            found = db.execute("SELECT * FROM messages WHERE direction = ? AND sender = ? AND message_id = ?",
                               (direction, sender, message_id)).fetchone()
            if found is not None:
                return _row(found), False
            cursor = db.execute(
                "INSERT INTO messages (message_id, conversation_id, direction, sender, recipient, message_type,"
                " data, time, stored_time, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, conversation_id, direction, sender, recipient, message_type, text, float(time),
                 float(stored_time), state))
            row = db.execute("SELECT * FROM messages WHERE seq = ?", (cursor.lastrowid,)).fetchone()
        return _row(row), True

    def set_state(self, seq: int, state: str, error: str = "") -> dict:
        """Record a delivery outcome for row ``seq``; the updated row (NotFound if absent)."""
        if state not in STATES:
            raise BadRequest(f"state must be one of {', '.join(STATES)}")
        with self._transaction() as db:
            db.execute("UPDATE messages SET state = ?, error = ? WHERE seq = ?", (state, error[:500], seq))
            row = db.execute("SELECT * FROM messages WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise NotFound(f"no message #{seq} in the history")
        return _row(row)

    def mark_delivered(self, recipient: str, message_ids: Iterable[str]) -> list[dict]:
        """``recipient``'s receipt for my messages ``message_ids``: those rows become ``delivered``; the changed rows."""
        changed = []
        with self._transaction() as db:
            for marks, chunk in self._file.in_lists(sorted(set(message_ids))):
                rows = db.execute(f"SELECT seq FROM messages WHERE direction = 'outgoing' AND recipient = ? AND"
                                  f" state != ? AND message_id IN ({marks})", [recipient, DELIVERED, *chunk]).fetchall()
                changed += [row[0] for row in rows]
            for seq in changed:
                db.execute("UPDATE messages SET state = ?, error = '' WHERE seq = ?", (DELIVERED, seq))
            return [_row(db.execute("SELECT * FROM messages WHERE seq = ?", (seq,)).fetchone()) for seq in changed]

    def mark_refused(self, recipient: str, refusals: dict[str, str]) -> list[dict]:
        """``recipient`` refused my queued messages (id -> reason): those not delivered become ``failed``."""
        changed = []
        with self._transaction() as db:
            for message_id, reason in sorted(refusals.items()):
                row = db.execute("SELECT seq FROM messages WHERE direction = 'outgoing' AND recipient = ? AND"
                                 " message_id = ? AND state IN (?, ?)", (recipient, message_id, QUEUED, SENT)).fetchone()
                if row is not None:
                    db.execute("UPDATE messages SET state = ?, error = ? WHERE seq = ?",
                               (FAILED, f"refused by the recipient: {reason}"[:500], row[0]))
                    changed.append(row[0])
            return [_row(db.execute("SELECT * FROM messages WHERE seq = ?", (seq,)).fetchone()) for seq in changed]

    def owe_refusal(self, sender: str, message_id: str, reason: str, now: float) -> None:
        """I refused ``sender``'s queued message: it is owed a receipt saying so."""
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO refusals_owed (sender, message_id, reason, since) VALUES (?, ?, ?, ?)",
                       (sender, message_id, reason[:300], float(now)))

    def receipts_owed(self, limit: int = 1000) -> list[tuple[str, str, str]]:
        """(sender, message id, refusal or "") of the receipts owed, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sender, message_id, '' AS reason, since FROM receipts_owed UNION ALL"
                " SELECT sender, message_id, reason, since FROM refusals_owed"
                " ORDER BY since, sender, message_id LIMIT ?", (int(limit),)).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def receipts_sent(self, sender: str, message_ids: Iterable[str]) -> None:
        """These receipts went out: no longer owed."""
        with self._transaction() as db:
            for marks, chunk in self._file.in_lists(list(message_ids)):
                for table in ("receipts_owed", "refusals_owed"):
                    db.execute(f"DELETE FROM {table} WHERE sender = ? AND message_id IN ({marks})", [sender, *chunk])

    def expire_queued(self, before: float, reason: str) -> list[dict]:
        """My ``queued`` messages stored before ``before`` (no receipt came): ``failed`` with ``reason``; those rows.

        A receipt that still comes later turns such a row into ``delivered`` (:meth:`mark_delivered`).
        """
        with self._transaction() as db:
            seqs = [row[0] for row in db.execute(
                "SELECT seq FROM messages WHERE direction = 'outgoing' AND state = ? AND stored_time < ? ORDER BY seq",
                (QUEUED, float(before)))]
            for seq in seqs:
                db.execute("UPDATE messages SET state = ?, error = ? WHERE seq = ?", (FAILED, reason[:500], seq))
            return [_row(db.execute("SELECT * FROM messages WHERE seq = ?", (seq,)).fetchone()) for seq in seqs]

    def fail_unfinished(self, reason: str) -> int:
        """Turn every ``sent`` row (no outcome recorded: the node stopped meanwhile) into ``failed``; how many."""
        with self._transaction() as db:
            cursor = db.execute("UPDATE messages SET state = ?, error = ? WHERE state = ?", (FAILED, reason[:500], SENT))
        return cursor.rowcount

    # --- reading ---------------------------------------------------------------------

    def incoming_usage(self, since: float, sender: str | None = None,
                       except_senders: Iterable[str] = ()) -> tuple[int, int]:
        """(messages, bytes of content) of private messages received since ``since``.

        From ``sender`` alone, or (``sender`` None) from everyone but ``except_senders``
        (the quotas of :mod:`bitnode.chat.inbox_limits`).
        """
        where = ["direction = 'incoming'", "message_type = 'private_message'", "stored_time >= ?"]
        args: list[Any] = [float(since)]
        if sender is not None:
            where.append("sender = ?")
            args.append(sender)
        else:
            # One parameter whatever the number of exceptions (sqlite's variable limit stays far away).
            where.append("sender NOT IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(sorted(except_senders)))
        with self._lock:
            row = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(data AS BLOB))), 0) FROM messages"
                                   f" WHERE {' AND '.join(where)}", args).fetchone()
        return int(row[0]), int(row[1])

    def has_incoming(self, sender: str, message_id: str) -> bool:
        """Whether the message ``message_id`` of ``sender`` is already stored."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM messages WHERE direction = 'incoming' AND sender = ? AND message_id = ?",
                                   (sender, message_id)).fetchone()
        return row is not None

    def last_seq(self) -> int:
        """The newest row number (0 when empty)."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]

    def get(self, seq: int) -> dict:
        """Row ``seq`` (NotFound if absent)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM messages WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise NotFound(f"no message #{seq} in the history")
        return _row(row)

    def history(self, conversation_id: str | None = None, sender: str | None = None,
                recipient: str | None = None, message_type: str | None = None,
                offset: int = 0, limit: int = 100) -> tuple[list[dict], int]:
        """Messages matching every filter given, newest first, one page of them; and how many match."""
        offset, limit = check_page(offset, limit)
        where, args = [], []
        for column, value in (("conversation_id", conversation_id), ("sender", sender),
                              ("recipient", recipient), ("message_type", message_type)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM messages{clause}", args).fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM messages{clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
                                    [*args, limit, offset]).fetchall()
        return [_row(row) for row in rows], total

    def conversations(self, message_types: Iterable[str] = (), offset: int = 0,
                      limit: int = 100) -> tuple[list[dict], int]:
        """One entry per conversation (most recent activity first) with counts and its last message."""
        offset, limit = check_page(offset, limit)
        types = list(message_types)
        clause, args = ("", [])
        if types:
            condition, args = _in("message_type", types)
            clause = " WHERE " + condition
        with self._lock:
            total = self._db.execute(
                f"SELECT COUNT(DISTINCT conversation_id) FROM messages{clause}", args).fetchone()[0]
            groups = self._db.execute(
                "SELECT conversation_id, MAX(seq) AS last_seq, COUNT(*) AS total,"
                " SUM(direction = 'incoming') AS incoming, SUM(direction = 'outgoing') AS outgoing,"
                f" MIN(time) AS first_time FROM messages{clause}"
                " GROUP BY conversation_id ORDER BY last_seq DESC LIMIT ? OFFSET ?",
                [*args, limit, offset]).fetchall()
            result = []
            for group in groups:
                last = _row(self._db.execute("SELECT * FROM messages WHERE seq = ?", (group["last_seq"],)).fetchone())
                result.append({
                    "conversation_id": group["conversation_id"],
                    "message_type": last["message_type"],
                    "messages": group["total"],
                    "incoming": group["incoming"],
                    "outgoing": group["outgoing"],
                    "first_time": group["first_time"],
                    "last_time": last["time"],
                    "last_message": last,
                })
        return result, total

    def since(self, seq: int, directions: Iterable[str] = DIRECTIONS, message_types: Iterable[str] = (),
              limit: int = 100) -> tuple[list[dict], int]:
        """Rows after ``seq`` in the given directions and types (oldest first, at most ``limit``),
        and the newest row number in the whole table at the time of reading."""
        directions, types = list(directions), list(message_types)
        where, args = ["seq > ?"], [int(seq)]
        for column, values in (("direction", directions), ("message_type", types)):
            if values:
                condition, more = _in(column, values)
                where.append(condition)
                args += more
        with self._lock:
            top = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM messages WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                                    [*args, int(limit)]).fetchall()
        return [_row(row) for row in rows], top
