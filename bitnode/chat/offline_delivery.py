"""Private messages for users who are offline: queued on their suppliers, fetched when they are back, receipted.

Sender side (:meth:`OfflineDelivery.queue`): the recipient did not answer, so
the sealed message (encrypted to the recipient, signed by the sender: the
suppliers cannot read or change it) goes to each supplier named in the
recipient's signed ``suppliers:`` DHT record (which the suppliers keep alive
while the recipient is away), as a mailbox PUT (:mod:`bitnode.supplier.mailbox`).
It is queued when at least one supplier acknowledged it (stored on disk).

Recipient side (:meth:`OfflineDelivery.check`, run at start, on
``network-connected``, on ``suppliers-changed`` and every
``mailbox-check-interval`` seconds): fetch every queued message from each of
my suppliers; merge them (the same message from several suppliers counts
once), order them by the sender's time, and hand them one at a time to the
inbox (``take``: the same checks, limits and history as a message that came
directly, once per sender and message id); then remove from each supplier the
ones taken (stored, already stored, or refused for good). A message that
cannot be judged now (its sender's identity cannot be fetched, a history
error) is left queued and the round goes on with the next one; the next
round tries it again, until the suppliers' mailbox expiry. A round stopped
midway (the service stopping, a supplier gone) leaves the rest queued: the next
round fetches them again and the history's message ids keep them once.

Receipts (:class:`Receipts`): each queued message stored here owes its sender
a ``delivery_receipt`` (noted in the history in the same transaction as the
message). Receipts go out, one per sender listing up to :data:`RECEIPT_BATCH`
message ids, the same way as messages: directly, or queued on the sender's
suppliers when the sender is offline too; an owed receipt is kept (and retried
every round) until one of the two worked, so a sender offline at delivery time
learns later. The sender marks those messages ``delivered``. A queued message
I refused (friends only, a quota) owes its sender a receipt too, naming it with
the reason under ``"refused"``: the sender marks it ``failed`` with that
reason. A message whose signature or encryption does not check gets none (its
sender is not known for sure).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from bitnode.chat.inbox import LATER, REJECTED
from bitnode.chat.message_crypto import MessageRejected, peek, validate_message_id
from bitnode.errors import BitnodeError, Unavailable
from bitnode.supplier import mailbox_wire as mw
from bitnode.transport.commands import Command

#: Message ids one receipt lists.
RECEIPT_BATCH = 100
#: Receipts owed that one round reads from the history.
RECEIPTS_PER_ROUND = 1000
#: Message ids one receipt may name.
MAX_RECEIPT_IDS = 1000
#: Pages fetched from one supplier in one round (each up to the supplier's page size).
MAX_PAGES = 50


def receipt_id(message_ids: list[str]) -> str:
    """The message id of the receipt for these messages (the same list gives the same id: a resent receipt is one)."""
    return "rcpt-" + hashlib.sha256("\n".join(message_ids).encode("utf-8")).hexdigest()[:40]


def parse_receipt(data: Any) -> tuple[list[str], dict[str, str]]:
    """(delivered ids, {refused id: reason}) of a receipt's data; MessageRejected when it is not one."""
    ids, refused = data.get("receipt_for", []), data.get("refused", {})
    if not isinstance(ids, list) or not isinstance(refused, dict) or len(ids) + len(refused) > MAX_RECEIPT_IDS:
        raise MessageRejected("a receipt names a list of message ids and a map of refused ones")
    for message_id in [*ids, *refused]:
        validate_message_id(message_id)
    return ids, {key: str(why)[:300] for key, why in refused.items()}


