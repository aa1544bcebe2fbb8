"""The group broker: the logs this node hosts for groups, what members may ask of them, and its limits.

A node is a *broker* of every group whose config names it (the creator picks
its brokers: its suppliers, then itself). For each hosted group it keeps a
:class:`~bitnode.access.group_replica.LogReplica` (the replication rules are
there) and answers the group's members:

- **Who may ask.** A member is whoever the roster in the log says
  (:mod:`bitnode.access.group_roster`); anyone else gets 403 and learns
  nothing. There is no key audit: the roster is signed by the group's admins
  and ordered with the messages, so every broker applies the same one.
- **Publishing** (the primary only; others redirect): a sealed message must
  be signed by the member who publishes it and addressed to the group
  (brokers cannot read messages, they check signatures); a control entry
  must be signed by the member who publishes it and be allowed by the roster
  at that point of the log. Then it is appended, committed on a majority of
  the brokers, answered, and pushed to the subscribed members.
- **Subscribing** (the primary): the answer carries every control entry, so a
  member knows the roster and its keys before it reads the messages; pushes
  follow. A subscribe that reaches a backup whose primary is gone is where a
  takeover starts (:meth:`GroupBroker.subscribe`, ``suspects``).
- **Fetching** (any broker): committed entries after a sequence number, so
  a late joiner gets the history from whichever broker answers.
- **Pushing**: committed entries go to every subscribed member but their
  sender, in order; a member that does not take :data:`MAX_PUSH_FAILURES` in
  a row is skipped until it asks something again (it then fetches what it
  missed); one that answers "not joined" is unsubscribed.

Limits (settings, each with a counter; a stranger cannot fill a broker):
whose logs it keeps (by default its customers' only: a creator's brokers are
its suppliers), logs hosted in all and per creator, message entries and bytes kept per log
(the oldest committed messages are trimmed beyond them; control entries
stay), members per group, publishes per member per second, size of an entry.

Events on the node's bus: ``group-member-joined`` / ``group-member-left``
(``{"group_key_id", "member_id", "queue": true}``) when a member subscribes
or unsubscribes here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode.access import group_config, group_roster
from bitnode.access.group_config import GroupConfig
from bitnode.access.group_log import CONTROL, MESSAGE, GroupLog
from bitnode.access.group_protocol import MAX_FETCH, MAX_FETCH_BYTES, Redirected
from bitnode.access.group_replica import COUNTERS, PRIMARY, LogReplica
from bitnode.chat.message_crypto import GROUP_MESSAGE, MessageRejected, sealed_generation, verify_sealed
from bitnode.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from bitnode.main.ratelimit import KeyedRateLimiter

MAX_PUSH_FAILURES = 3
ONLINE, OFFLINE = "online", "offline"


@dataclass(frozen=True)
class BrokerLimits:
    """What one broker takes (settings ``services/private-groups/broker-*``)."""

    max_logs: int = 500
    max_logs_per_creator: int = 20
    max_messages: int = 10000
    max_bytes: int = 64 * 1024 * 1024
    max_members: int = 200
    publish_rate: float = 2.0
    publish_burst: float = 20.0
    max_entry_bytes: int = 512 * 1024
    heartbeat: float = 30.0


class _Consumer:
    """What the broker remembers (in memory) about pushing to one subscribed member."""

    def __init__(self) -> None:
        self.state = ONLINE
        self.failures = 0
        self.pushed = 0
        self.last_pushed = 0
        self.last_error = ""


class GroupBroker:
    """The group logs hosted by this node.

    :param clock: ``IReactorTime``.
    :param me: this node's global id.
    :param log: the :class:`GroupLog` (read and written through ``run``).
    :param run: runs a blocking call off the reactor, returns a Deferred.
    :param ask: ``ask(peer, op, group_key_id, blobs, **fields) -> Deferred[Frame]``: a request to a broker.
    :param public_key: ``public_key(user) -> Deferred[RsaPublicKey]``: a user's published master key.
    :param push: ``push(member, group_key_id, sequence, blob) -> Deferred``: one entry to a member.
    :param tell_moved: ``tell_moved(member, group_key_id, term) -> Deferred``: "I lead the group now".
    :param limits: ``limits() -> BrokerLimits``: the settings now.
    :param publish_event: the node's ``events.publish(event_id, data)``.
    :param may_host: ``may_host(creator) -> bool``: whether this node keeps logs of that creator's groups
        (its customers only, by default: see ``broker-customers-only``); None: anyone's.
    """

    log = Logger()

    def __init__(self, clock: Any, me: str, log: GroupLog, run: Callable[..., Deferred], ask: Callable[..., Deferred],
                 public_key: Callable[[str], Deferred], push: Callable[[str, str, int, bytes], Deferred],
                 tell_moved: Callable[[str, str, int], Deferred], limits: Callable[[], BrokerLimits],
                 publish_event: Callable[[str, Any], Any], may_host: Optional[Callable[[str], bool]] = None) -> None:
        self.clock = clock
        self.me = me
        self.store = log
        self.run = run
        self.ask = ask
        self.public_key = public_key
        self.push = push
        self.tell_moved = tell_moved
        self.limits = limits
        self.publish_event = publish_event
        self.may_host = may_host or (lambda creator: True)
        self.replicas: dict[str, LogReplica] = {}
        self._subscribers: dict[str, dict[str, _Consumer]] = {}
        self._pushes: set[Deferred] = set()
        self._background: set[Deferred] = set()
        self._stopped = False
        self._upkeep_call: Any = None
        current = limits()
        self._rate = KeyedRateLimiter(clock, current.publish_rate, current.publish_burst)
        self.counters = dict.fromkeys(
            ("hosted", "host_refused", "published", "repeated", "refused", "rate_limited", "too_large", "full",
             "pushed", "push_failed", "fetched", "trimmed", "redirected", "moved_sent", "dropped"), 0)
        self.counters.update(dict.fromkeys(COUNTERS, 0))

    # -- lifecycle --------------------------------------------------------------------

    async def load(self) -> None:
        """Open a replica for every hosted log, read its subscribers, start the upkeep rounds."""
        for state in await self.run(self.store.states):
            try:
                config = group_config.parse(state.config)
            except BadRequest as err:  # not written by this code: leave it, say so
                self.log.warn("hosted log of {group} has a bad config: {err}", group=state.group_key_id, err=err)
                continue
            await self._open(config, fresh=False)
        for group_key_id, members in (await self.run(self.store.subscribers)).items():
            consumers = self._subscribers.setdefault(group_key_id, {})
            for member in members:
                consumers[member] = _Consumer()
        self._schedule_upkeep()

    def stop(self) -> None:
        """Stop: no more pushes (those in flight are cancelled), requests after this are refused."""
        self._stopped = True
        if self._upkeep_call is not None and self._upkeep_call.active():
            self._upkeep_call.cancel()
        for replica in self.replicas.values():
            replica.stop()
        for d in list(self._pushes) + list(self._background):
            d.cancel()

    async def _open(self, config: GroupConfig, fresh: bool) -> LogReplica:
        replica = LogReplica(config, self.me, self.store, self.run, self.ask, self.clock, self._committed,
                             self._leading, self.counters)
        await replica.load(fresh=fresh)
        self.replicas[config.group_key_id] = replica
        return replica

    def _schedule_upkeep(self) -> None:
        if not self._stopped:
            self._upkeep_call = self.clock.callLater(self.limits().heartbeat, self._upkeep)

    def _upkeep(self) -> None:
        """Each heartbeat: every log this broker leads sends what backups miss and retries what is not committed."""
        for replica in list(self.replicas.values()):
            if replica.role == PRIMARY:
                self._track(replica.upkeep(), "upkeep")
        self._schedule_upkeep()

    def _track(self, d: Deferred, what: str) -> Deferred:
        self._background.add(d)

        def done(result: Any) -> None:
            self._background.discard(d)
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                self.log.info("group broker: {what} failed: {err}", what=what, err=result.getErrorMessage())

        d.addBoth(done)
        return d

    # -- hosting ------------------------------------------------------------------------

    def host(self, value: Any, requester: str) -> Deferred:
        """Host the log of the group whose signed config is ``value`` (asked by its creator, or by one of its
        brokers passing the config on): Deferred[{"head", "term"}]."""
        return Deferred.fromCoroutine(self._host(value, requester))

    async def _host(self, value: Any, requester: str) -> dict:
        self._require_running()
        config = group_config.parse(value)
        replica = self.replicas.get(config.group_key_id)
        if replica is not None:
            if replica.config != config:
                raise Conflict(f"group {config.group_key_id} is hosted here with another config")
            return {"head": replica.head, "term": replica.term}
        if requester != config.creator and requester not in config.brokers:
            raise Forbidden(f"{requester} may not ask to host group {config.group_key_id}")
        if self.me not in config.brokers:
            raise Forbidden(f"{self.me} is not one of the brokers of group {config.group_key_id}")
        if config.creator != self.me and not self.may_host(config.creator):
            self.counters["host_refused"] += 1
            raise Forbidden(f"{self.me} keeps group logs only for its customers, and {config.creator} is none")
        limits = self.limits()
        hosted = await self.run(self.store.count_hosted)
        mine = await self.run(self.store.count_hosted, config.creator)
        if hosted >= limits.max_logs or mine >= limits.max_logs_per_creator:
            self.counters["host_refused"] += 1
            raise TooManyRequests(f"{self.me} hosts as many group logs as it takes ({hosted} in all, {mine} of "
                                  f"{config.creator})", retry_after=3600.0)
        creator_key = await self.public_key(config.creator)
        if not await self.run(group_config.verify, config, creator_key):
            self.counters["host_refused"] += 1
            raise Forbidden(f"the config of group {config.group_key_id} is not signed by {config.creator}")
        if config.group_key_id in self.replicas:  # hosted by a concurrent call meanwhile
            return {"head": self.replicas[config.group_key_id].head, "term": self.replicas[config.group_key_id].term}
        await self.run(self.store.host, config.group_key_id, config.creator, config.to_json(), self.clock.seconds())
        replica = await self._open(config, fresh=True)
        self.counters["hosted"] += 1
        self.log.info("hosting the log of group {group} (position {p} of {n})", group=config.group_key_id,
                      p=config.position(self.me), n=config.size)
        return {"head": replica.head, "term": replica.term}

    def drop(self, group_key_id: str, requester: str) -> Deferred:
        """The creator deletes its group here: Deferred[{"dropped": bool}]."""
        return Deferred.fromCoroutine(self._drop(group_key_id, requester))

    async def _drop(self, group_key_id: str, requester: str) -> dict:
        replica = self.replicas.get(group_key_id)
        if replica is None:
            return {"dropped": False}
        if requester != replica.config.creator:
            raise Forbidden(f"only the creator of group {group_key_id} deletes it")
        replica.stop()
        del self.replicas[group_key_id]
        self._subscribers.pop(group_key_id, None)
        dropped = await self.run(self.store.drop, group_key_id)
        self.counters["dropped"] += int(dropped)
        return {"dropped": dropped}

    # -- members' requests ------------------------------------------------------------------

    def subscribe(self, group_key_id: str, member: str, after: int = 0, suspects: tuple[str, ...] = ()) -> Deferred:
        """A member asks for pushes: Deferred[{"head", "term", "leader", "controls": [(seq, blob)]}].

        Only the primary takes subscriptions. A backup asked by a member that could not reach some
        brokers (``suspects``) checks the brokers ahead of itself in line and takes over when none of them
        can lead (see :mod:`bitnode.access.group_replica`); otherwise it redirects (Redirected).
        """
        return Deferred.fromCoroutine(self._subscribe(group_key_id, member, tuple(suspects)))

    async def _subscribe(self, group_key_id: str, member: str, suspects: tuple[str, ...]) -> dict:
        replica = self._admit(group_key_id, member)
        if replica.role != PRIMARY:
            await self._lead_or_redirect(replica, suspects)
        await self.run(self.store.subscribe, group_key_id, member, True, self.clock.seconds())
        consumers = self._subscribers.setdefault(group_key_id, {})
        new = member not in consumers
        consumers.setdefault(member, _Consumer()).state = ONLINE
        if new:
            self.publish_event("group-member-joined", {"group_key_id": group_key_id, "member_id": member,
                                                       "queue": True})
        controls = await self.run(self.store.controls, group_key_id, replica.commit)
        return {"head": replica.commit, "term": replica.term, "leader": self.me, "controls": controls}

    def unsubscribe(self, group_key_id: str, member: str) -> Deferred:
        """A member stops its pushes here; Deferred[{"head"}]. Nobody is refused: it only removes."""
        return Deferred.fromCoroutine(self._unsubscribe(group_key_id, member))

    async def _unsubscribe(self, group_key_id: str, member: str) -> dict:
        self._require_running()
        replica = self.replicas.get(group_key_id)
        consumers = self._subscribers.get(group_key_id, {})
        if consumers.pop(member, None) is not None:
            await self.run(self.store.subscribe, group_key_id, member, False, self.clock.seconds())
            self.publish_event("group-member-left", {"group_key_id": group_key_id, "member_id": member,
                                                     "queue": True})
        return {"head": replica.commit if replica else 0}

    def fetch(self, group_key_id: str, member: str, after: int, limit: int = MAX_FETCH) -> Deferred:
        """Committed entries after ``after``: Deferred[{"entries": [(seq, blob)], "head", "more", "term",
        "leader"}] (any broker answers)."""
        return Deferred.fromCoroutine(self._fetch(group_key_id, member, after, limit))

    async def _fetch(self, group_key_id: str, member: str, after: int, limit: int) -> dict:
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise BadRequest("after must be a sequence number, 0 or more")
        replica = self._admit(group_key_id, member)
        limit = max(1, min(int(limit), MAX_FETCH))
        commit = replica.commit
        entries = await self.run(self.store.entries_after, group_key_id, after, commit, limit, MAX_FETCH_BYTES)
        self.counters["fetched"] += len(entries)
        last = entries[-1].seq if entries else after
        return {"entries": [(e.seq, e.blob) for e in entries], "head": commit,
                "more": bool(entries) and last < commit, "term": replica.term, "leader": replica.leader or ""}

    def publish(self, group_key_id: str, member: str, blob: bytes) -> Deferred:
        """Add a member's sealed message or control entry: Deferred[{"sequence", "head"}] once committed."""
        return Deferred.fromCoroutine(self._publish(group_key_id, member, bytes(blob)))

    async def _publish(self, group_key_id: str, member: str, blob: bytes) -> dict:
        replica = self._admit(group_key_id, member)
        if replica.role != PRIMARY:
            self.counters["redirected"] += 1
            raise replica.not_primary()
        limits = self.limits()
        if len(blob) > limits.max_entry_bytes:
            self.counters["too_large"] += 1
            raise BadRequest(f"a group entry is at most {limits.max_entry_bytes} bytes")
        if not self._rate.allow((group_key_id, member)):
            self.counters["rate_limited"] += 1
            raise TooManyRequests(f"{member} publishes to group {group_key_id} faster than "
                                  f"{limits.publish_rate:g} per second", self._rate.retry_after((group_key_id, member)))
        if group_roster.is_control(blob):
            kind, message_id, when, validate = CONTROL, *(await self._checked_control(group_key_id, member, blob))
        else:
            kind = MESSAGE
            header = await self._checked_message(group_key_id, member, blob)
            message_id, when = header.message_id, header.time
            validate = _generation_check(group_key_id, sealed_generation(blob))
        seq, new = await replica.append(kind, member, message_id, when, blob, validate)
        self.counters["published" if new else "repeated"] += 1
        return {"sequence": seq, "head": replica.commit}

    async def _checked_message(self, group_key_id: str, member: str, blob: bytes) -> Any:
        key = await self.public_key(member)
        try:
            header = await self.run(verify_sealed, blob, key, group_key_id)
        except MessageRejected as err:
            raise BadRequest(f"group message refused: {err}") from None
        if header.sender != member or header.message_type != GROUP_MESSAGE:
            raise BadRequest(f"a group message of {header.sender} published by {member}")
        return header

    async def _checked_control(self, group_key_id: str, member: str, blob: bytes) -> tuple[str, float, Callable]:
        entry = group_roster.decode(blob)
        if entry.by != member or entry.op == "term":
            raise Forbidden(f"{member} may publish only control entries it signed itself")
        key = await self.public_key(member)
        if not await self.run(group_roster.verify, entry, key):
            raise Forbidden(f"a control entry of group {group_key_id} not signed by {member}")
        max_members = self.limits().max_members

        def validate(roster: group_roster.Roster) -> None:
            group_roster.check(roster, entry, group_key_id)
            if entry.op == "add" and len(roster.members) >= max_members:
                self.counters["full"] += 1
                raise Conflict(f"group {group_key_id} has {len(roster.members)} members, the most this broker keeps")

        return entry.entry_id, entry.time, validate

    # -- the brokers' own requests ------------------------------------------------------------

    def broker_request(self, op: str, group_key_id: str, peer: str, fields: dict,
                       blobs: tuple[bytes, ...]) -> Deferred:
        """``sync``, ``prepare``, ``pull`` or ``status`` from another broker: Deferred[(fields, blobs)]."""
        replica = self.replicas.get(group_key_id)
        if self._stopped:
            return defer.fail(Unavailable("the groups service of this node is stopping"))
        if replica is None:
            return defer.fail(NotFound(f"{self.me} hosts no log of group {group_key_id}"))
        if op == "sync":
            return replica.on_sync(peer, fields, blobs).addCallback(lambda answer: (answer, ()))
        if op == "prepare":
            return replica.on_prepare(peer, fields).addCallback(lambda answer: (answer, ()))
        if op == "pull":
            return replica.on_pull(peer, fields)
        if op == "status":
            return defer.maybeDeferred(lambda: (replica.on_status(peer), ()))
        return defer.fail(BadRequest(f"a group broker does not take {op!r} from brokers"))

    # -- views -------------------------------------------------------------------------

    def queues(self) -> Deferred:
        """Deferred[list] of the hosted logs: their counts and where their replication stands."""
        def shape(rows: list[dict]) -> list[dict]:
            result = []
            for row in rows:
                replica = self.replicas.get(row["group_key_id"])
                described = replica.describe() if replica else {}
                result.append(dict(row, queue_id=row["group_key_id"], owner=row["creator"],
                                   consumers=len(self._subscribers.get(row["group_key_id"], {})),
                                   role=described.get("role"), leader=described.get("leader"),
                                   brokers=described.get("brokers"), members=described.get("roster", {}).get("members")))
            return result

        return self.run(self.store.summaries).addCallback(shape)

    def consumers(self) -> list[dict]:
        """The subscribed members of every hosted log and how pushing to them goes."""
        result = []
        for group_key_id, consumers in sorted(self._subscribers.items()):
            for member, consumer in sorted(consumers.items()):
                result.append({"queue_id": group_key_id, "consumer_id": member, "state": consumer.state,
                               "pushed": consumer.pushed, "last_pushed_sequence": consumer.last_pushed,
                               "failures": consumer.failures, "last_error": consumer.last_error})
        return result

    def producers(self) -> Deferred:
        """Deferred[list] of the members who published messages to a hosted log."""
        def shape(rows: list[dict]) -> list[dict]:
            return [{"queue_id": r["group_key_id"], "producer_id": r["sender"], "published": r["published"],
                     "last_sequence": r["last_sequence"], "last_published": r["last_published"]} for r in rows]

        return self.run(self.store.producers).addCallback(shape)

    def subscribers(self, group_key_id: str) -> list[str]:
        """The members subscribed here to one hosted log."""
        return sorted(self._subscribers.get(group_key_id, {}))

    # -- internals ---------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._stopped:
            raise Unavailable("the groups service of this node is stopping")

    def _admit(self, group_key_id: str, member: str) -> LogReplica:
        """The replica of a hosted group whose roster has ``member`` (NotFound, Forbidden otherwise)."""
        self._require_running()
        replica = self.replicas.get(group_key_id)
        if replica is None:
            raise NotFound(f"{self.me} hosts no log of group {group_key_id}")
        if not replica.roster.is_member(member):
            self.counters["refused"] += 1
            raise Forbidden(f"{member} is not a member of group {group_key_id}")
        consumer = self._subscribers.get(group_key_id, {}).get(member)
        if consumer is not None:
            consumer.state, consumer.failures = ONLINE, 0  # it talks to us: push to it again
        return replica

    async def _lead_or_redirect(self, replica: LogReplica, suspects: tuple[str, ...]) -> None:
        """Lead the group now, or raise Redirected naming who should (see :meth:`subscribe`)."""
        statuses = await replica.probe()
        reachable = {b for b, status in statuses.items() if status is not None and b not in suspects}
        for broker, status in statuses.items():
            if status is not None and status.get("role") == PRIMARY and status.get("term", -1) >= replica.term:
                self.counters["redirected"] += 1
                if broker in suspects:
                    raise Unavailable(f"{broker} leads group {replica.group_key_id} and answers {self.me}, "
                                      "but not you: try again later")
                raise Redirected(f"{broker} leads group {replica.group_key_id}", broker,
                                 status.get("term", replica.term))
        config = replica.config
        start = config.position(config.primary(replica.term))
        line = [config.brokers[(start + i) % config.size] for i in range(config.size)]
        for broker in line:
            if broker == self.me:
                break
            if broker in reachable:  # it is ahead of me in line and alive: it takes over, not me
                self.counters["redirected"] += 1
                raise Redirected(f"{broker} is next in line to lead group {replica.group_key_id}", broker,
                                 replica.term)
        if not await replica.take_over():
            raise Unavailable(f"{self.me} could not take over group {replica.group_key_id}: {replica.last_error}")

    def _committed(self, replica: LogReplica, first: int, last: int) -> None:
        """Entries ``first..last`` were committed here as primary: push them, apply the roster, trim."""
        self._track(Deferred.fromCoroutine(self._fan_out(replica, first, last)), "pushing")

    async def _fan_out(self, replica: LogReplica, first: int, last: int) -> None:
        group_key_id = replica.group_key_id
        entries = await self.run(self.store.entries_after, group_key_id, first - 1, last, last - first + 1, 1 << 40)
        consumers = self._subscribers.get(group_key_id, {})
        for member in list(consumers):
            if not replica.roster.is_member(member):  # removed from the group: no more pushes
                removal = _removal_of(member, entries)
                if removal is not None and consumers[member].state == ONLINE and not self._stopped:
                    # the entry that removed it, so that it knows (it opens nothing that follows)
                    d = self.push(member, group_key_id, removal.seq, removal.blob)
                    self._pushes.add(d)
                    d.addBoth(lambda _, d=d: self._pushes.discard(d))
                await self._unsubscribe(group_key_id, member)
        for entry in entries:
            for member, consumer in list(consumers.items()):
                own = entry.sender == member and not entry.message_id.startswith("term-")
                if own or consumer.state != ONLINE or self._stopped:
                    continue
                d = self.push(member, group_key_id, entry.seq, entry.blob)
                self._pushes.add(d)
                d.addBoth(self._pushed, d, group_key_id, member, consumer, entry.seq)
        limits = self.limits()
        trimmed = await self.run(self.store.trim, group_key_id, limits.max_messages, limits.max_bytes)
        self.counters["trimmed"] += trimmed

    def _leading(self, replica: LogReplica) -> None:
        """This broker took over: tell the group's members where to subscribe now."""
        for member in replica.roster.members:
            if member != self.me:
                self.counters["moved_sent"] += 1
                self._track(self.tell_moved(member, replica.group_key_id, replica.term), f"telling {member}")

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
            self._track(Deferred.fromCoroutine(self._unsubscribe(group_key_id, member)), f"unsubscribing {member}")
        elif consumer.failures >= MAX_PUSH_FAILURES:
            consumer.state = OFFLINE
        return None

    def configure(self) -> None:
        """The settings changed: the rate limit applies from now on."""
        limits = self.limits()
        self._rate.configure(limits.publish_rate, limits.publish_burst)


def _removal_of(member: str, entries: list) -> Any:
    """The entry among ``entries`` that removed ``member`` from the group, or None."""
    for entry in entries:
        if entry.kind == CONTROL and group_roster.is_control(entry.blob):
            try:
                control = group_roster.decode(entry.blob)
            except BadRequest:
                continue
            if control.op == "remove" and control.member == member:
                return entry
    return None


def _generation_check(group_key_id: str, generation: int) -> Callable:
    """The check a message sealed with key ``generation`` passes at its place in the log: the roster's key
    then (a removed member holds only older ones: nothing sealed after its removal opens for it)."""
    def validate(roster: group_roster.Roster) -> None:
        if generation != roster.generation:
            raise Conflict(f"a message sealed with key generation {generation} of group {group_key_id}, which is "
                           f"at key generation {roster.generation} now: seal it again")

    return validate
