"""The group broker: hosts the queues of the groups this node created and orders their messages.

Design (one broker per group, on the creator's node):

- **Membership**: a member is whoever proves it holds the group's *private*
  key. The first request of a member (subscribe, fetch or publish) makes the
  broker audit it (``AuditKey``, :mod:`bitnode.access.key_exchange`: the
  member signs a fresh challenge with the group key); the result is kept in
  the ``members`` table, so the audit happens once per member. Whoever fails
  it is refused with 403 and learns nothing of the queue. The creator itself
  is a member without an audit.
- **Order**: a message accepted into a queue gets the next sequence number
  (1, 2, 3 ...) in the same sqlite transaction that stores it, so the queue's
  order is the one order every member sees. Before that the broker checks the
  sealed message: addressed to the group, sent by the member who published
  it, signed by that member's identity key and readable with the group key
  (the ``check`` neighbour).
- **Persist, then acknowledge, then fan out**: the publisher's ``Ack`` (with
  the sequence number) leaves after the entry is committed; then the entry is
  pushed to every subscribed member (the *consumers*) except its sender, in
  sequence order. Appends are serialized so pushes leave in that order.
- **Late joiners and lost pushes**: any member may fetch every entry after a
  sequence number; a member joining late or coming back catches up that way.
- **Consumers that do not answer**: a push that fails counts against the
  consumer; after :data:`MAX_PUSH_FAILURES` in a row it is marked offline and
  skipped until it makes a request again (it then fetches what it missed).
  A member that answers a push with "not joined" (404) is unsubscribed.

Entries are kept as long as the queue exists (no expiry yet); deleting the
group key (``group_leave(erase_key=True)`` by the creator) deletes the queue.

Events on the node's bus: ``group-member-joined`` / ``group-member-left``
(``{"group_key_id", "member_id", "queue": true}``) when a member subscribes
or unsubscribes.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode.access.group_protocol import MAX_FETCH, MAX_FETCH_BYTES
from bitnode.access.group_store import GroupStore
from bitnode.errors import BadRequest, BitnodeError, Forbidden, NotFound, Unavailable

MAX_PUSH_FAILURES = 3
ONLINE, OFFLINE = "online", "offline"


class _Consumer:
    """What the broker remembers (in memory) about pushing to one subscribed member."""

    def __init__(self) -> None:
        self.state = ONLINE
        self.failures = 0
        self.pushed = 0
        self.last_pushed = 0
        self.last_error = ""


class GroupBroker:
    """The queues of the groups this node created.

    :param clock: ``IReactorTime``.
    :param me: this node's global id.
    :param store: the :class:`GroupStore` (read and written through ``run_in_thread``).
    :param run_in_thread: runs a blocking call off the reactor, returns a Deferred.
    :param audit: ``audit(group_key_id, member_id) -> Deferred[bool]``: whether
        the member proved it holds the group's private key.
    :param check: ``check(group_key_id, member_id, blob) -> Deferred[MessageHeader]``:
        the sealed message verified (raises BadRequest when it is not acceptable).
    :param push: ``push(member_id, group_key_id, sequence, blob) -> Deferred``:
        deliver one entry to a consumer (fails when it does not take it).
    :param publish_event: the node's ``events.publish(event_id, data)``.
    """

    log = Logger()

    def __init__(self, clock: Any, me: str, store: GroupStore, run_in_thread: Callable[..., Deferred],
                 audit: Callable[[str, str], Deferred], check: Callable[[str, str, bytes], Deferred],
                 push: Callable[[str, str, int, bytes], Deferred],
                 publish_event: Callable[[str, Any], Any]) -> None:
        self.clock = clock
        self.me = me
        self.store = store
        self.run = run_in_thread
        self.audit = audit
        self.check = check
        self.push = push
        self.publish_event = publish_event
        self._subscribers: dict[str, dict[str, _Consumer]] = {}
        self._audits: dict[tuple[str, str], list[Deferred]] = {}
        self._verified: set[tuple[str, str]] = set()
        self._appending = DeferredLock()
        self._pushes: set[Deferred] = set()
        self._stopped = False
        self.counters = {"published": 0, "repeated": 0, "refused": 0, "pushed": 0, "push_failed": 0, "fetched": 0}

    # -- lifecycle --------------------------------------------------------------------

    async def load(self) -> None:
        """Read the consumers of the hosted queues (after a restart pushes resume to them)."""
        members = await self.run(self.store.members)
        for member in members:
            if member["subscribed"]:
                self._subscribers.setdefault(member["group_key_id"], {})[member["member_id"]] = _Consumer()

    def stop(self) -> None:
        """Stop pushing (pushes in flight are cancelled); requests after this are refused."""
        self._stopped = True
        for d in list(self._pushes):
            d.cancel()

    # -- hosting ------------------------------------------------------------------------

    def host(self, group_key_id: str) -> Deferred:
        """Start hosting a queue for a group this node created; Deferred[queue summary]."""
        return self.run(self.store.create_queue, group_key_id, self.clock.seconds())

    def restore(self, group_key_id: str, created: float, head: int, members: list[dict]) -> Deferred:
        """Host a queue again from a backup (see :meth:`GroupStore.restore_queue`); pushes resume to its
        subscribed members. Deferred[queue summary]."""

        def restored(summary: dict) -> dict:
            consumers = self._subscribers.setdefault(group_key_id, {})
            for member in members:
                if member["subscribed"] and member["member_id"] not in consumers:
                    consumers[member["member_id"]] = _Consumer()
            return summary

        d = self.run(self.store.restore_queue, group_key_id, created, head, members)
        return d.addCallback(restored)

    def drop(self, group_key_id: str) -> Deferred:
        """Stop hosting a queue and delete its entries; Deferred[bool existed]."""
        self._subscribers.pop(group_key_id, None)
        self._verified = {key for key in self._verified if key[0] != group_key_id}
        return self.run(self.store.delete_queue, group_key_id)

    # -- members' requests ------------------------------------------------------------------

    def subscribe(self, group_key_id: str, member: str) -> Deferred:
        """A member asks for pushes of new entries; Deferred[{"head"}] (403 if not a member, 404 no queue)."""
        return Deferred.fromCoroutine(self._subscribe(group_key_id, member))

    async def _subscribe(self, group_key_id: str, member: str) -> dict:
        head = await self._admit(group_key_id, member)
        consumers = self._subscribers.setdefault(group_key_id, {})
        new = member not in consumers
        await self.run(self.store.update_member, group_key_id, member, self.clock.seconds(), None, True)
        consumers.setdefault(member, _Consumer()).state = ONLINE
        if new:
            self.publish_event("group-member-joined", {"group_key_id": group_key_id, "member_id": member,
                                                       "queue": True})
            self.log.info("{member} subscribed to group {group}", member=member, group=group_key_id)
        return {"head": head}

    def unsubscribe(self, group_key_id: str, member: str) -> Deferred:
        """A member stops its pushes; Deferred[{"head"}]. Nobody is refused: it only removes."""
        return Deferred.fromCoroutine(self._unsubscribe(group_key_id, member))

    async def _unsubscribe(self, group_key_id: str, member: str) -> dict:
        self._require_running()
        head = await self.run(self.store.head, group_key_id)
        consumers = self._subscribers.get(group_key_id, {})
        if consumers.pop(member, None) is not None:
            await self.run(self.store.update_member, group_key_id, member, self.clock.seconds(), None, False)
            self.publish_event("group-member-left", {"group_key_id": group_key_id, "member_id": member,
                                                     "queue": True})
        return {"head": head}

    def fetch(self, group_key_id: str, member: str, after: int, limit: int = MAX_FETCH) -> Deferred:
        """Entries after sequence ``after``: Deferred[{"entries": [(sequence, blob)], "head", "more"}]."""
        return Deferred.fromCoroutine(self._fetch(group_key_id, member, after, limit))

    async def _fetch(self, group_key_id: str, member: str, after: int, limit: int) -> dict:
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise BadRequest("after must be a sequence number, 0 or more")
        limit = max(1, min(int(limit), MAX_FETCH))
        await self._admit(group_key_id, member)
        entries, head = await self.run(self.store.entries_after, group_key_id, after, limit, MAX_FETCH_BYTES)
        self.counters["fetched"] += len(entries)
        last = entries[-1][0] if entries else after
        # No entry after ``after`` although the head is beyond it: those entries are gone (a queue restored
        # from a backup keeps its numbers, not its stream), so there is nothing more to fetch.
        return {"entries": entries, "head": head, "more": bool(entries) and last < head}

    def publish(self, group_key_id: str, member: str, blob: bytes) -> Deferred:
        """Add a member's sealed message to the queue: Deferred[{"sequence", "head"}] once it is stored."""
        return Deferred.fromCoroutine(self._publish(group_key_id, member, blob))

    async def _publish(self, group_key_id: str, member: str, blob: bytes) -> dict:
        await self._admit(group_key_id, member)
        header = await self.check(group_key_id, member, blob)
        await self._appending.acquire()
        try:
            sequence, head, created = await self.run(
                self.store.append, group_key_id, member, header.message_id, header.time, blob, self.clock.seconds())
            if created:
                self.counters["published"] += 1
                self._fan_out(group_key_id, member, sequence, blob)
            else:
                self.counters["repeated"] += 1
        finally:
            self._appending.release()
        return {"sequence": sequence, "head": head}

    # -- views -------------------------------------------------------------------------

    def queues(self) -> Deferred:
        """Deferred[list] of the hosted queues (see :meth:`GroupStore.queues`), with ``queue_id``."""
        d = self.run(self.store.queues)
        return d.addCallback(lambda rows: [dict(row, queue_id=row["group_key_id"], owner=self.me) for row in rows])

    def consumers(self) -> list[dict]:
        """The subscribed members of every hosted queue and how pushing to them goes."""
        result = []
        for group_key_id, consumers in sorted(self._subscribers.items()):
            for member, consumer in sorted(consumers.items()):
                result.append({"queue_id": group_key_id, "consumer_id": member, "state": consumer.state,
                               "pushed": consumer.pushed, "last_pushed_sequence": consumer.last_pushed,
                               "failures": consumer.failures, "last_error": consumer.last_error})
        return result

    def producers(self) -> Deferred:
        """Deferred[list] of the members who published to a hosted queue."""
        def shape(members: list[dict]) -> list[dict]:
            return [{"queue_id": m["group_key_id"], "producer_id": m["member_id"], "published": m["published"],
                     "last_sequence": m["last_sequence"], "last_published": m["last_published"]}
                    for m in members if m["published"] > 0]

        return self.run(self.store.members).addCallback(shape)

    def subscribers(self, group_key_id: str) -> list[str]:
        """The members subscribed to one hosted queue."""
        return sorted(self._subscribers.get(group_key_id, {}))

    # -- internals ---------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._stopped:
            raise Unavailable("the groups service of this node is stopping")

    async def _admit(self, group_key_id: str, member: str) -> int:
        """The queue's head, once ``member`` is known to hold the group key (Forbidden otherwise)."""
        self._require_running()
        head = await self.run(self.store.head, group_key_id)
        consumer = self._subscribers.get(group_key_id, {}).get(member)
        if consumer is not None:
            consumer.state, consumer.failures = ONLINE, 0  # it talks to us: push to it again
        key = (group_key_id, member)
        if member == self.me or key in self._verified:
            return head
        known = await self.run(self.store.member, group_key_id, member)
        if known is not None and known["verified"]:
            self._verified.add(key)
            return head
        waiters = self._audits.get(key)
        if waiters is None:
            ok = await self._audit_member(key)
        else:  # an audit of this member is on its way: share its outcome
            waiter: Deferred = Deferred()
            waiters.append(waiter)
            ok = await waiter
        if not ok:
            self.counters["refused"] += 1
            raise Forbidden(f"{member} is not a member of group {group_key_id}: it did not prove it holds the key")
        return head

    async def _audit_member(self, key: tuple[str, str]) -> bool:
        self._audits[key] = []
        ok = False
        try:
            ok = bool(await self.audit(*key))
            if ok:
                await self.run(self.store.update_member, key[0], key[1], self.clock.seconds(), True, None)
                self._verified.add(key)
        except BitnodeError as err:
            self.log.info("audit of {member} for {group} failed: {err}", member=key[1], group=key[0], err=err)
            ok = False
        finally:
            for waiter in self._audits.pop(key, []):
                waiter.callback(ok)
        return ok

    def _fan_out(self, group_key_id: str, sender: str, sequence: int, blob: bytes) -> None:
        for member, consumer in list(self._subscribers.get(group_key_id, {}).items()):
            if member == sender or consumer.state != ONLINE or self._stopped:
                continue
            d = self.push(member, group_key_id, sequence, blob)
            self._pushes.add(d)
            d.addBoth(self._pushed, d, group_key_id, member, consumer, sequence)

    def _pushed(self, result: Any, d: Deferred, group_key_id: str, member: str, consumer: _Consumer,
                sequence: int) -> None:
        self._pushes.discard(d)
        if not isinstance(result, Failure):
            consumer.failures, consumer.pushed = 0, consumer.pushed + 1
            consumer.last_pushed = max(consumer.last_pushed, sequence)
            self.counters["pushed"] += 1
            return None
        if result.check(defer.CancelledError):
            return None
        self.counters["push_failed"] += 1
        consumer.failures += 1
        consumer.last_error = result.getErrorMessage()[:200]
        if result.check(NotFound) and "not joined" in consumer.last_error:
            # the member left without telling us (or forgot the group): stop pushing for good
            Deferred.fromCoroutine(self._unsubscribe(group_key_id, member)).addErrback(
                lambda f: self.log.info("unsubscribing {m} failed: {e}", m=member, e=f.getErrorMessage()))
        elif consumer.failures >= MAX_PUSH_FAILURES:
            consumer.state = OFFLINE
        return None