class MailboxClient:
    """Mailbox requests to suppliers over the gateway (``gateway()`` the running one; ``timeout`` seconds each)."""

    def __init__(self, gateway: Callable[[], Any], timeout: float = 15.0):
        self.gateway = gateway
        self.timeout = timeout

    async def _request(self, supplier: str, payload: bytes) -> bytes:
        gateway = self.gateway()
        if gateway is None:
            raise Unavailable("the gateway is not running")
        response = await gateway.request(Command.CORRESPONDENT, supplier, payload, timeout=self.timeout)
        return bytes(response.payload)

    async def put(self, supplier: str, recipient: str, message_id: str, sealed: bytes) -> None:
        """Queue ``sealed`` for ``recipient`` on ``supplier`` (an error when it refused or did not answer)."""
        await self._request(supplier, mw.encode_put(recipient, message_id, sealed))

    async def fetch_all(self, supplier: str) -> list[mw.QueuedMessage]:
        """Everything queued for me on ``supplier`` (up to :data:`MAX_PAGES` pages)."""
        entries: list[mw.QueuedMessage] = []
        after = 0
        for _ in range(MAX_PAGES):
            page, more = mw.decode_page(await self._request(supplier, mw.encode_fetch(after)))
            entries += page
            if not more or not page:
                break
            after = page[-1].seq
        return entries

    async def remove(self, supplier: str, seqs: list[int]) -> None:
        """Remove these entries of my queue on ``supplier``."""
        for start in range(0, len(seqs), mw.MAX_REMOVE):
            await self._request(supplier, mw.encode_remove(seqs[start:start + mw.MAX_REMOVE]))


#: Counter names of take()'s outcomes (anything else is a refusal).
_OUTCOMES = {"stored": "taken", "duplicate": "duplicates", "receipt": "receipts"}


def _order(entry: mw.QueuedMessage) -> tuple:
    try:
        sent = peek(entry.sealed).time  # the sender's time (signed; checked when the message is opened)
    except BitnodeError:
        sent = entry.arrived
    return sent, entry.arrived, entry.sender, entry.message_id


