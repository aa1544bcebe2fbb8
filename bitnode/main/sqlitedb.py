"""One sqlite file opened the way bitnode keeps its durable tables: WAL, FULL sync, a format check, one lock.

:class:`SqliteFile` is the small common part of the node's sqlite stores
(message history, group queues): it opens the file in WAL mode with
``synchronous=FULL`` (a commit is on disk before anyone is told "stored"),
creates the schema, checks the ``meta`` table's ``format`` row against the
version the code reads, and offers one thread-safe :meth:`SqliteFile.transaction`.
The stores keep their own queries; they share only this.

The schema passed in must create ``meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)``.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from bitnode.errors import BadRequest, Unavailable

#: Most ``?`` put in one ``IN (...)`` list, below the connection's own limit (999 on old sqlite builds).
MAX_IN_LIST = 500


class StoreClosed(Unavailable):
    """The database was closed (its service stopped) before this call reached it.

    Work queued in the thread pool before a service stopped may run after the
    service closed its file; it gets this error instead of sqlite's
    ``ProgrammingError``, so its caller can tell "stopping" from a bug.
    """


class SqliteFile:
    """An open sqlite database at ``path`` (``":memory:"`` for tests) holding ``schema`` at ``format_version``.

    :param what: how errors name the file ("message history", "group queues").
    :param foreign_keys: enforce the schema's foreign keys (sqlite leaves them off by default).
    :param synchronous: ``"FULL"`` (a commit is on disk when it returns) or ``"NORMAL"`` for a table
        that is a cache its owner can rebuild (WAL keeps it consistent; the last commits may be lost
        in a power cut).
    :param migrate: ``migrate(db, old_format)`` brings a file of an older format up to ``format_version``
        (in one transaction with the new format row); without it an older format is refused too.
    :raises BadRequest: the file holds another format (it is closed again).
    """

    def __init__(self, path: str, schema: str, format_version: int, what: str, foreign_keys: bool = False,
                 synchronous: str = "FULL",
                 migrate: Callable[[sqlite3.Connection, int], None] | None = None) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = path
        self.lock = threading.RLock()
        self.closed = False
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        if foreign_keys:
            self.db.execute("PRAGMA foreign_keys = ON")
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before the peer (or the API caller) hears "stored".
            self.db.execute(f"PRAGMA synchronous = {synchronous}")
        self.db.executescript(schema)
        row = self.db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta (name, value) VALUES ('format', ?)", (str(format_version),))
            return
        found = str(row["value"])
        if found.isdigit() and int(found) < format_version and migrate is not None:
            with self.transaction() as db:
                migrate(db, int(found))
                db.execute("UPDATE meta SET value = ? WHERE name = 'format'", (str(format_version),))
        elif found != str(format_version):
            self.db.close()
            raise BadRequest(f"{what} {path} has format {found}, this node reads {format_version}")

    def close(self) -> None:
        """Close the database; later calls through :meth:`locked` or :meth:`transaction` raise StoreClosed."""
        with self.lock:
            self.closed = True
            self.db.close()

    @contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, for reads (StoreClosed once the file was closed)."""
        with self.lock:
            if self.closed:
                raise StoreClosed(f"{self.path} is closed")
            yield self.db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` under the lock; rolled back if the body raises
        (StoreClosed once the file was closed)."""
        with self.lock:
            if self.closed:
                raise StoreClosed(f"{self.path} is closed")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def in_lists(self, values: Sequence) -> Iterator[tuple[str, list]]:
        """``values`` cut into ``IN (...)`` lists that fit one statement: ``("?,?,...", slice)`` per slice.

        sqlite refuses a statement with more variables than its limit
        (``SQLITE_LIMIT_VARIABLE_NUMBER``), so a long list is asked in slices.
        """
        size = max(1, min(MAX_IN_LIST, self.db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)))
        values = list(values)
        for start in range(0, len(values), size):
            part = values[start:start + size]
            yield ",".join("?" * len(part)), part
