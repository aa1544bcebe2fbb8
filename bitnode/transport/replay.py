"""Replay protection: reject a packet seen before, or dated outside the window.

A packet is acceptable when ``now - window <= date <= now + max_future``,
it is not dated before the cache was made (``refuse_before_start``: a packet
captured before a restart cannot be played again after it), and its
``(creator_id, packet_id)`` was not accepted before.  An accepted key is
remembered until a replay of it would be rejected for its date anyway
(``date < now - window``), so the cache only ever holds keys that matter.

Memory is bounded twice: at most ``max_entries`` keys in all, and at most
``max_per_sender`` keys of one creator (so one busy or hostile sender fills
its own share, never everyone's).  To make room the oldest key is evicted and
its date becomes a *floor* for its creator: a packet of that creator dated at
or before the floor is rejected as too old, so eviction never opens a replay
hole.  A key younger than ``now - min_window`` is never evicted; when only
such keys are left the new packet is refused instead (``replay_full``).  So a
floor can never rise above ``now - min_window``: a flood shortens the window,
down to ``min_window`` and no further, and never blocks packets dated now.

When a creator's last key goes, its floor is folded into one shared floor
(also never above ``now - min_window``), so a sender no longer costs memory.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict

from twisted.internet.interfaces import IReactorTime

from bitnode.transport.packet import BadPacket

#: How far ahead of our clock a packet's date may be, unless told otherwise.
DEFAULT_MAX_FUTURE = 60.0
#: The window never shrinks below this under a flood, unless told otherwise.
DEFAULT_MIN_WINDOW = 30.0


class Replayed(BadPacket):
    """This (creator, packet id) was already accepted within the window."""

    reason = "replay"


class TooOld(BadPacket):
    """The packet's date is before the acceptance window."""

    reason = "too_old"


class TooNew(BadPacket):
    """The packet is dated too far in the future (more than ``max_future`` ahead of our clock)."""

    reason = "too_new"


class BeforeStart(BadPacket):
    """The packet is dated before this process started listening (a replay across a restart is possible)."""

    reason = "before_start"


class ReplayFull(BadPacket):
    """The cache (or the sender's share of it) is full of keys too young to forget."""

    reason = "replay_full"


class _Sender:
    """The keys of one creator, in arrival order, and its floor."""

    __slots__ = ("dates", "floor")

    def __init__(self) -> None:
        self.dates: OrderedDict[str, float] = OrderedDict()
        self.floor = float("-inf")


