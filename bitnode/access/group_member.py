"""group_member: this node's membership of one group, connected to the group's brokers.

One machine per joined group. It subscribes to the group's primary broker
(through a :class:`~bitnode.access.group_links.BrokerChain`, which follows
redirects and moves on to the next broker when one does not answer: a
backup takes over then, :mod:`bitnode.access.group_replica`), learns the
roster and its keys from the control entries the subscribe answer carries,
catches up on everything after the last entry it stored, then takes the
primary's pushes, and hands every entry to ``deliver`` strictly in sequence
order: an entry that arrives early waits until the ones before it came (a
hole is fetched). So every member stores a group's messages in the same
order, the log's.

States:

- ``SUBSCRIBING``   asking the primary for pushes (through the chain of brokers);
- ``CATCHING_UP``   fetching entries after the last one stored, batch by batch (from any broker);
- ``CONNECTED``     taking pushes; once a minute it fetches again, which finds
  pushes that were lost and notices a primary that changed or went away;
- ``DISCONNECTED``  no broker answered: retry after a delay that doubles from
  :data:`RETRY_FIRST` up to :data:`RETRY_MAX` seconds (a push, a ``moved``
  notice or a new ``join`` retries at once);
- ``REFUSED``       the brokers say we are no member (403: never invited, or
  removed) or the group no longer exists (404): no retries until the user joins again;
- ``CLOSED``        left: the machine is destroyed.

``moved`` (a broker says it leads now, a push came from another broker, a
publish found the primary gone or deposed) subscribes again at once.

A push is acknowledged once it is held here, before it is stored: a node
that stops before storing it fetches it again from its last stored sequence
(the history keeps one copy of a message), so nothing acknowledged is lost.

Sending (:meth:`GroupMember.publish`) goes to the primary; when the primary
is gone or no longer leads, the membership subscribes again (which makes a
backup take over) and the message is sent there, the same message id: the
log keeps it once. It fails with a 503 when no broker took it within the
send timeout; refusals (403, 429 ...) come back as they are.

Neighbours (passed in): ``link`` (the chain: ``subscribe(after)``,
``fetch(after, limit)``, ``publish(blob)``, ``unsubscribe()``, ``moved(leader,
term)``, ``leader``; unreachable -> :class:`BrokerUnreachable`, refusals ->
Forbidden / NotFound / other typed errors), ``learn(controls) -> Deferred``
(the control entries of a subscribe answer: roster and keys),
``deliver(sequence, blob) -> Deferred[row | None]`` (open, store in the
history, announce), ``save(active, last_sequence) -> Deferred`` and
``announce(event, data)`` (``joined``, ``left``, ``connected``,
``disconnected``, ``refused``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from automats import Automat
from bitnode.access.group_protocol import MAX_FETCH, Redirected
from bitnode.chat.message_crypto import MessageRejected
from bitnode.errors import BitnodeError, Forbidden, NotFound, Unavailable

RETRY_FIRST = 2.0
RETRY_MAX = 120.0
#: Entries held while waiting for an earlier one; later ones are fetched when their turn comes.
MAX_BUFFERED = 1000
ACTIVE_STATES = frozenset({"CATCHING_UP", "CONNECTED"})
#: States a join ends in: connected, or not (and why is known).
SETTLED_STATES = frozenset({"CONNECTED", "DISCONNECTED", "REFUSED", "CLOSED"})


class BrokerUnreachable(Unavailable):
    """The group's broker did not answer (offline, unknown address, timeout)."""


class _Inbox:
    """Entries waiting for their turn, and how far they were handed over."""

    def __init__(self, last_sequence: int) -> None:
        self.next = last_sequence + 1  # the next sequence to hand over
        self.stored = last_sequence    # the newest sequence delivered
        self.buffer: dict[int, bytes] = {}

    def add(self, sequence: int, blob: bytes) -> None:
        if self.next <= sequence < self.next + MAX_BUFFERED:
            self.buffer.setdefault(sequence, blob)

    def skip_to(self, sequence: int) -> None:
        """Entries before ``sequence`` will never come: hand over from ``sequence`` on."""
        self.buffer = {s: b for s, b in self.buffer.items() if s >= sequence}
        self.next, self.stored = sequence, sequence - 1

    def has_hole(self, more: tuple[int, ...] = ()) -> bool:
        """Whether some entry (held, or among ``more``) waits for one that has not come."""
        known = {s for s in (*self.buffer, *more) if s >= self.next}
        return bool(known) and len(known) != max(known) - self.next + 1


