"""What strangers may cost a transport: a per-key rate limit, connection counts, and a shared buffer budget.

Each is a small object owned by one transport (never module-level) and
reports its own counters for ``packets_stats``:

- :class:`RateLimit` — a token bucket per key (a source IP), for work a
  stranger's packet makes us do (answering it, fetching its identity), on
  the shared :class:`~bitnode.main.ratelimit.KeyedRateLimiter`.
- :class:`ConnectionLimits` — incoming connections per IP and in all.
- :class:`BufferBudget` — bytes of frame bodies being received, summed over
  every connection.  A connection reserves a body's size before it reads the
  body and releases it once the frame is handed on; one that cannot reserve
  waits (its reading is paused) until another releases.  One key (an IP) may
  hold at most ``per_key_share`` of the budget; a single frame always fits
  when nothing else is reserved, so the budget can never deadlock.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

from twisted.internet.interfaces import IReactorTime

from bitnode.main.ratelimit import KeyedRateLimiter


class RateLimit:
    """At most ``per_minute`` events per key, in bursts of up to ``burst``, counted for ``packets_stats``.

    The buckets are the shared :class:`~bitnode.main.ratelimit.KeyedRateLimiter`
    (bounded memory: a forgotten key only gets a full bucket again).

    :param clock: the time source.
    :param per_minute: the sustained rate per key (0: no limit).
    :param burst: the bucket size (default: ``per_minute``).
    :param max_keys: keys remembered at once.
    """

    def __init__(self, clock: IReactorTime, per_minute: float, burst: Optional[float] = None,
                 max_keys: int = 10_000) -> None:
        if per_minute < 0:
            raise ValueError("per_minute must not be negative")
        self.per_minute = float(per_minute)
        self._buckets = KeyedRateLimiter(clock, self.per_minute / 60.0,
                                         burst if burst is not None else self.per_minute, max_keys)
        self.allowed = 0
        self.refused = 0

    def allow(self, key: str) -> bool:
        """Take one token for ``key``; False (and counted) when its bucket is empty."""
        ok = self._buckets.allow(key)
        if ok:
            self.allowed += 1
        else:
            self.refused += 1
        return ok

    def stats(self) -> dict:
        """Counters: allowed, refused (rate_limited), and the keys tracked."""
        return {"per_minute": self.per_minute, "allowed": self.allowed, "rate_limited": self.refused,
                "sources": len(self._buckets)}


class ConnectionLimits:
    """Counts incoming connections; refuses one past ``per_ip`` from its IP or past ``total`` in all (0: no limit)."""

    def __init__(self, per_ip: int, total: int) -> None:
        self.per_ip = per_ip
        self.total = total
        self._by_ip: Counter[str] = Counter()
        self._open = 0
        self.refused: Counter[str] = Counter()

    def admit(self, ip: str) -> bool:
        """Count a new connection from ``ip``; False (not counted, refusal counted) when over a limit."""
        if self.total and self._open >= self.total:
            self.refused["total"] += 1
            return False
        if self.per_ip and self._by_ip[ip] >= self.per_ip:
            self.refused["per_ip"] += 1
            return False
        self._by_ip[ip] += 1
        self._open += 1
        return True

    def release(self, ip: str) -> None:
        """An admitted connection from ``ip`` closed."""
        if self._by_ip[ip] <= 1:
            self._by_ip.pop(ip, None)
        else:
            self._by_ip[ip] -= 1
        self._open = max(0, self._open - 1)

    def stats(self) -> dict:
        """Open incoming connections and refusals."""
        return {"incoming": self._open, "max_per_ip": self.per_ip, "max_total": self.total,
                "refused_per_ip": self.refused["per_ip"], "refused_total": self.refused["total"]}


class BufferBudget:
    """Bytes of frame bodies in memory across connections, at most ``max_bytes`` (see the module doc)."""

    def __init__(self, max_bytes: int, per_key_share: float = 0.5) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = int(max_bytes)
        self.per_key_bytes = max(1, int(max_bytes * per_key_share))
        self.reserved = 0
        self.peak = 0
        self.waits = 0
        self._by_key: Counter[str] = Counter()
        self._waiters: OrderedDict[object, Callable[[], None]] = OrderedDict()

    def try_reserve(self, key: str, nbytes: int) -> bool:
        """Reserve ``nbytes`` for ``key`` if the budget allows; False otherwise (nothing reserved)."""
        if nbytes <= 0:
            return True
        held = self._by_key[key]
        alone = self.reserved == 0 or (held == 0 and not self._by_key)
        if not alone:
            if self.reserved + nbytes > self.max_bytes:
                return False
            if held and held + nbytes > self.per_key_bytes:
                return False
        self._by_key[key] += nbytes
        self.reserved += nbytes
        self.peak = max(self.peak, self.reserved)
        return True

    def release(self, key: str, nbytes: int) -> None:
        """Give back what ``key`` reserved, and wake the waiters (oldest first)."""
        if nbytes <= 0:
            return
        left = self._by_key[key] - nbytes
        if left > 0:
            self._by_key[key] = left
        else:
            self._by_key.pop(key, None)
        self.reserved = max(0, self.reserved - nbytes)
        waiters, self._waiters = self._waiters, OrderedDict()
        for wake in waiters.values():
            wake()

    def wait(self, token: object, wake: Callable[[], None]) -> None:
        """Call ``wake()`` at the next release (once); ``token`` identifies the waiter for :meth:`cancel`."""
        self.waits += 1
        self._waiters[token] = wake

    def cancel(self, token: object) -> None:
        """Forget a waiter (its connection closed)."""
        self._waiters.pop(token, None)

    def stats(self) -> dict:
        """bytes_buffered now, the peak, the limit, and how often a connection had to wait."""
        return {"bytes_buffered": self.reserved, "peak_bytes_buffered": self.peak, "max_bytes": self.max_bytes,
                "max_bytes_per_ip": self.per_key_bytes, "waits": self.waits, "waiting": len(self._waiters)}


@dataclass(frozen=True)
class PeerLimits:
    """Every limit on what peers (and strangers) may cost a gateway; each is a ``services/gateway/`` setting.

    :param replay_future: seconds a packet's date may be ahead of our clock.
    :param replay_min_window: a flood never shortens the replay window below this.
    :param replay_entries: packet ids remembered for confirmed senders, in all.
    :param replay_entries_per_peer: ... and per sender.
    :param introduction_entries: packet ids remembered for strangers' introductions (a separate cache).
    :param introductions_per_minute: introductions and answers to strangers per source IP per minute.
    :param pending_introductions: introductions being confirmed with identity servers at once.
    :param max_stranger_body: the largest Identity packet payload a stranger may send.
    :param connections_per_ip: incoming connections from one IP (0: no limit).
    :param connections: incoming connections in all (0: no limit).
    :param max_buffered: bytes of payloads being received at once, over all connections.
    :param challenge_ttl: seconds a challenge for destructive commands stays valid.
    """

    replay_future: float = 60.0
    replay_min_window: float = 30.0
    replay_entries: int = 100_000
    replay_entries_per_peer: int = 25_000
    introduction_entries: int = 1000
    introductions_per_minute: int = 60
    pending_introductions: int = 16
    max_stranger_body: int = 16 * 1024
    connections_per_ip: int = 64
    connections: int = 512
    max_buffered: int = 64 * 1024 * 1024
    challenge_ttl: float = 300.0