class ReplayCache:
    """Remembers recently accepted ``(creator_id, packet_id)`` pairs.

    :param clock: the time source (``IReactorTime``).
    :param window_seconds: how old a packet's date may be.
    :param max_entries: the most keys held at once.
    :param max_future_seconds: how far ahead of our clock a date may be
        (clock skew).
    :param min_window_seconds: evictions never shorten the window below this
        (it is capped at ``window_seconds``).
    :param max_per_sender: the most keys of one creator (default: all of
        ``max_entries``).
    :param refuse_before_start: reject packets dated before this cache was made.
    """

    def __init__(
        self,
        clock: IReactorTime,
        window_seconds: float,
        max_entries: int,
        max_future_seconds: float = DEFAULT_MAX_FUTURE,
        min_window_seconds: float = DEFAULT_MIN_WINDOW,
        max_per_sender: int | None = None,
        refuse_before_start: bool = False,
    ) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_future_seconds < 0:
            raise ValueError("max_future_seconds must not be negative")
        if min_window_seconds < 0:
            raise ValueError("min_window_seconds must not be negative")
        if max_per_sender is not None and max_per_sender < 1:
            raise ValueError("max_per_sender must be at least 1")
        self._clock = clock
        self._window = float(window_seconds)
        self._future = float(max_future_seconds)
        self._min_window = min(float(min_window_seconds), self._window)
        self._max_entries = max_entries
        self._max_per_sender = min(max_per_sender or max_entries, max_entries)
        self._not_before = clock.seconds() if refuse_before_start else float("-inf")
        self._senders: dict[str, _Sender] = {}
        # every remembered key by date, oldest first; entries whose key was evicted
        # from its sender or forgotten are stale and skipped (and compacted away)
        self._by_date: list[tuple[float, str, str]] = []
        self._count = 0
        self._floor = float("-inf")  # the floors of senders that have no keys left
        self.evictions: Counter[str] = Counter()

    def __len__(self) -> int:
        return self._count

    @property
    def floor(self) -> float:
        """The floor shared by senders with no keys left (``-inf`` if none)."""
        return self._floor

    def floor_of(self, creator_id: str) -> float:
        """Dates of this creator at or before this are rejected because of evictions."""
        sender = self._senders.get(creator_id)
        return self._floor if sender is None else max(self._floor, sender.floor)

    @property
    def not_before(self) -> float:
        """Packets dated before this are refused (``-inf`` unless ``refuse_before_start``)."""
        return self._not_before

    def check(self, creator_id: str, packet_id: str, date: float) -> None:
        """Accept and remember the packet, or raise without remembering it.

        Raises :class:`TooOld`, :class:`TooNew`, :class:`BeforeStart`,
        :class:`Replayed` or :class:`ReplayFull` (all
        :class:`~bitnode.transport.packet.BadPacket`).
        """
        now = self._clock.seconds()
        self._expire(now)
        self._refuse(creator_id, packet_id, date, now)
        sender = self._senders.get(creator_id)
        if sender is not None and len(sender.dates) >= self._max_per_sender:
            self._evict_first_of(creator_id, sender, now)
        while self._count >= self._max_entries:
            self._evict_oldest(now)
        if sender is None:
            sender = self._senders[creator_id] = _Sender()
        sender.dates[packet_id] = date
        self._count += 1
        heapq.heappush(self._by_date, (date, creator_id, packet_id))

    def peek(self, creator_id: str, packet_id: str, date: float) -> None:
        """Raise what :meth:`check` would for the date or a replay, remembering nothing."""
        now = self._clock.seconds()
        self._expire(now)
        self._refuse(creator_id, packet_id, date, now)

    def forget(self, creator_id: str, packet_id: str) -> None:
        """Forget an accepted key (its packet was refused before it did anything)."""
        sender = self._senders.get(creator_id)
        if sender is not None and sender.dates.pop(packet_id, None) is not None:
            self._count -= 1
            self._drop_if_empty(creator_id, sender)
            self._compact_if_stale()

    def stats(self) -> dict:
        """JSON-safe facts for ``packets_stats``."""
        now = self._clock.seconds()
        return {
            "entries": self._count,
            "senders": len(self._senders),
            "max_entries": self._max_entries,
            "max_per_sender": self._max_per_sender,
            "window_seconds": self._window,
            "shortest_window_seconds": round(min(self._window, now - self._floor), 3),
            "evicted": self.evictions["evicted"],
            "evicted_per_sender": self.evictions["per_sender"],
        }

    # -- internals ------------------------------------------------------------

    def _refuse(self, creator_id: str, packet_id: str, date: float, now: float) -> None:
        if date < now - self._window:
            raise TooOld(f"packet dated {now - date:.1f}s ago, window {self._window:.1f}s")
        if date > now + self._future:
            raise TooNew(f"packet dated {date - now:.1f}s ahead, limit {self._future:.1f}s")
        if date < self._not_before:
            raise BeforeStart(f"packet dated {self._not_before - date:.1f}s before this node started")
        sender = self._senders.get(creator_id)
        if date <= max(self._floor, sender.floor if sender is not None else self._floor):
            raise TooOld("packet older than the replay cache remembers")
        if sender is not None and packet_id in sender.dates:
            raise Replayed(f"packet {packet_id!r} from {creator_id!r} already seen")

    def _evictable(self, date: float, now: float) -> bool:
        return date <= now - self._min_window

    def _evict_first_of(self, creator_id: str, sender: _Sender, now: float) -> None:
        """Make room in one sender's share: its earliest-arrived key goes, if old enough."""
        packet_id = next(iter(sender.dates))
        date = sender.dates[packet_id]
        if not self._evictable(date, now):
            raise ReplayFull(f"{creator_id!r} sent {len(sender.dates)} packets in the last "
                             f"{self._min_window:g}s; refused until older ones can be forgotten")
        del sender.dates[packet_id]
        self._count -= 1
        sender.floor = max(sender.floor, date)
        self.evictions["per_sender"] += 1
        self._compact_if_stale()

    def _evict_oldest(self, now: float) -> None:
        """Make room in the whole cache: the oldest key goes, if old enough."""
        while self._by_date:
            date, creator_id, packet_id = self._by_date[0]
            sender = self._senders.get(creator_id)
            if sender is None or sender.dates.get(packet_id) != date:
                heapq.heappop(self._by_date)  # stale: already evicted or forgotten
                continue
            if not self._evictable(date, now):
                raise ReplayFull(f"{self._count} packets in the last {self._min_window:g}s; "
                                 "refused until older ones can be forgotten")
            heapq.heappop(self._by_date)
            del sender.dates[packet_id]
            self._count -= 1
            sender.floor = max(sender.floor, date)
            self.evictions["evicted"] += 1
            self._drop_if_empty(creator_id, sender)
            return

    def _drop_if_empty(self, creator_id: str, sender: _Sender) -> None:
        if not sender.dates:
            del self._senders[creator_id]
            self._floor = max(self._floor, sender.floor)

    def _expire(self, now: float) -> None:
        oldest_acceptable = now - self._window
        while self._by_date and self._by_date[0][0] < oldest_acceptable:
            _date, creator_id, packet_id = heapq.heappop(self._by_date)
            sender = self._senders.get(creator_id)
            if sender is not None and sender.dates.pop(packet_id, None) is not None:
                self._count -= 1
                self._drop_if_empty(creator_id, sender)

    def _compact_if_stale(self) -> None:
        """Rebuild the date heap when most of it is stale (keys evicted from their sender)."""
        if len(self._by_date) > 2 * self._count + 64:
            self._by_date = [(date, creator_id, packet_id)
                             for creator_id, sender in self._senders.items()
                             for packet_id, date in sender.dates.items()]
            heapq.heapify(self._by_date)
