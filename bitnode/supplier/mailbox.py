"""Private messages a supplier keeps for its offline customers, until they fetch them or they expire.

When a customer of this supplier is offline, anyone may hand us a message for
it (``Correspondent`` packets, :mod:`bitnode.supplier.mailbox_wire`): a sealed
message the customer alone can read and check. We keep it in
``metadata/supplier-mailbox.sqlite`` and give it out, oldest first, only to the
customer itself, which removes each one once it stored it.

What a stranger can make us keep is bounded (settings under
``services/supplier/mailbox-...``, refusals counted by kind in
``service_info service_supplier`` -> ``mailbox.refused``):

- only for a customer of ours (``not_customer``): the total is bounded by our
  customers;
- one message at most ``mailbox-max-message-size`` bytes (``too_large``);
- per sender and recipient ``mailbox-sender-max-messages`` messages and
  ``mailbox-sender-max-bytes`` bytes (``sender_quota``);
- per recipient, from everyone, ``mailbox-recipient-max-messages`` and
  ``mailbox-recipient-max-bytes`` (``recipient_quota``);
- each message expires ``mailbox-expiry`` seconds after it arrived (a sweep
  every hour removes expired ones; expired ones are never given out).

A newly queued message is announced to its recipient when it seems online
(``on_queued``: a ``NOTIFY``, at most one per recipient every
:data:`NOTIFY_INTERVAL` seconds), so a recipient the sender could not reach
directly still gets it soon; an offline one fetches at its next start.

A message is unique by (recipient, sender, message id): a sender handing it
over again (its Ack was lost) gets ``Ack`` again and nothing more is stored.
A message is on disk (sqlite, ``synchronous=FULL``) before the ``Ack``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from bitnode.errors import BadRequest, BitnodeError
from bitnode.main.options import DISK_SPACE, FLOAT, INTEGER, Option
from bitnode.main.sqlitedb import SqliteFile
from bitnode.supplier import mailbox_wire as mw
from bitnode.transport.commands import Command

MAILBOX_FORMAT = 1
DAY = 86400.0
#: Bytes of messages in one FETCH answer (the first message always goes, whatever its size).
PAGE_BYTES = 2 * 1024 * 1024
PAGE_MESSAGES = 200
#: Seconds between two NOTIFYs to one recipient.
NOTIFY_INTERVAL = 5.0
#: Seconds between sweeps of expired messages.
SWEEP_INTERVAL = 3600.0
PREFIX = "services/supplier/mailbox-"
#: The settings of the limits (service_supplier's options).
OPTIONS = (
    Option(PREFIX + "max-message-size", DISK_SPACE, 512 * 1024,
           "Largest private message (sealed) queued here for an offline customer.", minimum=1024,
           maximum=16 * 1024 ** 2),
    Option(PREFIX + "sender-max-messages", INTEGER, 100,
           "Messages one sender may have queued here for one customer (0: no limit).", minimum=0),
    Option(PREFIX + "sender-max-bytes", DISK_SPACE, 8 * 1024 ** 2,
           "Bytes one sender may have queued here for one customer (0: no limit).", minimum=0),
    Option(PREFIX + "recipient-max-messages", INTEGER, 2000,
           "Messages queued here for one customer from everyone (0: no limit).", minimum=0),
    Option(PREFIX + "recipient-max-bytes", DISK_SPACE, 64 * 1024 ** 2,
           "Bytes queued here for one customer from everyone (0: no limit).", minimum=0),
    Option(PREFIX + "expiry", FLOAT, 14 * DAY,
           "Seconds a queued message waits for its recipient before it is removed.", minimum=60.0,
           maximum=365 * DAY),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queued (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient  TEXT NOT NULL,
    sender     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    arrived    REAL NOT NULL,
    expires    REAL NOT NULL,
    size       INTEGER NOT NULL,
    sealed     BLOB NOT NULL,
    UNIQUE (recipient, sender, message_id)
);
CREATE INDEX IF NOT EXISTS queued_by_recipient ON queued(recipient, seq);
CREATE INDEX IF NOT EXISTS queued_by_expiry ON queued(expires);
"""


@dataclass(frozen=True)
class MailboxLimits:
    """The limits of the module docstring; 0 turns a count or byte limit off."""

    max_message_bytes: int = 512 * 1024
    sender_max_messages: int = 100
    sender_max_bytes: int = 8 * 1024 * 1024
    recipient_max_messages: int = 2000
    recipient_max_bytes: int = 64 * 1024 * 1024
    expiry: float = 14 * DAY


def limits_from(get: Callable[[str], Any]) -> MailboxLimits:
    """The limits as the settings say (``get`` reads one setting)."""
    return MailboxLimits(max_message_bytes=get(PREFIX + "max-message-size"),
                         sender_max_messages=get(PREFIX + "sender-max-messages"),
                         sender_max_bytes=get(PREFIX + "sender-max-bytes"),
                         recipient_max_messages=get(PREFIX + "recipient-max-messages"),
                         recipient_max_bytes=get(PREFIX + "recipient-max-bytes"), expiry=get(PREFIX + "expiry"))


