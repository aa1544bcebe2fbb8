"""Replay protection: reject a packet seen before, or dated outside the window.

A packet is acceptable when ``now - window <= date <= now + max_future`` and
its ``(creator_id, packet_id)`` was not accepted before.  An accepted key is
remembered until a replay of it would be rejected for its date anyway
(``date < now - window``), so the cache only ever holds keys that matter.

Memory is bounded by ``max_entries``.  When the cache is full the key with
the oldest date is evicted and that date becomes a *floor*: from then on a
packet dated at or before the floor is rejected as too old.  So eviction never
opens a replay hole; under a flood it shortens the window instead, by as
little as possible.
"""

from __future__ import annotations

import heapq

from twisted.internet.interfaces import IReactorTime

from bitnode.transport.packet import BadPacket


class Replayed(BadPacket):
    """This (creator, packet id) was already accepted within the window."""

    reason = "replay"


class TooOld(BadPacket):
    """The packet's date is before the acceptance window."""

    reason = "too_old"


class TooNew(BadPacket):
    """The packet's date is too far in the future."""

    reason = "too_new"


class ReplayCache:
    """Remembers recently accepted ``(creator_id, packet_id)`` pairs.

    :param clock: the time source (``IReactorTime``).
    :param window_seconds: how old a packet's date may be.
    :param max_entries: the most keys held at once.
    :param max_future_seconds: how far ahead of our clock a date may be
        (clock skew); defaults to ``window_seconds``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        window_seconds: float,
        max_entries: int,
        max_future_seconds: float | None = None,
    ) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._window = float(window_seconds)
        self._future = self._window if max_future_seconds is None else float(max_future_seconds)
        if self._future < 0:
            raise ValueError("max_future_seconds must not be negative")
        self._max_entries = max_entries
        # the remembered keys, and the same keys in a min-heap by date: expiry
        # and eviction both take the oldest date first.
        self._seen: set[tuple[str, str]] = set()
        self._by_date: list[tuple[float, tuple[str, str]]] = []
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def floor(self) -> float:
        """Dates at or before this are rejected because of evictions (``-inf`` if none)."""
        return self._floor

    def check(self, creator_id: str, packet_id: str, date: float) -> None:
        """Accept and remember the packet, or raise without remembering it.

        Raises :class:`TooOld`, :class:`TooNew` or :class:`Replayed` (all
        :class:`~bitnode.transport.packet.BadPacket`).
        """
        now = self._clock.seconds()
        self._expire(now)
        if date < now - self._window:
            raise TooOld(f"packet dated {now - date:.1f}s ago, window {self._window:.1f}s")
        if date > now + self._future:
            raise TooNew(f"packet dated {date - now:.1f}s ahead, limit {self._future:.1f}s")
        if date <= self._floor:
            raise TooOld("packet older than the replay cache remembers")
        key = (creator_id, packet_id)
        if key in self._seen:
            raise Replayed(f"packet {packet_id!r} from {creator_id!r} already seen")
        while len(self._seen) >= self._max_entries:
            evicted_date, evicted = heapq.heappop(self._by_date)
            self._seen.discard(evicted)
            self._floor = max(self._floor, evicted_date)
        self._seen.add(key)
        heapq.heappush(self._by_date, (date, key))

    def _expire(self, now: float) -> None:
        oldest_acceptable = now - self._window
        while self._by_date and self._by_date[0][0] < oldest_acceptable:
            _date, key = heapq.heappop(self._by_date)
            self._seen.discard(key)
