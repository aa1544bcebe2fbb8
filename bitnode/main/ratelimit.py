"""Token buckets per key (a peer, an address, a customer) with bounded memory.

:class:`KeyedRateLimiter` lets each key spend ``rate`` tokens per second on
average and ``burst`` at once. It remembers at most ``max_keys`` keys: when a
new key would pass that, the keys whose bucket is full again (they carry no
information) are forgotten first, then the least recently used down to three
quarters of the limit — a flood of fresh keys
costs bounded memory and at worst gives some keys a fresh burst.

The limits are values changed with :meth:`KeyedRateLimiter.configure` (a
service calls it when its settings change), not read on every call. A rate
of 0 turns the limiter off. Time comes from the injected clock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

from twisted.internet.interfaces import IReactorTime


class KeyedRateLimiter:
    """``rate`` tokens per second per key, at most ``burst`` saved up; see the module docstring."""

    def __init__(self, clock: IReactorTime, rate: float, burst: float, max_keys: int = 4096):
        self._clock = clock
        self.max_keys = max(1, int(max_keys))
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()
        self.rate = 0.0
        self.burst = 1.0
        self.configure(rate, burst)

    def configure(self, rate: float, burst: float) -> None:
        """New limits from now on; every key starts again with a full burst."""
        self.rate = max(0.0, float(rate))
        self.burst = max(1.0, float(burst))
        self._buckets.clear()

    def allow(self, key: Hashable, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if it has them; whether it had."""
        if self.rate <= 0:
            return True
        tokens = self._tokens(key)
        allowed = tokens >= cost
        self._buckets[key] = (tokens - cost if allowed else tokens, self._clock.seconds())
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._forget()
        return allowed

    def retry_after(self, key: Hashable, cost: float = 1.0) -> float:
        """Seconds until ``key`` has ``cost`` tokens again (0 when it has them now)."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, (cost - self._tokens(key)) / self.rate)

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: Hashable) -> float:
        now = self._clock.seconds()
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - stamp) * self.rate)

    def _forget(self) -> None:
        for key in [key for key in self._buckets if self._tokens(key) >= self.burst]:
            del self._buckets[key]
        # Then the least recently used, down to three quarters, so the next scan is far away.
        while len(self._buckets) > self.max_keys * 3 // 4:
            self._buckets.popitem(last=False)