class MailboxRefused(BadRequest):
    """A message this supplier does not queue; ``kind`` names the limit."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def _over(messages: int, size_sum: int, size: int, max_messages: int, max_bytes: int) -> bool:
    return bool((max_messages and messages + 1 > max_messages) or (max_bytes and size_sum + size > max_bytes))


class MailboxStore:
    """The queued messages in one sqlite file (``":memory:"`` for tests); synchronous: call it from a thread."""

    def __init__(self, path: str):
        self._file = SqliteFile(path, _SCHEMA, MAILBOX_FORMAT, "supplier mailbox")

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def put(self, recipient: str, sender: str, message_id: str, sealed: bytes, now: float,
            limits: MailboxLimits) -> tuple[float, bool]:
        """Queue one message; (its expiry, whether it is new). MailboxRefused over a limit."""
        size = len(sealed)
        if limits.max_message_bytes and size > limits.max_message_bytes:
            raise MailboxRefused("too_large", f"mailbox: message of {size} bytes; the limit is "
                                              f"{limits.max_message_bytes}")
        with self._file.transaction() as db:
            found = db.execute("SELECT expires FROM queued WHERE recipient = ? AND sender = ? AND message_id = ?",
                               (recipient, sender, message_id)).fetchone()
            if found is not None:
                return float(found[0]), False
            mine = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queued WHERE recipient = ? AND sender = ?"
                              " AND expires > ?", (recipient, sender, now)).fetchone()
            if _over(mine[0], mine[1], size, limits.sender_max_messages, limits.sender_max_bytes):
                raise MailboxRefused("sender_quota", f"mailbox: {mine[0]} messages ({mine[1]} bytes) from you wait "
                                                     f"for {recipient}; the limit is {limits.sender_max_messages} "
                                                     f"messages and {limits.sender_max_bytes} bytes")
            total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queued WHERE recipient = ?"
                               " AND expires > ?", (recipient, now)).fetchone()
            if _over(total[0], total[1], size, limits.recipient_max_messages, limits.recipient_max_bytes):
                raise MailboxRefused("recipient_quota", f"mailbox: the queue of {recipient} is full "
                                                        f"({total[0]} messages, {total[1]} bytes)")
            expires = now + limits.expiry
            db.execute("INSERT INTO queued (recipient, sender, message_id, arrived, expires, size, sealed)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)", (recipient, sender, message_id, now, expires, size, sealed))
        return expires, True

    def fetch(self, recipient: str, after: int, now: float, max_bytes: int = PAGE_BYTES,
              max_messages: int = PAGE_MESSAGES) -> tuple[list[mw.QueuedMessage], bool]:
        """The recipient's unexpired messages after entry ``after``, oldest first; (page, more follow)."""
        with self._file.locked() as db:
            rows = db.execute("SELECT seq, sender, message_id, arrived, size, sealed FROM queued WHERE recipient = ?"
                              " AND seq > ? AND expires > ? ORDER BY seq LIMIT ?",
                              (recipient, int(after), now, max_messages + 1)).fetchall()
        page: list[mw.QueuedMessage] = []
        used = 0
        for row in rows[:max_messages]:
            if page and used + row["size"] > max_bytes:
                return page, True
            page.append(mw.QueuedMessage(row["seq"], row["sender"], row["message_id"], row["arrived"],
                                         bytes(row["sealed"])))
            used += row["size"]
        return page, len(rows) > max_messages

    def remove(self, recipient: str, seqs: list[int]) -> int:
        """Remove these entries of the recipient's queue; how many were there."""
        removed = 0
        with self._file.transaction() as db:
            for marks, chunk in self._file.in_lists(list(seqs)):
                removed += db.execute(f"DELETE FROM queued WHERE recipient = ? AND seq IN ({marks})",
                                      [recipient, *chunk]).rowcount
        return removed

    def drop_recipient(self, recipient: str) -> int:
        """Remove everything queued for ``recipient`` (its contract ended); how many."""
        with self._file.transaction() as db:
            return db.execute("DELETE FROM queued WHERE recipient = ?", (recipient,)).rowcount

    def expire(self, now: float) -> int:
        """Remove the messages whose time is up; how many."""
        with self._file.transaction() as db:
            return db.execute("DELETE FROM queued WHERE expires <= ?", (now,)).rowcount

    def totals(self) -> dict:
        """``{"messages", "bytes", "recipients"}`` queued now."""
        with self._file.locked() as db:
            row = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0), COUNT(DISTINCT recipient) FROM queued").fetchone()
        return {"messages": row[0], "bytes": row[1], "recipients": row[2]}