@dataclass(eq=False, repr=False)
class OfflineDelivery:
    """Queueing for offline recipients and fetching my own queue (see the module docstring).

    :param client: a :class:`MailboxClient`.
    :param their_suppliers: ``their_suppliers(user)`` -> Deferred[list of global ids] from the user's record.
    :param my_suppliers: ``my_suppliers()`` -> Deferred[list of global ids].
    :param take: ``take(entry)`` -> Deferred[str]: hands a queued message to the inbox; the outcome
        ("stored", "duplicate", "receipt", or the refusal) — raises when it could not be judged now.
    :param receipts: the :class:`Receipts` flushed at the end of every round.
    """

    log = Logger()

    client: MailboxClient
    their_suppliers: Callable[[str], Any]
    my_suppliers: Callable[[], Any]
    take: Callable[[mw.QueuedMessage], Awaitable[str]]
    receipts: Receipts | None = None
    #: queued (messages I queued for others), queue_failed, rounds (started), rounds_finished, fetched, taken,
    #: duplicates, rejected, refused, deferred (left queued: not judged now), fetch_failed, remove_failed,
    #: round_errors.
    counts: Counter[str] = field(init=False, default_factory=Counter)
    last_error: str = field(init=False, default="")
    _timer: task.LoopingCall | None = field(init=False, default=None)
    _round: defer.Deferred | None = field(init=False, default=None)
    _again: bool = field(init=False, default=False)

    # -- sender side --------------------------------------------------------------------

    async def queue(self, recipient: str, message_id: str, sealed: bytes) -> list[str]:
        """Hand ``sealed`` to every supplier of ``recipient``; those that took it (Unavailable if none)."""
        try:
            suppliers = [s for s in await self.their_suppliers(recipient) if s]
        except BitnodeError as err:
            self.counts["queue_failed"] += 1
            raise Unavailable(f"cannot find the suppliers of {recipient}: {err}") from None
        if not suppliers:
            self.counts["queue_failed"] += 1
            raise Unavailable(f"{recipient} has no suppliers to queue the message on")
        outcomes = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(self.client.put(s, recipient, message_id, sealed)) for s in suppliers],
            consumeErrors=True)
        holders = [s for s, (ok, _) in zip(suppliers, outcomes, strict=True) if ok]
        if not holders:
            self.counts["queue_failed"] += 1
            reasons = "; ".join(f"{s}: {value.getErrorMessage()}" for s, (_, value) in zip(suppliers, outcomes,
                                                                                            strict=True))
            raise Unavailable(f"none of the {len(suppliers)} suppliers of {recipient} took the message: {reasons}")
        self.counts["queued"] += 1
        return holders

    # -- recipient side -------------------------------------------------------------------

    def check(self) -> defer.Deferred:
        """Fetch and take my queued messages; a call during a round runs one more round after it."""
        if self._round is not None:
            self._again = True
            return self._round
        d = defer.Deferred.fromCoroutine(self._rounds())
        if not d.called:
            self._round = d  # (a round that needed no waiting is over already)
        return d

    def start(self, clock: Any, interval: float) -> None:
        """A round now and every ``interval`` seconds of ``clock`` (again with a new interval)."""
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = task.LoopingCall(self.poke)
        self._timer.clock = clock
        self._timer.start(interval, now=True)

    def poke(self, *_: Any) -> None:
        """A round soon (the timer, a notice, an event): :meth:`check` without waiting for it."""
        self.check().addErrback(lambda f: f.trap(defer.CancelledError))

    def stop(self) -> None:
        """No more rounds; cancel one in progress (what it did not remove stays queued)."""
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = None
        self._again = False
        if self._round is not None:
            self._round.cancel()
        if self.receipts is not None:
            self.receipts.stop()

    async def _rounds(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self._one_round()
                    if self.receipts is not None:
                        await self.receipts.flush()
                    self.counts["rounds_finished"] += 1
                except defer.CancelledError:
                    raise
                except Exception as err:  # noqa: BLE001 - a round's failure must not end the next ones
                    self.counts["round_errors"] += 1
                    self.last_error = str(err)
                    self.log.info("fetching queued messages: {err}", err=err)
                if not self._again:
                    return
        finally:
            self._round = None

    async def _one_round(self) -> None:
        self.counts["rounds"] += 1
        suppliers = [s for s in await self.my_suppliers() if s]
        found: dict[tuple[str, str], mw.QueuedMessage] = {}
        holders: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
        fetched = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(self.client.fetch_all(s)) for s in suppliers], consumeErrors=True)
        for supplier, (ok, result) in zip(suppliers, fetched, strict=True):
            if not ok:
                result.trap(BitnodeError)
                self.counts["fetch_failed"] += 1
                self.last_error = f"{supplier}: {result.getErrorMessage()}"
                continue
            for entry in result:
                key = (entry.sender, entry.message_id)
                found.setdefault(key, entry)
                holders[key].append((supplier, entry.seq))
        self.counts["fetched"] += len(found)
        taken: dict[str, list[int]] = defaultdict(list)
        try:
            for entry in sorted(found.values(), key=_order):
                try:
                    outcome = await self.take(entry)
                except defer.CancelledError:
                    raise
                except Exception as err:  # noqa: BLE001 - one message that cannot be judged must not hold the rest
                    outcome = f"{LATER}{err}"
                if outcome.startswith(LATER):
                    # left queued on the suppliers: a later round tries again (their expiry bounds how long)
                    self.counts["deferred"] += 1
                    self.last_error = f"{entry.sender} {entry.message_id}: {outcome[len(LATER):]}"
                    continue
                self.counts[_OUTCOMES.get(outcome, "rejected" if outcome.startswith(REJECTED) else "refused")] += 1
                for supplier, seq in holders[(entry.sender, entry.message_id)]:
                    taken[supplier].append(seq)
        finally:
            # what was taken goes from the suppliers even when the round stops midway
            removals = [defer.Deferred.fromCoroutine(self.client.remove(s, seqs)) for s, seqs in taken.items()]
            for ok, _ in await defer.DeferredList(removals, consumeErrors=True):
                if not ok:
                    self.counts["remove_failed"] += 1

    def status(self) -> dict:
        """Counters for service_info."""
        return dict(self.counts, checking=self._round is not None, last_error=self.last_error)


