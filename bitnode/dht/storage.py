"""The node's local record store (sqlite), with expiry and quotas.

:class:`RecordStore` keeps the signed records this node holds, one per
``(layer, key)``, in sqlite (a file in WAL mode, or ``":memory:"``). Each row
remembers whether the record is our own (we wrote it: we republish it) and when
it was last replicated. Expired rows are never returned and are deleted by
:meth:`RecordStore.expire`.

:class:`bitnode.dht.upkeep.StoreKeeper` runs the periodic jobs (expire, republish, replicate) on it.

Limits (:class:`bitnode.dht.limits.DHTLimits`): records held for others count
against their writer's quota (records and bytes per writer key) and against
the store's total (records and bytes); a STORE over either is refused
(:class:`WriterQuotaExceeded`, :class:`InsufficientStorage`). Our own records
count against neither: what this node's user writes is bounded by the user.

Records are small (at most 6 KiB), every query is by primary key or index, and
the store is only touched on DHT traffic, so queries run synchronously on the
reactor thread (measured: get ~40 us, put ~0.1-0.4 ms with its commit). WAL with ``synchronous=NORMAL``
survives a process crash; a power cut may lose the last commits, which the
other k-1 replicas restore at the next replication round.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from bitnode.dht.limits import DHTLimits
from bitnode.errors import InsufficientStorage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    layer INTEGER NOT NULL,
    key TEXT NOT NULL,
    record TEXT NOT NULL,
    expires REAL NOT NULL,
    own INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    replicated_at REAL NOT NULL,
    writer TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (layer, key)
);
CREATE INDEX IF NOT EXISTS records_expires ON records (expires);
CREATE INDEX IF NOT EXISTS records_due ON records (own, replicated_at);
"""
#: columns added after the first release: (name, definition) — added to an older file when it is opened
_ADDED_COLUMNS = (("writer", "TEXT NOT NULL DEFAULT ''"), ("size", "INTEGER NOT NULL DEFAULT 0"))


class WriterQuotaExceeded(InsufficientStorage):
    """The record's writer already has its share of this node's store."""


@dataclass
class _Usage:
    records: int = 0
    size: int = 0