class GroupMember(Automat):
    """The life of one membership (see the module doc)."""

    name = "group_member"
    initial = "AT_STARTUP"
    timers = {"timer-1min": (60.0, {"CONNECTED"})}
    transitions = [
        # state          event          guard           next            actions
        ("AT_STARTUP",   "join",        None,           "SUBSCRIBING",  ["subscribe"]),
        ("SUBSCRIBING",  "subscribed",  None,           "CATCHING_UP",  ["fetch"]),
        ("SUBSCRIBING",  "pushed",      None,           "*",            ["accept"]),  # may come before the answer
        ("SUBSCRIBING",  "join",        None,           "*",            []),  # already on its way
        ("SUBSCRIBING",  "moved",       None,           "*",            []),  # the subscribe finds the leader
        ("SUBSCRIBING",  "refused",     None,           "REFUSED",      ["report_refused"]),
        ("SUBSCRIBING",  "broker-lost", None,           "DISCONNECTED", ["schedule_retry"]),
        ("CATCHING_UP",  "fetched",     "is_behind",    "*",            ["accept_batch", "fetch"]),
        ("CATCHING_UP",  "fetched",     None,           "CONNECTED",    ["accept_batch", "report_connected"]),
        ("CATCHING_UP",  "pushed",      None,           "*",            ["accept"]),  # a hole is seen after the batch
        ("CATCHING_UP",  "join",        None,           "*",            []),
        ("CATCHING_UP",  "moved",       None,           "SUBSCRIBING",  ["subscribe"]),
        ("CATCHING_UP",  "refused",     None,           "REFUSED",      ["report_refused"]),
        ("CATCHING_UP",  "broker-lost", None,           "DISCONNECTED", ["report_disconnected", "schedule_retry"]),
        ("CONNECTED",    "pushed",      "leaves_hole",  "CATCHING_UP",  ["accept", "fetch"]),
        ("CONNECTED",    "pushed",      None,           "*",            ["accept"]),
        ("CONNECTED",    "timer-1min",  None,           "CATCHING_UP",  ["fetch"]),  # lost pushes? broker alive?
        ("CONNECTED",    "join",        None,           "*",            []),
        ("CONNECTED",    "moved",       None,           "SUBSCRIBING",  ["subscribe"]),
        ("CONNECTED",    "refused",     None,           "REFUSED",      ["report_refused"]),
        ("CONNECTED",    "broker-lost", None,           "DISCONNECTED", ["report_disconnected", "schedule_retry"]),
        ("DISCONNECTED", "retry",       None,           "SUBSCRIBING",  ["subscribe"]),
        ("DISCONNECTED", "join",        None,           "SUBSCRIBING",  ["cancel_retry", "subscribe"]),  # now
        ("DISCONNECTED", "pushed",      None,           "SUBSCRIBING",  ["cancel_retry", "accept", "subscribe"]),
        ("DISCONNECTED", "moved",       None,           "SUBSCRIBING",  ["cancel_retry", "subscribe"]),
        ("DISCONNECTED", "broker-lost", None,           "*",            []),  # a send that failed meanwhile
        ("DISCONNECTED", "refused",     None,           "REFUSED",      ["cancel_retry", "report_refused"]),
        ("REFUSED",      "join",        None,           "SUBSCRIBING",  ["subscribe"]),
        ("REFUSED",      "broker-lost", None,           "*",            []),  # a send that failed meanwhile
        ("REFUSED",      "refused",     None,           "*",            []),
        ("REFUSED",      "moved",       None,           "*",            []),  # not a member: nothing to follow
        ("REFUSED",      "pushed",      None,           "*",            []),  # on its way before the removal
        ("*",            "leave",       None,           "CLOSED",       ["cancel_retry", "unsubscribe", "report_left",
                                                                          "destroy"]),
    ]

    log = Logger()

    def __init__(self, clock: Any, group_key_id: str, last_sequence: int, link: Any,
                 learn: Callable[[list], Deferred], deliver: Callable[[int, bytes], Deferred],
                 save: Callable[[bool, int], Deferred], announce: Callable[[str, dict], Any],
                 registry: Any = None) -> None:
        super().__init__(clock, registry=registry, machine_id=f"group_member[{group_key_id}]")
        self.group_key_id = group_key_id
        self.link = link
        self.learn = learn
        self.deliver = deliver
        self.save = save
        self.announce = announce
        self.inbox = _Inbox(last_sequence)
        self.head = last_sequence
        self.retries = 0
        self.retry_at: Optional[float] = None
        self.last_error = ""
        self.refusal: Optional[BitnodeError] = None
        self.counters = {"delivered": 0, "rejected": 0, "published": 0}
        self._attempt = 0
        self._retry_call: Any = None
        self._draining = False
        self._saved = last_sequence
        self._waiters: dict[int, list[Deferred]] = {}
        self._settle_waiters: list[Deferred] = []
        self._announced = False

    # -- public -----------------------------------------------------------------------

    @property
    def last_sequence(self) -> int:
        """The newest entry handed to ``deliver``."""
        return self.inbox.stored

    @property
    def broker(self) -> str:
        """The broker asked first now (the one believed to lead)."""
        return self.link.broker

    def is_active(self) -> bool:
        """Subscribed and able to send."""
        return self.state in ACTIVE_STATES

    def describe_group(self) -> dict:
        """The membership, for groups_list / group_info."""
        return {"state": self.state, "active": self.is_active(), "broker": self.broker,
                "brokers": list(self.link.brokers), "term": self.link.term,
                "last_sequence": self.inbox.stored, "head": max(self.head, self.inbox.stored),
                "retries": self.retries, "retry_at": self.retry_at, "last_error": self.last_error,
                **self.counters}

    def publish(self, blob: bytes, timeout: float) -> Deferred:
        """Send a sealed entry to the primary: Deferred[int] of its sequence number (see the module doc)."""
        if self.state not in ACTIVE_STATES and self.state != "SUBSCRIBING":
            return fail(self._why_not_active())
        return Deferred.fromCoroutine(self._publish(blob, self.clock.seconds() + timeout))

    async def _publish(self, blob: bytes, deadline: float) -> int:
        while True:
            if self.state not in ACTIVE_STATES:
                left = deadline - self.clock.seconds()
                state = await self.when_settled(max(left, 0.0)) if left > 0 and not self.destroyed else self.state
                if state not in ACTIVE_STATES:
                    raise self._why_not_active()
            try:
                answer = await self.link.publish(blob)
                break
            except Redirected as err:
                # the primary moved (or nobody leads now): subscribe again - a backup takes over - then resend
                self.last_error = str(err)
                if self.clock.seconds() >= deadline or self.destroyed:
                    raise Unavailable(f"group {self.group_key_id}: no broker leads the group now, message not "
                                      f"sent: {err}") from None
                self._fire("moved")
            except BrokerUnreachable as err:
                self._fire("broker-lost", str(err))
                raise Unavailable(f"no broker of group {self.group_key_id} is reachable, message not sent: "
                                  f"{err}") from None
            except (Forbidden, NotFound):
                # this entry was refused (a control entry the roster does not allow, say); whether we
                # are still a member at all is for a subscribe to say, not for this one refusal
                self._fire("moved")
                raise
        sequence = int(answer["sequence"])
        self.counters["published"] += 1
        self._fire("pushed", sequence, blob)  # our own entry: no push comes for it
        return sequence

    def moved(self, leader: str, term: int) -> None:
        """A broker of the group says it leads from ``term`` on (a ``moved`` notice, a push)."""
        if self.link.moved(leader, term):
            self._fire("moved")

    def removed(self, error: BitnodeError) -> None:
        """The log says this node was removed from the group: no more requests (``refused``)."""
        self._attempt += 1  # an answer on its way no longer counts
        self._fire("refused", error)

    def wait_delivered(self, sequence: int, timeout: float) -> Deferred:
        """Deferred[row | None]: the history row of entry ``sequence`` once delivered here
        (None if it was delivered before this call, or not within ``timeout`` seconds)."""
        if sequence <= self.inbox.stored:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._waiters.setdefault(sequence, []).append(waiter)
        call = self.clock.callLater(timeout, self._give_up, sequence, waiter)

        def settled(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        return waiter.addBoth(settled)

    def when_settled(self, timeout: float) -> Deferred:
        """Deferred[str]: the state once the machine is connected, disconnected, refused or closed
        (or whatever it is after ``timeout`` seconds)."""
        if self.state in SETTLED_STATES or self.destroyed:
            return succeed(self.state)
        settled: Deferred = Deferred()
        self._settle_waiters.append(settled)

        def give_up() -> None:
            if settled in self._settle_waiters:
                self._settle_waiters.remove(settled)
                settled.callback(self.state)

        call = self.clock.callLater(timeout, give_up)

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            if settled in self._settle_waiters:
                self._settle_waiters.remove(settled)
            return result

        return settled.addBoth(done)

    def close(self) -> None:
        """The node stops: no more requests, nothing said to the broker (it keeps the subscription)."""
        self.cancel_retry()
        self._attempt += 1
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.callback(None)
        self._waiters.clear()
        self.destroy()
        self._settled()

    # -- guards -----------------------------------------------------------------------

    def is_behind(self, batch: dict) -> bool:
        """The fetched batch is not the end of the queue, or leaves an entry waiting for a missing one."""
        return bool(batch["more"]) or self.inbox.has_hole(tuple(s for s, _ in batch["entries"]))

    def leaves_hole(self, sequence: int, blob: bytes) -> bool:
        """Taking this entry leaves it (or another) waiting for an earlier one."""
        return self.inbox.has_hole((sequence,))

    # -- actions ----------------------------------------------------------------------

    def subscribe(self, *args: Any) -> None:
        """Ask the primary for pushes and learn the roster; answers fire subscribed / refused / broker-lost."""
        async def subscribed() -> dict:
            answer = await self.link.subscribe(self.inbox.next - 1)
            await self.learn(answer["controls"])
            return answer

        self._request(Deferred.fromCoroutine(subscribed()), "subscribed")

    def fetch(self, *args: Any) -> None:
        """Fetch the entries after the last one taken; the answer fires fetched / refused / broker-lost."""
        self._request(self.link.fetch(self.inbox.next - 1, MAX_FETCH), "fetched")

    def accept(self, sequence: int, blob: bytes) -> None:
        """Hold a pushed entry and hand over whatever is now in order."""
        self.head = max(self.head, sequence)
        self.inbox.add(sequence, blob)
        self._drain()

    def accept_batch(self, batch: dict) -> None:
        """Hold the fetched entries and hand over whatever is now in order; follow a primary that changed."""
        self.head = max(self.head, int(batch["head"]))
        if batch.get("leader") and self.link.moved(batch["leader"], int(batch.get("term", 0))):
            self._fire("moved")
        entries = batch["entries"]
        if entries and entries[0][0] > self.inbox.next:
            # A fetch answers every entry after the ones taken: the broker no longer has those in between
            # (a queue restored from a backup goes on numbering without its old stream).
            self.inbox.skip_to(entries[0][0])
        for sequence, blob in entries:
            self.inbox.add(sequence, blob)
        self._drain()

    def schedule_retry(self, *args: Any) -> None:
        """Fire ``retry`` after the next backoff delay."""
        self.cancel_retry()
        delay = min(RETRY_FIRST * 2 ** self.retries, RETRY_MAX)
        self.retries += 1
        self._retry_call = self.clock.callLater(delay, self._fire, "retry")
        self.retry_at = self.clock.seconds() + delay
        self._settled()

    def cancel_retry(self, *args: Any) -> None:
        """Forget a scheduled retry."""
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call, self.retry_at = None, None

    def report_connected(self, *args: Any) -> None:
        """Caught up: reset the backoff; the first time after joining, announce it."""
        self.retries, self.last_error = 0, ""
        if not self._announced:
            self._announced = True
            self.announce("joined", self._facts())
        self.announce("connected", self._facts())
        self._settled()

    def report_disconnected(self, reason: str = "", *args: Any) -> None:
        """The broker went away."""
        self.last_error = reason
        self.announce("disconnected", self._facts())

    def report_refused(self, error: BitnodeError, *args: Any) -> None:
        """The broker refused us (not a member: Forbidden, or no such group: NotFound)."""
        self.refusal, self.last_error = error, str(error)
        self.announce("refused", self._facts())
        self._settled()

    def unsubscribe(self, *args: Any) -> None:
        """Tell the broker (best effort) and forget the membership's requests."""
        self._attempt += 1
        d = self.link.unsubscribe()
        d.addErrback(lambda f: self.log.info("{id}: unsubscribing failed: {err}", id=self.id, err=f.getErrorMessage()))

    def report_left(self, *args: Any) -> None:
        """Left the group."""
        self.announce("left", self._facts())
        self._settled()

    # -- internals ---------------------------------------------------------------------

    def _facts(self) -> dict:
        return {"group_key_id": self.group_key_id, "broker": self.broker, "last_sequence": self.inbox.stored,
                "state": self.state, "reason": self.last_error}

    def _why_not_active(self) -> BitnodeError:
        if self.state == "DISCONNECTED":
            return Unavailable(f"group {self.group_key_id}: no broker is reachable, message not sent "
                               f"(retrying; last error: {self.last_error or 'none'})")
        if self.state == "REFUSED" and self.refusal is not None:
            return type(self.refusal)(str(self.refusal))
        return Unavailable(f"group {self.group_key_id} is still connecting to its brokers: "
                           "message not sent, try again shortly")

    def _settled(self) -> None:
        """Answer the callers of :meth:`when_settled` with the state reached."""
        waiters, self._settle_waiters = self._settle_waiters, []
        for waiter in waiters:
            waiter.callback(self.state)

    def _fire(self, event: str, *args: Any) -> None:
        if not self.destroyed:
            self.event(event, *args)

    def _request(self, d: Deferred, success: str) -> None:
        """Fire ``success`` with the answer of ``d``, or refused / broker-lost, unless a newer request came."""
        self._attempt += 1
        attempt = self._attempt

        def done(result: Any) -> None:
            if attempt == self._attempt:
                self._fire(success, result)

        def failed(failure: Any) -> None:
            if attempt != self._attempt:
                return
            if failure.check(Forbidden, NotFound):
                self._fire("refused", failure.value)
                return
            if failure.check(Redirected):  # nobody leads now (an election failed): try again later
                self._fire("broker-lost", failure.getErrorMessage())
                return
            if not failure.check(BrokerUnreachable):
                self.log.warn("{id}: the broker's answer was unusable: {err}", id=self.id,
                              err=failure.getErrorMessage())
            self._fire("broker-lost", failure.getErrorMessage())

        d.addCallbacks(done, failed)

    def _drain(self) -> None:
        if not self._draining:
            self._draining = True
            Deferred.fromCoroutine(self._hand_over()).addErrback(
                lambda f: self.log.failure("{id}: handing entries over failed", f, id=self.id))

    async def _hand_over(self) -> None:
        """Deliver the held entries that are next in order, one at a time; then save how far we got."""
        inbox = self.inbox
        stuck = False
        try:
            while inbox.next in inbox.buffer and not self.destroyed:
                sequence = inbox.next
                blob = inbox.buffer.pop(sequence)
                inbox.next += 1
                row = None
                try:
                    row = await self.deliver(sequence, blob)
                    self.counters["delivered"] += 1
                except MessageRejected as err:
                    # the broker checked it, so this is a broken broker: skip it rather than stall the group
                    self.counters["rejected"] += 1
                    self.log.warn("{id}: entry {seq} refused: {err}", id=self.id, seq=sequence, err=err)
                except Exception as err:
                    # not stored (the history is closing?): keep it for the next try
                    inbox.buffer[sequence], inbox.next = blob, sequence
                    self.log.info("{id}: entry {seq} not stored yet: {err}", id=self.id, seq=sequence, err=err)
                    stuck = True
                    break
                inbox.stored = sequence
                for waiter in self._waiters.pop(sequence, []):
                    waiter.callback(row)
            if inbox.stored != self._saved and not self.destroyed:
                self._saved = inbox.stored
                await self.save(True, inbox.stored)
        finally:
            self._draining = False
        if inbox.next in inbox.buffer and not self.destroyed and not stuck:
            self._drain()  # more arrived while saving; after a failure the next entry (or sync) tries again

    def _give_up(self, sequence: int, waiter: Deferred) -> None:
        waiters = self._waiters.get(sequence, [])
        if waiter in waiters:
            waiters.remove(waiter)
            waiter.callback(None)