class Receipts:
    """The receipts this node owes (kept in the history) and their sending (see the module docstring).

    :param owed: ``owed(limit)`` -> Deferred[list of (sender, message id, refusal or "")].
    :param settled: ``settled(sender, ids)`` -> Deferred: those receipts went out.
    :param send: ``send(user, data, message_id)`` -> Deferred: delivered or queued (an error otherwise).
    """

    log = Logger()

    def __init__(self, owed: Callable[[int], Any], settled: Callable[[str, list[str]], Any],
                 send: Callable[[str, dict, str], Any]):
        self.owed = owed
        self.settled = settled
        self.send = send
        self.counts: Counter[str] = Counter()
        self._flushing: defer.Deferred | None = None

    def flush(self) -> defer.Deferred:
        """Send what is owed (one flush at a time)."""
        if self._flushing is not None:
            return self._flushing
        d = defer.Deferred.fromCoroutine(self._flush())
        if not d.called:
            self._flushing = d
            d.addBoth(self._done)
        return d

    def _done(self, result: Any) -> Any:
        self._flushing = None
        return result

    def stop(self) -> None:
        """Cancel a flush in progress (owed receipts stay owed)."""
        if self._flushing is not None:
            self._flushing.cancel()

    async def _flush(self) -> None:
        by_sender: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for sender, message_id, refusal in await self.owed(RECEIPTS_PER_ROUND):
            by_sender[sender].append((message_id, refusal))
        for sender, owed in by_sender.items():
            for start in range(0, len(owed), RECEIPT_BATCH):
                batch = [message_id for message_id, _ in owed[start:start + RECEIPT_BATCH]]
                data: dict[str, Any] = {"receipt_for": [m for m, why in owed[start:start + RECEIPT_BATCH] if not why]}
                refused = {m: why for m, why in owed[start:start + RECEIPT_BATCH] if why}
                if refused:
                    data["refused"] = refused
                try:
                    await self.send(sender, data, receipt_id(batch))
                except defer.CancelledError:
                    raise
                except BitnodeError as err:
                    self.counts["failed"] += 1
                    self.log.info("receipt to {who} not sent yet: {err}", who=sender, err=err)
                    break  # the sender is unreachable now: its other batches wait for the next round too
                await self.settled(sender, batch)
                self.counts["sent"] += 1


class QueuedExpiry:
    """My messages ``queued`` on offline recipients' suppliers that no receipt reached in time become ``failed``.

    A recipient that never comes back would otherwise leave them ``queued`` for ever, and its suppliers drop
    them after their mailbox expiry anyway. Every ``interval`` seconds of ``clock`` the rows queued more than
    ``expiry()`` seconds ago are marked failed (:meth:`MessageHistory.expire_queued`) and handed to
    ``on_expired(rows)``; a receipt that still comes later marks them delivered.

    :param run_in_thread: runs the history call off the reactor.
    :param history: ``history()`` -> the open :class:`MessageHistory`, or None while closed.
    """

    log = Logger()

    def __init__(self, clock: Any, run_in_thread: Callable[..., Any], history: Callable[[], Any],
                 expiry: Callable[[], float], on_expired: Callable[[list[dict]], None]):
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.history = history
        self.expiry = expiry
        self.on_expired = on_expired
        self._timer: task.LoopingCall | None = None

    def start(self, interval: float) -> None:
        """Look now and every ``interval`` seconds (again with a new interval)."""
        self.stop()
        self._timer = task.LoopingCall(self.sweep)
        self._timer.clock = self.clock
        self._timer.start(interval, now=True)

    def stop(self) -> None:
        """No more looks."""
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = None

    def sweep(self) -> defer.Deferred:
        """One look: fires with the rows it marked failed (none while the history is closed)."""
        history = self.history()
        if history is None:
            return defer.succeed([])
        expiry = self.expiry()
        reason = (f"not delivered: no delivery receipt came within {expiry / 86400:g} days of queueing it on the "
                  f"recipient's suppliers (they drop queued messages after their own expiry)")
        d = defer.maybeDeferred(self.run_in_thread, history.expire_queued, self.clock.seconds() - expiry, reason)

        def expired(rows: list[dict]) -> list[dict]:
            if rows:
                self.on_expired(rows)
            return rows

        def failed(failure: Any) -> list[dict]:  # the next look tries again: the timer must not die of it
            self.log.info("expiring queued messages: {err}", err=failure.getErrorMessage())
            return []

        return d.addCallbacks(expired, failed)
