"""How many storage commands one peer may send a supplier, and how many listings.

Each requester (the packet's verified creator: a customer, a share reader, or a
stranger asking for service) has two token buckets
(:class:`~bitnode.main.ratelimit.KeyedRateLimiter`): one for every storage
command (``request-rate`` per second, ``request-burst`` at once) and one more
for ``ListFiles`` (``list-rate`` / ``list-burst``; each page of a long listing
counts), the one command whose cost grows with what the customer stores. A command over either limit is answered
``Fail "rate limited: ..."`` before the desk does any work, and counted.

The defaults leave a real customer far below them: an upload sends one
``Data`` per segment to each supplier (tens per second for big files, a few
hundred for many small ones), and the customer lists its blocks every few
minutes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bitnode.main.ratelimit import KeyedRateLimiter
from bitnode.transport.commands import Command

RATE_LIMITED = "rate limited"


@dataclass(frozen=True)
class RateSettings:
    """The four numbers of the supplier's settings (a rate of 0 turns that limit off)."""

    rate: float = 1000.0
    burst: float = 2000.0
    list_rate: float = 1.0
    list_burst: float = 60.0


class RequestLimits:
    """Token buckets per requester; :meth:`check` says whether one more command may be served."""

    def __init__(self, clock, settings: RateSettings = RateSettings(), max_requesters: int = 4096):
        self.requests = KeyedRateLimiter(clock, settings.rate, settings.burst, max_requesters)
        self.listings = KeyedRateLimiter(clock, settings.list_rate, settings.list_burst, max_requesters)
        #: Commands refused, by command name.
        self.limited: Counter[str] = Counter()

    def configure(self, settings: RateSettings) -> None:
        """Apply new settings (every requester starts again with full buckets)."""
        self.requests.configure(settings.rate, settings.burst)
        self.listings.configure(settings.list_rate, settings.list_burst)

    def check(self, requester: str, command: str) -> str:
        """"" when ``requester`` may send ``command`` now (a token is taken), else the ``Fail`` reason."""
        if not self.requests.allow(requester):
            return self._refuse(self.requests, requester, command, "storage requests")
        if command == Command.LIST_FILES.value and not self.listings.allow(requester):
            return self._refuse(self.listings, requester, command, "listings")
        return ""

    def _refuse(self, limiter: KeyedRateLimiter, requester: str, command: str, what: str) -> str:
        self.limited[command] += 1
        return (f"{RATE_LIMITED}: more than {limiter.rate:g} {what} per second from you; "
                f"retry in {limiter.retry_after(requester):.1f} s")