@dataclass(frozen=True)
class StoredRecord:
    """One row of the store; ``record`` is the signed envelope as a dict."""

    layer: int
    key: str
    record: dict[str, Any]
    expires: float
    own: bool
    stored_at: float
    replicated_at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for ``dump()``."""
        return {
            "layer": self.layer,
            "key": self.key,
            "record": self.record,
            "expires": self.expires,
            "own": self.own,
            "stored_at": self.stored_at,
            "replicated_at": self.replicated_at,
        }


class RecordStore:
    """sqlite-backed ``(layer, key) -> record`` map with expiry and quotas.

    :param path: a file path (opened in WAL mode) or ``":memory:"``.
    :param clock: ``IReactorTime``; "now" for expiry.
    :param limits: ``store_max_records`` / ``store_max_bytes`` (the whole store) and
        ``writer_max_records`` / ``writer_max_bytes`` (each writer key), for records held for others.
    """

    def __init__(self, path: str, clock: IReactorTime, limits: DHTLimits = DHTLimits()) -> None:
        self._clock = clock
        self.limits = limits
        self._db = sqlite3.connect(path, isolation_level=None)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        # Counts kept in memory: COUNT(*)/SUM() scan the table, and put() needs them for every STORE.
        self._rows: int = self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        self._others = _Usage()  # records held for others: what the store caps count
        self._writers: dict[str, _Usage] = {}
        for writer, count, size in self._db.execute(
                "SELECT writer, COUNT(*), SUM(size) FROM records WHERE own=0 GROUP BY writer"):
            self._charge(writer, count, size)

    def _migrate(self) -> None:
        """Give a store file from before quotas its writer and size columns, filled from the records."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
        missing = [(name, kind) for name, kind in _ADDED_COLUMNS if name not in have]
        if not missing:
            return
        for name, kind in missing:
            self._db.execute(f"ALTER TABLE records ADD COLUMN {name} {kind}")
        rows = self._db.execute("SELECT layer, key, record FROM records").fetchall()
        self._db.execute("BEGIN")
        for layer, key, text in rows:
            self._db.execute("UPDATE records SET writer=?, size=? WHERE layer=? AND key=?",
                             (_writer_of(json.loads(text)), len(text.encode("utf-8")), layer, key))
        self._db.execute("COMMIT")

    def _charge(self, writer: str, records: int, size: int) -> None:
        """Add (or with negative numbers, release) usage of a record held for ``writer``."""
        self._others.records += records
        self._others.size += size
        usage = self._writers.setdefault(writer, _Usage())
        usage.records += records
        usage.size += size
        if usage.records <= 0:
            del self._writers[writer]

    def usage(self, writer: str | None = None) -> dict[str, int]:
        """Records and bytes held for others (all of them, or one writer's)."""
        usage = self._others if writer is None else self._writers.get(writer, _Usage())
        return {"records": usage.records, "bytes": usage.size}

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def put(self, layer: int, key: str, record: dict[str, Any], expires: float, own: bool = False) -> None:
        """Insert or replace the record for ``(layer, key)``; ``own`` marks records we wrote.

        Raises :class:`WriterQuotaExceeded` or :class:`InsufficientStorage` when a
        record held for others would go over its writer's quota or the store's caps.
        The row is committed before this returns (persist before acknowledging).
        """
        now = self._clock.seconds()
        text = json.dumps(record, sort_keys=True)
        writer, size = _writer_of(record), len(text.encode("utf-8"))
        old = self._db.execute("SELECT own, writer, size FROM records WHERE layer=? AND key=?",
                               (layer, key)).fetchone()
        if not own and not self._fits(writer, size, old):
            self.expire()  # expired rows still count until they are deleted
            old = self._db.execute("SELECT own, writer, size FROM records WHERE layer=? AND key=?",
                                   (layer, key)).fetchone()
            self._check_fits(writer, size, old)
        self._db.execute(
            "INSERT OR REPLACE INTO records (layer, key, record, expires, own, stored_at, replicated_at, writer, size)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (layer, key, text, float(expires), int(own), now, now, writer, size),
        )
        if old is None:
            self._rows += 1
        elif not old[0]:
            self._charge(old[1], -1, -old[2])
        if not own:
            self._charge(writer, 1, size)

    def _fits(self, writer: str, size: int, old: tuple | None) -> bool:
        try:
            self._check_fits(writer, size, old)
        except InsufficientStorage:
            return False
        return True

    def _check_fits(self, writer: str, size: int, old: tuple | None) -> None:
        """Would a record of ``writer`` and ``size`` bytes, replacing ``old`` (own, writer, size), fit?"""
        freed = (1, old[2]) if old is not None and not old[0] else (0, 0)
        limits = self.limits
        total = self._others
        if total.records - freed[0] + 1 > limits.store_max_records or total.size - freed[1] + size > limits.store_max_bytes:
            raise InsufficientStorage("DHT record store is full")
        mine = self._writers.get(writer, _Usage())
        if old is not None and not old[0] and old[1] != writer:
            freed = (0, 0)  # the row we replace is charged to another writer
        if (mine.records - freed[0] + 1 > limits.writer_max_records
                or mine.size - freed[1] + size > limits.writer_max_bytes):
            raise WriterQuotaExceeded(f"this writer already has {mine.records} records ({mine.size} bytes) here")

    def get(self, layer: int, key: str) -> StoredRecord | None:
        """The unexpired record for ``(layer, key)``, or None."""
        row = self._db.execute(
            "SELECT layer, key, record, expires, own, stored_at, replicated_at FROM records"
            " WHERE layer=? AND key=? AND expires>?",
            (layer, key, self._clock.seconds()),
        ).fetchone()
        return _row(row) if row else None

    def delete(self, layer: int, key: str) -> bool:
        """Remove a record; True if there was one."""
        old = self._db.execute("SELECT own, writer, size FROM records WHERE layer=? AND key=?",
                               (layer, key)).fetchone()
        if old is None:
            return False
        self._db.execute("DELETE FROM records WHERE layer=? AND key=?", (layer, key))
        self._rows -= 1
        if not old[0]:
            self._charge(old[1], -1, -old[2])
        return True

    def mark_replicated(self, layer: int, key: str) -> None:
        """Note that the record was just replicated (by us or to us)."""
        self._db.execute(
            "UPDATE records SET replicated_at=? WHERE layer=? AND key=?", (self._clock.seconds(), layer, key)
        )

    def expire(self) -> int:
        """Delete expired records; returns how many."""
        now = self._clock.seconds()
        released = self._db.execute(
            "SELECT writer, COUNT(*), SUM(size) FROM records WHERE expires<=? AND own=0 GROUP BY writer", (now,)
        ).fetchall()
        gone = self._db.execute("DELETE FROM records WHERE expires<=?", (now,)).rowcount
        self._rows -= gone
        for writer, count, size in released:
            self._charge(writer, -count, -size)
        return gone

    def count(self) -> int:
        """Number of rows (expired ones included until :meth:`expire` runs)."""
        return self._rows

    def own_records(self) -> list[StoredRecord]:
        """Our own unexpired records."""
        return self._select("own=1")

    def due_for_replication(self, max_age: float, own: bool = False, limit: int = -1) -> list[StoredRecord]:
        """Unexpired records (ours, or others') not pushed in the last ``max_age`` seconds, longest-waiting first.

        At most ``limit`` of them (-1: all).
        """
        rows = self._db.execute(
            "SELECT layer, key, record, expires, own, stored_at, replicated_at FROM records"
            " WHERE expires>? AND own=? AND replicated_at<=? ORDER BY replicated_at LIMIT ?",
            (self._clock.seconds(), int(own), self._clock.seconds() - max_age, limit),
        ).fetchall()
        return [_row(r) for r in rows]

    def count_due(self, max_age: float, own: bool = False) -> int:
        """How many records :meth:`due_for_replication` would return without a limit."""
        now = self._clock.seconds()
        return self._db.execute("SELECT COUNT(*) FROM records WHERE expires>? AND own=? AND replicated_at<=?",
                                (now, int(own), now - max_age)).fetchone()[0]

    def dump(self) -> list[dict[str, Any]]:
        """Every unexpired record, JSON-safe, ordered by layer and key."""
        return [r.to_dict() for r in self._select("1=1")]

    def _select(self, where: str, args: tuple = ()) -> list[StoredRecord]:
        rows = self._db.execute(
            "SELECT layer, key, record, expires, own, stored_at, replicated_at FROM records"
            f" WHERE expires>? AND {where} ORDER BY layer, key",
            (self._clock.seconds(), *args),
        ).fetchall()
        return [_row(r) for r in rows]


def _writer_of(record: dict[str, Any]) -> str:
    """The writer key named by a record envelope ("" if it names none)."""
    writer = record.get("writer_pubkey") if isinstance(record, dict) else None
    return writer if isinstance(writer, str) else ""


def _row(row: tuple) -> StoredRecord:
    layer, key, record, expires, own, stored_at, replicated_at = row
    return StoredRecord(layer, key, json.loads(record), expires, bool(own), stored_at, replicated_at)