class Mailbox:
    """The supplier's mailbox service: answers ``Correspondent`` payloads (see the module docstring).

    :param store: the open :class:`MailboxStore`.
    :param run_in_thread: the node's thread pool.
    :param now: the clock's ``seconds``.
    :param limits: ``limits()`` -> the current :class:`MailboxLimits`.
    :param account: ``account(global_id)``: the name that customer's space is kept under (its identity may
        have moved since), None when it is no customer here.
    :param notify: ``notify(recipient)``: tell it (if it seems online) that messages wait here.
    """

    def __init__(self, store: MailboxStore, run_in_thread: Callable[..., defer.Deferred], now: Callable[[], float],
                 limits: Callable[[], MailboxLimits], account: Callable[[str], str | None],
                 notify: Callable[[str], Any] = lambda recipient: None):
        self.notify = notify
        self._notified: dict[str, float] = {}
        self._sweeps: task.LoopingCall | None = None
        self._sweeping: defer.Deferred | None = None
        self.store = store
        self.run = run_in_thread
        self.now = now
        self.limits = limits
        self.account = account
        #: queued, duplicates, fetched (messages given out), removed, expired, dropped (contract ended).
        self.counts: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def handle(self, creator_id: str, payload: bytes) -> defer.Deferred:
        """Deferred[(command, payload)]: the answer to one ``Correspondent`` packet of ``creator_id``."""
        return defer.Deferred.fromCoroutine(self._handle(creator_id, payload))

    async def _handle(self, creator_id: str, payload: bytes) -> tuple[str, bytes]:
        try:
            op = mw.op_of(payload)
            if op == mw.PUT:
                return await self._put(creator_id, payload)
            account = self.account(creator_id)
            if account is None or op == mw.NOTIFY:
                raise MailboxRefused("not_customer", "mailbox: you are not a customer here")
            if op == mw.FETCH:
                after = mw.decode_fetch(payload)
                page, more = await self.run(self.store.fetch, account, after, self.now())
                self.counts["fetched"] += len(page)
                return Command.ACK.value, mw.encode_page(page, more)
            removed = await self.run(self.store.remove, account, mw.decode_remove(payload))
            self.counts["removed"] += removed
            return Command.ACK.value, json.dumps({"removed": removed}).encode("utf-8")
        except MailboxRefused as err:
            self.refused[err.kind] += 1
            return Command.FAIL.value, str(err).encode("utf-8")
        except BitnodeError as err:
            self.refused["bad_request"] += 1
            return Command.FAIL.value, str(err).encode("utf-8")

    async def _put(self, sender: str, payload: bytes) -> tuple[str, bytes]:
        recipient, message_id, sealed = mw.decode_put(payload)
        account = self.account(recipient)
        if account is None:
            raise MailboxRefused("not_customer", f"mailbox: {recipient} is not a customer of this supplier")
        expires, new = await self.run(self.store.put, account, sender, message_id, sealed, self.now(),
                                      self.limits())
        self.counts["queued" if new else "duplicates"] += 1
        if new:
            self._announce(account, recipient)
        return Command.ACK.value, json.dumps({"queued": True, "expires": expires, "duplicate": not new}).encode()

    def _announce(self, account: str, recipient: str) -> None:
        now = self.now()
        if now - self._notified.get(account, float("-inf")) < NOTIFY_INTERVAL:
            return
        # (one entry per customer at most: only customers get messages queued)
        self._notified[account] = now
        self.counts["notified"] += 1
        self.notify(recipient)

    def sweep(self) -> defer.Deferred:
        """Remove expired messages (off the reactor); Deferred[int]."""
        d = self.run(self.store.expire, self.now())

        def counted(n: int) -> int:
            self.counts["expired"] += n
            return n

        return d.addCallback(counted)

    def start_sweeps(self, clock: Any, interval: float = SWEEP_INTERVAL) -> None:
        """A sweep now and every ``interval`` seconds of ``clock``."""
        self._sweeps = task.LoopingCall(self._sweep_once)
        self._sweeps.clock = clock
        self._sweeps.start(interval, now=True)

    def _sweep_once(self) -> None:
        if self._sweeping is None:
            d = self.sweep()
            d.addErrback(lambda f: Logger().info("mailbox sweep: {err}", err=f.getErrorMessage()))
            if not d.called:
                self._sweeping = d
                d.addBoth(lambda _: setattr(self, "_sweeping", None))

    def close(self) -> defer.Deferred:
        """No more sweeps; close the store once a sweep in progress is over."""
        if self._sweeps is not None and self._sweeps.running:
            self._sweeps.stop()
        self._sweeps = None
        d = self._sweeping if self._sweeping is not None else defer.succeed(None)
        return d.addBoth(lambda _: self.store.close())

    def drop(self, recipient: str) -> defer.Deferred:
        """A customer's contract ended: its queue goes."""
        self._notified.pop(recipient, None)
        d = self.run(self.store.drop_recipient, recipient)
        return d.addCallback(lambda n: self.counts.update(dropped=n))

    def status(self) -> Any:
        """Counters plus what is queued now (read on the reactor: a small aggregate query)."""
        try:
            totals = self.store.totals()
        except BitnodeError:
            totals = {}
        return dict(self.counts, refused=dict(self.refused), **totals)
