"""One group's log on one of its brokers: how several brokers keep one order, and who leads.

The design (primary-backup with terms, as in Viewstamped Replication / Raft,
with the leader of each term fixed by position instead of voted for):

- **Brokers and terms.** A group's config (:mod:`bitnode.access.group_config`)
  names its brokers by position, ``brokers[0..n-1]``. Time is cut into
  *terms*; the primary of term ``t`` is ``brokers[t % n]`` and nobody else
  may write entries of term ``t``. Term 0's primary, ``brokers[0]``, starts
  with an empty log and needs no election.
- **Appending (the primary).** A member's message gets the next sequence
  number, is written to the primary's log (sqlite, committed) with the
  term, and sent to the backups (``sync``); once a majority of the brokers
  (the primary included) hold it, it is *committed*: the member is answered,
  and it is pushed to the subscribed members. Appends are one at a time, so
  sequence numbers are the group's one order. A publish repeated after a lost
  answer finds its message id in the log and gets its first number back.
- **Backups** take a ``sync`` only from the primary of a term at least as
  new as theirs, and only when they hold the entry the new ones follow
  (sequence and term, the log-matching rule); otherwise they answer
  ``behind`` and the primary sends from their commit index. An entry they
  hold with another term is replaced, with everything after it: it was
  never committed (committed entries are the same on every broker). The
  commit index rides on every sync, so backups serve fetches of committed
  entries too: a member (a late joiner) can read the history from any broker.
- **Taking over.** A broker asked by a member whose primary went away checks
  it (``status``), and the brokers ahead of itself in position order; when
  they are all unreachable it becomes a *candidate* for its next term ``t'``
  and sends ``prepare(t')`` to every broker. A broker that promises ``t'``
  (persisted before it answers) takes nothing from older terms any more, so
  an old primary cut off from the others can no longer commit anything.
  With a majority of promises the candidate adopts the most advanced log
  among them (highest term of the last entry, then longest) - every
  committed entry is in it, because it was on a majority and two majorities
  meet - writes a ``term`` entry in ``t'`` and commits it, which commits
  everything before it. Only then does it serve as primary, and it tells the
  group's members where it is (``moved``). Two primaries can exist for a
  moment (the old one not yet told), but only one can commit: the other
  finds a majority in a later term and steps down.
- **Restarts.** Terms, entries and commit indexes are on disk. A broker
  that starts again is a backup until someone asks it to lead, and then it
  runs an election even if it led before: it may have promised a later term
  it never completed.

What a majority means: with three brokers the group goes on while any one
of them is away; with one (a creator without suppliers) it is that one node.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from bitnode.access import group_roster
from bitnode.access.group_config import GroupConfig, quorum
from bitnode.access.group_log import CONTROL, Entry, GroupLog, LogState
from bitnode.access.group_protocol import MAX_FETCH, MAX_FETCH_BYTES, FrameError, Redirected
from bitnode.errors import BitnodeError, Conflict, Forbidden, NotFound, Unavailable

BACKUP, CANDIDATE, PRIMARY = "backup", "candidate", "primary"
#: The counters replicas keep (in the broker's counters, for service_info).
COUNTERS = ("committed", "syncs_sent", "syncs_failed", "entries_replicated", "promises", "elections",
            "elections_lost", "takeovers", "step_downs")
#: How many sync rounds one catch-up of a backup may take before it is left for the next try.
MAX_SYNC_ROUNDS = 1000


def entries_from(fields: dict, blobs: tuple[bytes, ...]) -> list[Entry]:
    """The entries a ``sync`` or ``pull`` frame carries (FrameError when they are malformed)."""
    listed = fields.get("entries")
    if not isinstance(listed, list) or len(listed) != len(blobs):
        raise FrameError("a sync lists one entry per blob")
    entries, last = [], 0
    for item, blob in zip(listed, blobs, strict=True):
        if not isinstance(item, dict):
            raise FrameError("a sync entry must be an object")
        seq, term, kind = item.get("seq"), item.get("term"), item.get("kind")
        sender, message_id, when = item.get("sender"), item.get("message_id"), item.get("time")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (seq, term)) or kind not in (0, 1) \
                or not isinstance(sender, str) or not isinstance(message_id, str) \
                or isinstance(when, bool) or not isinstance(when, (int, float)) or seq <= last:
            raise FrameError("a sync entry is malformed or out of order")
        last = seq
        entries.append(Entry(seq, term, kind, sender, message_id, float(when), blob))
    return entries


class LogReplica:
    """This broker's copy of one group's log, and its part in keeping the brokers in step.

    :param config: the group's (verified) config.
    :param me: this broker's global id.
    :param log: the :class:`GroupLog` (called through ``run``).
    :param run: runs a blocking call off the reactor, returns a Deferred.
    :param ask: ``ask(peer, op, group_key_id, blobs, **fields) -> Deferred[Frame]``: a request to another
        broker (BrokerUnreachable and typed errors as the member's link raises them).
    :param clock: ``IReactorTime``.
    :param on_commit: ``on_commit(replica, first, last)``: entries ``first..last`` were committed here as
        primary (push them to the subscribed members).
    :param on_leading: ``on_leading(replica)``: this broker just took over (tell the members).
    :param counters: the broker's counters (shared by every replica).
    """

    log = Logger()

    def __init__(self, config: GroupConfig, me: str, log: GroupLog, run: Callable[..., Deferred],
                 ask: Callable[..., Deferred], clock: Any, on_commit: Callable[[Any, int, int], Any],
                 on_leading: Callable[[Any], Any], counters: dict) -> None:
        self.config = config
        self.group_key_id = config.group_key_id
        self.me = me
        self.store = log
        self.run = run
        self.ask = ask
        self.clock = clock
        self.on_commit = on_commit
        self.on_leading = on_leading
        self.counters = counters
        self.role = BACKUP
        self.leader: Optional[str] = None
        self.state: Optional[LogState] = None
        self.roster = group_roster.Roster.first(config.creator)
        self.match: dict[str, Optional[int]] = {}
        self.told_commit: dict[str, int] = {}
        self.heard: dict[str, float] = {}
        self.last_error = ""
        self.stopped = False
        self._reported = 0  # the newest entry handed to on_commit
        self._writing = DeferredLock()
        self._syncing: dict[str, DeferredLock] = {b: DeferredLock() for b in self.others}

    # -- what it is -------------------------------------------------------------------------

    @property
    def others(self) -> list[str]:
        """The group's other brokers."""
        return [b for b in self.config.brokers if b != self.me]

    @property
    def term(self) -> int:
        return self.state.term if self.state is not None else 0

    @property
    def commit(self) -> int:
        return self.state.commit if self.state is not None else 0

    @property
    def head(self) -> int:
        return self.state.head if self.state is not None else 0

    def describe(self) -> dict:
        """Where this copy of the log stands (queues_list, group_info)."""
        state = self.state
        return {"role": self.role, "term": self.term, "leader": self.leader, "head": self.head,
                "commit": self.commit, "base": state.base if state else 0, "brokers": list(self.config.brokers),
                "quorum": quorum(self.config), "roster": self.roster.describe(),
                "backups": {b: {"match": self.match.get(b), "heard": self.heard.get(b)} for b in self.others}
                if self.role == PRIMARY else {}, "last_error": self.last_error}

    def not_primary(self) -> Redirected:
        """The error a member gets from a broker that does not lead."""
        hint = self.leader if self.leader not in (None, self.me) else None
        where = f"ask {hint}" if hint else "no primary is known here now"
        return Redirected(f"{self.me} does not lead group {self.group_key_id} in term {self.term}: {where}",
                          hint, self.term)

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self, fresh: bool = False) -> None:
        """Read the state and the roster from the log. A log just hosted in term 0 is led by position 0
        (``fresh``); any other starts as a backup (see the module doc: restarts)."""
        self.state = await self.run(self.store.state, self.group_key_id)
        self._reported = self.state.commit
        await self._refold()
        if fresh and self.term == 0 and self.head == 0 and self.config.primary(0) == self.me:
            self.role, self.leader = PRIMARY, self.me
            self.match = {b: 0 for b in self.others}
        elif self.term == 0 and self.config.primary(0) != self.me:
            self.leader = self.config.primary(0)

    def stop(self) -> None:
        """Take no part any more (the service stops)."""
        self.stopped = True
        self.role = BACKUP

    async def _refresh(self) -> LogState:
        self.state = await self.run(self.store.state, self.group_key_id)
        return self.state

    async def _refold(self) -> None:
        controls = await self.run(self.store.controls, self.group_key_id)
        self.roster = group_roster.fold(self.config.creator, self.group_key_id, controls)

    def _adopt(self, term: int, leader: Optional[str]) -> None:
        """A newer term is known: lead no more."""
        if self.role != BACKUP:
            self.counters["step_downs"] += 1
            self.log.info("{me}: group {group} is in term {term} now: no longer {role}", me=self.me,
                          group=self.group_key_id, term=term, role=self.role)
        self.role, self.leader = BACKUP, leader

    # -- the primary: appending ---------------------------------------------------------------

    def append(self, kind: int, sender: str, message_id: str, time: float, blob: bytes,
               validate: Optional[Callable[[group_roster.Roster], None]] = None) -> Deferred:
        """Add an entry as primary: Deferred[(seq, new)] once it is committed (Redirected, or Unavailable
        when a majority did not take it in time: it stays in the log and is committed with the next one).

        ``validate(roster)`` runs just before the entry is written, against the roster at the head (appends
        are one at a time): it raises to refuse the entry.
        """
        return Deferred.fromCoroutine(self._append(kind, sender, message_id, time, blob, validate))

    async def _append(self, kind: int, sender: str, message_id: str, time: float, blob: bytes,
                      validate: Optional[Callable[[group_roster.Roster], None]]) -> tuple[int, bool]:
        await self._writing.acquire()
        try:
            if self.role != PRIMARY or self.stopped:
                raise self.not_primary()
            if validate is not None:
                validate(self.roster)
            term = self.term
            try:
                seq, new = await self.run(self.store.append, self.group_key_id, term, kind, sender, message_id,
                                          time, blob, self.clock.seconds())
            except Conflict:
                await self._refresh()
                self._adopt(self.term, None)
                raise self.not_primary() from None
            await self._refresh()
            if kind == CONTROL and new:
                await self._refold()
        finally:
            self._writing.release()
        if seq > self.commit and not await self.replicate(seq):
            raise Unavailable(f"group {self.group_key_id}: fewer than {quorum(self.config)} of its brokers "
                              f"confirmed entry {seq} in time; it is sent again with the next one "
                              f"({self.last_error or 'no answer'})")
        return seq, new

    def replicate(self, upto: int) -> Deferred:
        """Deferred[bool]: entries up to ``upto`` are committed (a majority holds them)."""
        return Deferred.fromCoroutine(self._replicate(upto))

    async def _replicate(self, upto: int) -> bool:
        if self.commit >= upto:
            return True
        needed = quorum(self.config) - 1  # the primary holds it
        term = self.term
        if needed > 0:
            reached = await _first_of([self._sync_to(b, upto) for b in self.others], needed)
            if not reached or self.role != PRIMARY or self.term != term:
                return self.commit >= upto
        commit = await self.run(self.store.set_commit, self.group_key_id, upto)
        await self._refresh()
        if commit > self._reported:  # no await between the check and the update: each entry reported once
            first, self._reported = self._reported + 1, commit
            self.counters["committed"] += commit - first + 1
            self.on_commit(self, first, commit)
            for b in self.others:
                self._tell_commit(b)
        return commit >= upto

    def _sync_to(self, broker: str, upto: int) -> Deferred:
        """Deferred[bool]: ``broker`` holds every entry up to ``upto`` (one catch-up at a time per broker)."""
        lock = self._syncing[broker]
        return lock.run(lambda: Deferred.fromCoroutine(self._catch_up(broker, upto)))

    async def _catch_up(self, broker: str, upto: int) -> bool:
        term = self.term
        for _ in range(MAX_SYNC_ROUNDS):
            if self.role != PRIMARY or self.term != term or self.stopped:
                return False
            known = self.match.get(broker)
            if known is not None and known >= upto:
                return True
            prev = upto - 1 if known is None else known
            sent = await self._send_sync(broker, prev, upto)
            if sent is None:
                return False
            answer, last = sent
            result, their_term = answer.fields.get("result"), answer.integer("term")
            if result == "stale":
                await self._step_down_to(their_term)
                return False
            if result == "behind":
                self.match[broker] = min(answer.integer("commit"), max(prev - 1, 0))
                continue
            self.match[broker] = max(last, known or 0)
            self.told_commit[broker] = answer.integer("commit")
        return False

    async def _send_sync(self, broker: str, prev: int, upto: int) -> Optional[tuple[Any, int]]:
        """One ``sync`` of the entries after ``prev`` (up to ``upto``): (the answer frame, the last entry
        sent or ``prev``), or None when no answer came."""
        state = self.state
        assert state is not None
        entries = await self.run(self.store.entries_after, self.group_key_id, prev, upto, MAX_FETCH, MAX_FETCH_BYTES)
        prev_term = await self.run(self.store.term_of, self.group_key_id, prev) if prev > 0 else 0
        self.counters["syncs_sent"] += 1

        def send() -> Deferred:
            return self.ask(broker, "sync", self.group_key_id, tuple(e.blob for e in entries), term=state.term,
                            prev_seq=prev, prev_term=prev_term, base=state.base if prev < state.base else 0,
                            commit=state.commit, entries=[e.wire() for e in entries])

        try:
            try:
                answer = await send()
            except NotFound:
                # that broker never got the group (it was away when the creator asked): the signed config
                # is all it needs to host it
                await self.ask(broker, "host", self.group_key_id, (), config=self.config.to_dict())
                answer = await send()
        except BitnodeError as err:
            self.counters["syncs_failed"] += 1
            self.last_error = f"{broker}: {err}"
            return None
        self.heard[broker] = self.clock.seconds()
        self.counters["entries_replicated"] += len(entries)
        return answer, (entries[-1].seq if entries else prev)

    def _tell_commit(self, broker: str, always: bool = False) -> Deferred:
        """Let a backup that holds the committed entries know they are committed (best effort); ``always``:
        even when it knows (a heartbeat: a backup in a newer term answers ``stale`` and I step down)."""
        known = self.match.get(broker)
        if known is None or known < self.commit or (self.told_commit.get(broker, 0) >= self.commit and not always):
            return defer.succeed(None)
        commit = self.commit

        async def tell() -> None:
            sent = await self._send_sync(broker, commit, commit)
            if sent is None:
                return
            answer = sent[0]
            if answer.fields.get("result") == "stale":
                await self._step_down_to(answer.integer("term"))
            elif answer.fields.get("result") == "ok":
                self.told_commit[broker] = max(self.told_commit.get(broker, 0), answer.integer("commit"))

        d = Deferred.fromCoroutine(tell())
        d.addErrback(lambda f: self.log.info("commit notice failed: {e}", e=f.getErrorMessage()))
        return d

    def upkeep(self) -> Deferred:
        """The primary's periodic round: send entries a backup misses, retry committing what is not yet.
        Deferred[None]."""
        return Deferred.fromCoroutine(self._upkeep())

    async def _upkeep(self) -> None:
        if self.role != PRIMARY or self.stopped:
            return
        if self.head > self.commit:
            await self.replicate(self.head)
        lagging = [b for b in self.others if (self.match.get(b) or 0) < self.head]
        if lagging:
            await defer.DeferredList([self._sync_to(b, self.head) for b in lagging], consumeErrors=True)
        # a heartbeat to each backup that is in step: one that promised a newer term makes me step down
        await defer.DeferredList([self._tell_commit(b, always=True) for b in self.others if self.role == PRIMARY],
                                 consumeErrors=True)

    async def _step_down_to(self, term: int) -> None:
        if term > self.term:
            self.state = await self.run(self.store.promise, self.group_key_id, term)
        self._adopt(self.term, None)

    # -- a backup: answering the primary and candidates ------------------------------------------

    def on_sync(self, peer: str, fields: dict, blobs: tuple[bytes, ...]) -> Deferred:
        """A ``sync`` from the primary of its term: Deferred[answer fields]."""
        return Deferred.fromCoroutine(self._on_sync(peer, fields, blobs))

    async def _on_sync(self, peer: str, fields: dict, blobs: tuple[bytes, ...]) -> dict:
        term = _integer(fields, "term")
        if peer != self.config.primary(term) or peer == self.me:
            raise Forbidden(f"{peer} does not lead term {term} of group {self.group_key_id}")
        entries = entries_from(fields, blobs)
        old_head = self.head
        result, state = await self.run(self.store.accept, self.group_key_id, term, _integer(fields, "prev_seq"),
                                       fields.get("prev_term"), _integer(fields, "base"), entries,
                                       _integer(fields, "commit"), self.clock.seconds())
        self.state = state
        if result != "stale":
            self.heard[peer] = self.clock.seconds()
            if self.role != BACKUP or self.leader != peer:
                self._adopt(term, peer)
            if any(e.kind == CONTROL or e.seq <= old_head for e in entries):
                await self._refold()
        return {"result": result, "term": state.term, "head": state.head, "commit": state.commit}

    def on_prepare(self, peer: str, fields: dict) -> Deferred:
        """A candidate's ``prepare``: Deferred[answer fields] (a promise, or ``stale``)."""
        return Deferred.fromCoroutine(self._on_prepare(peer, fields))

    async def _on_prepare(self, peer: str, fields: dict) -> dict:
        term = _integer(fields, "term")
        if peer != self.config.primary(term) or peer == self.me:
            raise Forbidden(f"{peer} does not lead term {term} of group {self.group_key_id}")
        if term < self.term or (term == self.term and self.leader not in (None, peer)):
            return {"result": "stale", "term": self.term}
        if term > self.term:
            self.state = await self.run(self.store.promise, self.group_key_id, term)
            self._adopt(term, None)
        self.counters["promises"] += 1
        state = self.state
        assert state is not None
        return {"result": "promise", "term": state.term, "head": state.head, "last_term": state.last_term,
                "commit": state.commit}

    def on_pull(self, peer: str, fields: dict) -> Deferred:
        """A candidate reads this log after ``after`` (uncommitted entries too): Deferred[(fields, blobs)]."""
        return Deferred.fromCoroutine(self._on_pull(peer, fields))

    async def _on_pull(self, peer: str, fields: dict) -> tuple[dict, tuple[bytes, ...]]:
        if peer not in self.config.brokers:
            raise Forbidden(f"{peer} is no broker of group {self.group_key_id}")
        after = _integer(fields, "after")
        state = await self._refresh()
        entries = await self.run(self.store.entries_after, self.group_key_id, after, state.head, MAX_FETCH,
                                 MAX_FETCH_BYTES)
        more = bool(entries) and entries[-1].seq < state.head
        return ({"term": state.term, "head": state.head, "base": state.base, "more": more,
                 "entries": [e.wire() for e in entries]}, tuple(e.blob for e in entries))

    def on_status(self, peer: str) -> dict:
        """What a fellow broker asks before it takes over: do I lead, in which term."""
        if peer not in self.config.brokers:
            raise Forbidden(f"{peer} is no broker of group {self.group_key_id}")
        return {"role": self.role, "term": self.term, "leader": self.leader or "", "head": self.head,
                "commit": self.commit}

    # -- taking over ------------------------------------------------------------------------

    def take_over(self) -> Deferred:
        """Become the primary in this broker's next term: Deferred[bool] (see the module doc)."""
        return Deferred.fromCoroutine(self._take_over())

    async def _take_over(self) -> bool:
        await self._writing.acquire()
        try:
            if self.role == PRIMARY or self.stopped:
                return self.role == PRIMARY
            return await self._elect()
        finally:
            self._writing.release()

    async def _elect(self) -> bool:
        term = self.config.next_term_of(self.me, self.term)
        self.state = await self.run(self.store.promise, self.group_key_id, term)
        self.role, self.leader = CANDIDATE, None
        self.counters["elections"] += 1
        self.log.info("{me}: taking over group {group} in term {term}", me=self.me, group=self.group_key_id,
                      term=term)
        promises: dict[str, dict] = {}
        results = await defer.DeferredList([self.ask(b, "prepare", self.group_key_id, (), term=term)
                                            for b in self.others], consumeErrors=True)
        for broker, (ok, answer) in zip(self.others, results, strict=True):
            if not ok:
                self.last_error = f"{broker}: {answer.getErrorMessage()}"
                continue
            self.heard[broker] = self.clock.seconds()
            if answer.fields.get("result") == "stale" and answer.integer("term") > term:
                await self._step_down_to(answer.integer("term"))
                return self._lost(term, f"{broker} is in term {answer.integer('term')}")
            if answer.fields.get("result") == "promise" and answer.integer("term") == term:
                promises[broker] = answer.fields
        if self.role != CANDIDATE or self.term != term:
            return self._lost(term, "a newer term came meanwhile")
        if len(promises) + 1 < quorum(self.config):
            return self._lost(term, f"{len(promises) + 1} of {self.config.size} brokers answered, "
                                    f"{quorum(self.config)} needed")
        state = self.state
        assert state is not None
        best, best_rank = self.me, (state.last_term, state.head)
        for broker, answer in promises.items():
            rank = (_integer(answer, "last_term"), _integer(answer, "head"))
            if rank > best_rank:
                best, best_rank = broker, rank
        if best != self.me and not await self._adopt_log(best, term):
            return self._lost(term, f"could not read the log of {best}")
        if self.role != CANDIDATE or self.term != term:
            return self._lost(term, "a newer term came meanwhile")
        await self._refold()
        self.role, self.leader = PRIMARY, self.me
        self._reported = max(self._reported, self.commit)
        self.match = {b: (_integer(promises[b], "commit") if b in promises else None) for b in self.others}
        self.told_commit = {b: _integer(promises[b], "commit") for b in promises}
        seq, _ = await self.run(self.store.append, self.group_key_id, term, CONTROL, self.me, f"term-{term}",
                                self.clock.seconds(), group_roster.encode("term", self.group_key_id, self.me,
                                                                          self.clock.seconds(), term=term),
                                self.clock.seconds())
        await self._refresh()
        self.counters["takeovers"] += 1
        self.log.info("{me}: leads group {group} in term {term} (log up to {head})", me=self.me,
                      group=self.group_key_id, term=term, head=self.head)
        self.on_leading(self)
        self._commit_later(seq)
        return True

    def _commit_later(self, seq: int) -> None:
        """Commit the ``term`` entry (and what came before it) without holding the writer lock."""
        self.replicate(seq).addErrback(lambda f: self.log.info("committing term entry failed: {e}",
                                                               e=f.getErrorMessage()))

    def _lost(self, term: int, why: str) -> bool:
        self.counters["elections_lost"] += 1
        self.last_error = f"term {term}: {why}"
        if self.role == CANDIDATE:
            self.role = BACKUP
        self.log.info("{me}: did not take over group {group}: {why}", me=self.me, group=self.group_key_id, why=why)
        return False

    async def _adopt_log(self, best: str, term: int) -> bool:
        """Copy ``best``'s entries after my commit index over mine (a candidate adopts the best log)."""
        after, fetched, base = self.commit, [], 0
        for _ in range(MAX_SYNC_ROUNDS):
            try:
                answer = await self.ask(best, "pull", self.group_key_id, (), after=after)
            except BitnodeError as err:
                self.last_error = f"{best}: {err}"
                return False
            batch = entries_from(answer.fields, answer.blobs)
            base = max(base, _integer(answer.fields, "base"))
            fetched.extend(batch)
            if not batch or not answer.fields.get("more"):
                break
            after = batch[-1].seq
            if self.term != term:
                return False
        self.state = await self.run(self.store.replace_after, self.group_key_id, self.commit, base, fetched,
                                    self.clock.seconds())
        return True

    def probe(self) -> Deferred:
        """Deferred[dict]: for each other broker, its ``status`` answer, or None when it did not answer."""
        async def run() -> dict:
            results = await defer.DeferredList([self.ask(b, "status", self.group_key_id, ()) for b in self.others],
                                               consumeErrors=True)
            found: dict[str, Optional[dict]] = {}
            for broker, (ok, answer) in zip(self.others, results, strict=True):
                found[broker] = answer.fields if ok else None
                if ok:
                    self.heard[broker] = self.clock.seconds()
            return found

        return Deferred.fromCoroutine(run())


def _integer(fields: dict, name: str) -> int:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FrameError(f"group frame field {name!r} must be a whole number")
    return value


async def _first_of(deferreds: list[Deferred], needed: int) -> bool:
    """Whether at least ``needed`` of ``deferreds`` fire True (answers as soon as it knows)."""
    if needed <= 0:
        return True
    outcome: Deferred = Deferred()
    counts = {"yes": 0, "done": 0}

    def one(result: Any) -> None:
        counts["done"] += 1
        if result is True:
            counts["yes"] += 1
        if outcome.called:
            return
        if counts["yes"] >= needed:
            outcome.callback(True)
        elif counts["yes"] + (len(deferreds) - counts["done"]) < needed:
            outcome.callback(False)

    for d in deferreds:
        d.addBoth(one)
    if not deferreds:
        outcome.callback(False)
    return await outcome
