"""The Kademlia routing table: k-buckets, splitting, eviction and refresh bookkeeping.

A table starts as one bucket covering the whole id space. A full bucket that
covers our own id splits in two; a full bucket that does not is never split.
When a new contact arrives for such a full bucket, the paper's policy applies:
the least-recently-seen contact is pinged, and only if it fails to answer is it
evicted in favour of the newcomer (newcomers wait in a small replacement cache
meanwhile). Live old contacts are preferred because they tend to stay up.

The table does no I/O itself: the ``ping`` callable it is given does, and the
clock is only read to stamp when a bucket was last looked up (for refresh).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bitnode.dht.ids import ID_SPACE, Contact, id_to_hex, random_id_in_range
from bitnode.errors import BadRequest

PingFn = Callable[[Contact], Deferred]


@dataclass
class KBucket:
    """Contacts whose ids fall in ``[lo, hi)``, least-recently-seen first."""

    lo: int
    hi: int
    last_touched: float
    contacts: list[Contact] = field(default_factory=list)
    replacements: list[Contact] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)
    pinging: bool = False

    def covers(self, node_id: int) -> bool:
        """True if ``node_id`` belongs in this bucket's range."""
        return self.lo <= node_id < self.hi

    def index_of(self, node_id: int) -> int:
        """Position of ``node_id`` in :attr:`contacts`, or -1."""
        for i, c in enumerate(self.contacts):
            if c.node_id == node_id:
                return i
        return -1

    @property
    def depth(self) -> int:
        """Number of leading id bits shared by the whole range."""
        return (ID_SPACE // (self.hi - self.lo)).bit_length() - 1


class RoutingTable:
    """k-buckets for one node (and one layer).

    :param own_id: our node id; buckets covering it are the ones that split.
    :param k: bucket size.
    :param clock: an ``IReactorTime``; used to stamp bucket refresh times.
    :param ping: called with the least-recently-seen contact of a full bucket;
        its Deferred succeeding means "alive", failing means "evict".
    :param max_failures: consecutive RPC failures after which a contact is dropped.
    :param fresh_for: seconds after we last heard from a contact during which a
        newcomer to its full bucket does not make us ping it (a contact that just
        answered is alive: pinging it again for every newcomer is a PING storm in a
        busy network). 0 pings for every newcomer.
    """

    _log = Logger()

    def __init__(
        self,
        own_id: int,
        clock: IReactorTime,
        k: int = 20,
        ping: PingFn | None = None,
        max_failures: int = 2,
        fresh_for: float = 0.0,
    ) -> None:
        if k < 1:
            raise BadRequest("k must be >= 1")
        if fresh_for < 0:
            raise BadRequest("fresh_for must be >= 0")
        self.own_id = own_id
        self.k = k
        self._clock = clock
        self._ping = ping
        self._max_failures = max_failures
        self._fresh_for = fresh_for
        self._heard_at: dict[int, float] = {}  # contact id -> when we last heard from it
        #: eviction pings not sent because the oldest contact was heard from within fresh_for
        self.pings_skipped_fresh = 0
        self._buckets: list[KBucket] = [KBucket(0, ID_SPACE, clock.seconds())]
        self._los: list[int] = [0]

    # -- lookup helpers ---------------------------------------------------------

    @property
    def buckets(self) -> list[KBucket]:
        """The buckets in id order (read-only use)."""
        return list(self._buckets)

    def bucket_for(self, node_id: int) -> KBucket:
        """The bucket whose range holds ``node_id``."""
        return self._buckets[bisect.bisect_right(self._los, node_id) - 1]

    def get(self, node_id: int) -> Contact | None:
        """The contact with this id, if we have it."""
        bucket = self.bucket_for(node_id)
        i = bucket.index_of(node_id)
        return bucket.contacts[i] if i >= 0 else None

    def contacts(self) -> list[Contact]:
        """Every contact in the table."""
        return [c for b in self._buckets for c in b.contacts]

    def __len__(self) -> int:
        return sum(len(b.contacts) for b in self._buckets)

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, int) and self.get(node_id) is not None

    def closest(self, target: int, count: int, exclude: frozenset[int] = frozenset()) -> list[Contact]:
        """Up to ``count`` contacts nearest to ``target`` by XOR distance, nearest first.

        Every bucket is an aligned power-of-two range of ids, so XOR with ``target`` maps it onto one aligned
        range of distances, disjoint from the others': visiting buckets by their nearest distance and sorting
        only the buckets needed gives the same answer as sorting the whole table (which every FIND_NODE
        answer did: a tenth of a large simulation's time).
        """
        found: list[Contact] = []
        for bucket in sorted(self._buckets, key=lambda b: (b.lo ^ target) & -(b.hi - b.lo)):
            if len(found) >= count:
                break
            members = [c for c in bucket.contacts if c.node_id not in exclude]
            members.sort(key=lambda c: c.node_id ^ target)
            found += members
        return found[:count]

    def has_room_for(self, node_id: int) -> bool:
        """Would :meth:`add` take this new id at once (its bucket has room, or would split)?"""
        bucket = self.bucket_for(node_id)
        return len(bucket.contacts) < self.k or (bucket.covers(self.own_id) and bucket.hi - bucket.lo > 1)

    # -- updates ------------------------------------------------------------------

    def add(self, contact: Contact) -> str:
        """Note that we heard from ``contact``.

        Returns what happened: ``"self"``, ``"updated"`` (moved to the
        most-recently-seen end), ``"added"``, or ``"pending"`` (bucket full: the
        newcomer waits in the replacement cache while the oldest is pinged).
        """
        if contact.node_id == self.own_id:
            return "self"
        while True:
            bucket = self.bucket_for(contact.node_id)
            i = bucket.index_of(contact.node_id)
            if i >= 0:
                del bucket.contacts[i]
                bucket.contacts.append(contact)
                bucket.failures.pop(contact.node_id, None)
                self._heard_at[contact.node_id] = self._clock.seconds()
                return "updated"
            if len(bucket.contacts) < self.k:
                bucket.contacts.append(contact)
                self._drop_replacement(bucket, contact.node_id)
                self._heard_at[contact.node_id] = self._clock.seconds()
                return "added"
            if bucket.covers(self.own_id) and bucket.hi - bucket.lo > 1:
                self._split(bucket)
                continue
            self._add_replacement(bucket, contact)
            self._ping_oldest(bucket)
            return "pending"

    def remove(self, node_id: int) -> bool:
        """Drop a contact, promoting the newest replacement into its place."""
        bucket = self.bucket_for(node_id)
        i = bucket.index_of(node_id)
        self._drop_replacement(bucket, node_id)
        if i < 0:
            return False
        del bucket.contacts[i]
        bucket.failures.pop(node_id, None)
        self._heard_at.pop(node_id, None)
        if bucket.replacements:
            bucket.contacts.append(bucket.replacements.pop())
        return True

    def note_failure(self, node_id: int) -> bool:
        """Count one failed RPC to ``node_id``; drops it after ``max_failures``. True if dropped.

        A contact is dropped at once if the bucket has a replacement waiting.
        """
        bucket = self.bucket_for(node_id)
        if bucket.index_of(node_id) < 0:
            self._drop_replacement(bucket, node_id)
            return False
        fails = bucket.failures.get(node_id, 0) + 1
        bucket.failures[node_id] = fails
        if fails >= self._max_failures or bucket.replacements:
            return self.remove(node_id)
        return False

    # -- refresh ------------------------------------------------------------------

    def touch(self, target: int) -> None:
        """Record that a lookup for ``target`` was done (refreshes its bucket)."""
        self.bucket_for(target).last_touched = self._clock.seconds()

    def stale_buckets(self, max_age: float) -> list[KBucket]:
        """Buckets not looked up for ``max_age`` seconds."""
        now = self._clock.seconds()
        return [b for b in self._buckets if now - b.last_touched >= max_age]

    @staticmethod
    def random_id_in(bucket: KBucket, rng: random.Random) -> int:
        """A random id in ``bucket``'s range (target for a refresh lookup)."""
        return random_id_in_range(bucket.lo, bucket.hi, rng)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe snapshot for status pages."""
        return {
            "node_id": id_to_hex(self.own_id),
            "k": self.k,
            "size": len(self),
            "buckets": [
                {
                    "depth": b.depth,
                    "lo": id_to_hex(b.lo),
                    "hi": id_to_hex(b.hi - 1),
                    "last_touched": b.last_touched,
                    "contacts": [c.to_dict() for c in b.contacts],
                    "replacements": len(b.replacements),
                }
                for b in self._buckets
            ],
        }

    # -- internals ----------------------------------------------------------------

    def _split(self, bucket: KBucket) -> None:
        mid = bucket.lo + (bucket.hi - bucket.lo) // 2
        low = KBucket(bucket.lo, mid, bucket.last_touched)
        high = KBucket(mid, bucket.hi, bucket.last_touched)
        for c in bucket.contacts:
            (low if c.node_id < mid else high).contacts.append(c)
        for c in bucket.replacements:
            (low if c.node_id < mid else high).replacements.append(c)
        for node_id, fails in bucket.failures.items():
            (low if node_id < mid else high).failures[node_id] = fails
        i = self._buckets.index(bucket)
        self._buckets[i : i + 1] = [low, high]
        self._los[i : i + 1] = [low.lo, high.lo]

    def _add_replacement(self, bucket: KBucket, contact: Contact) -> None:
        self._drop_replacement(bucket, contact.node_id)
        bucket.replacements.append(contact)
        del bucket.replacements[: -self.k]

    @staticmethod
    def _drop_replacement(bucket: KBucket, node_id: int) -> None:
        bucket.replacements = [c for c in bucket.replacements if c.node_id != node_id]

    def _ping_oldest(self, bucket: KBucket) -> None:
        if self._ping is None or bucket.pinging or not bucket.contacts:
            return
        oldest = bucket.contacts[0]
        heard_at = self._heard_at.get(oldest.node_id)
        if self._fresh_for and heard_at is not None and self._clock.seconds() - heard_at < self._fresh_for:
            # Even the least recently seen contact answered lately: keep the bucket, the newcomer waits
            # in the replacement cache for a contact to fail.
            self.pings_skipped_fresh += 1
            return
        bucket.pinging = True

        def alive(_: object) -> None:
            bucket.pinging = False
            current = self.bucket_for(oldest.node_id)
            i = current.index_of(oldest.node_id)
            if i >= 0:
                # Still there: it is now the most recently seen.
                current.contacts.append(current.contacts.pop(i))
                current.failures.pop(oldest.node_id, None)
                self._heard_at[oldest.node_id] = self._clock.seconds()

        def dead(reason: object) -> None:
            bucket.pinging = False
            self.remove(oldest.node_id)

        d = self._ping(oldest)
        d.addCallbacks(alive, dead)
        d.addErrback(lambda f: self._log.failure("routing eviction ping handler failed", f))
