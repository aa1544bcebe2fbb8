"""Fetching identity documents without letting strangers direct us: one fetch per IDURL, few at once.

A stranger's ``Identity`` packet names an IDURL the node then asks (to
confirm the stranger's key), so a flood of them would make us a scanner and
reflector for URLs of the stranger's choosing.  :class:`IdentityFetcher`
sits between the identity service and its HTTP client and keeps that cheap:

- **one fetch in flight per IDURL**: a second request for it waits for the
  first and gets the same answer;
- **a global cap** (``max_concurrent``) on fetches at once; our own fetches
  queue behind it (the queue is bounded too), a stranger's are refused at
  once (``TooManyRequests``) when ``max_stranger_concurrent`` of them run;
- **a negative cache**: an IDURL that failed is answered with the same
  error for ``negative_ttl`` seconds when a stranger asks again (our own
  fetches still go out: a peer we need may just have come back);
- **an optional allow-list** of identity-server hosts (``host`` or
  ``host:port``): any other IDURL is refused without a request.

Every refusal is counted (:meth:`IdentityFetcher.stats`, shown by
``network_status``/``service_info``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from bitnode import globalid
from bitnode.errors import BitnodeError, Forbidden, TooManyRequests


class HostNotAllowed(Forbidden):
    """The IDURL's identity server is not in ``services/identity/allowed-servers``."""


class IdentityFetcher:
    """Fetches through ``fetch(idurl) -> Deferred[Identity]`` under the rules of the module doc.

    :param fetch: the real fetch (the identity client's).
    :param clock: the time source (negative cache expiry).
    :param max_concurrent: fetches at once, in all.
    :param max_stranger_concurrent: fetches at once on behalf of strangers.
    :param max_queued: our own fetches waiting for a free slot before more are refused.
    :param negative_ttl: seconds a failed IDURL is answered from the negative cache (for strangers).
    :param negative_entries: failed IDURLs remembered.
    :param allowed_hosts: identity-server hosts allowed (empty: any).
    """

    def __init__(self, fetch: Callable[[str], Deferred], clock: IReactorTime, *, max_concurrent: int = 8,
                 max_stranger_concurrent: int = 4, max_queued: int = 1000, negative_ttl: float = 60.0,
                 negative_entries: int = 10_000, allowed_hosts: Iterable[str] = ()) -> None:
        self._fetch = fetch
        self._clock = clock
        self.max_concurrent = max(1, max_concurrent)
        self.max_stranger_concurrent = max(1, min(max_stranger_concurrent, self.max_concurrent))
        self.max_queued = max_queued
        self.negative_ttl = float(negative_ttl)
        self._negative_entries = negative_entries
        self.allowed_hosts = frozenset(h.strip().lower() for h in allowed_hosts if h.strip())
        self._in_flight: dict[str, list[Deferred]] = {}
        self._strangers_running = 0
        self._running = 0
        self._queue: deque[tuple[str, bool]] = deque()
        self._failed: OrderedDict[str, tuple[Failure, float]] = OrderedDict()
        self.counts: Counter[str] = Counter()

    def fetch(self, idurl: str, stranger: bool = False) -> Deferred:
        """Deferred[Identity] for ``idurl``; ``stranger``: asked because of a stranger's packet."""
        try:
            url = str(globalid.IdUrl.parse(idurl))
            self._check_host(url)
        except BitnodeError:
            self.counts["refused_host"] += 1
            return fail()
        if stranger:
            cached = self._negative(url)
            if cached is not None:
                self.counts["negative_cached"] += 1
                return fail(cached)
        waiter: Deferred = Deferred()
        waiting = self._in_flight.get(url)
        if waiting is not None:
            self.counts["coalesced"] += 1
            waiting.append(waiter)
            return waiter
        if stranger and self._strangers_running >= self.max_stranger_concurrent:
            self.counts["busy"] += 1
            return fail(TooManyRequests(f"{self._strangers_running} identity fetches for strangers already "
                                        "running"))
        if self._running >= self.max_concurrent:
            if stranger or len(self._queue) >= self.max_queued:
                self.counts["busy"] += 1
                return fail(TooManyRequests(f"{self._running} identity fetches running, "
                                            f"{len(self._queue)} waiting"))
            self._in_flight[url] = [waiter]
            self._queue.append((url, stranger))
            self.counts["waited"] += 1
        else:
            self._in_flight[url] = [waiter]
            self._start(url, stranger)
        return waiter

    def stats(self) -> dict:
        """Fetches running, waiting, and the refusals by kind."""
        return {
            "running": self._running, "queued": len(self._queue),
            "max_concurrent": self.max_concurrent, "max_stranger_concurrent": self.max_stranger_concurrent,
            "negative_entries": len(self._failed), "negative_ttl": self.negative_ttl,
            "allowed_hosts": sorted(self.allowed_hosts),
            **{what: self.counts[what] for what in ("fetched", "failed", "coalesced", "waited", "busy",
                                                    "negative_cached", "refused_host")},
        }

    # -- internals ------------------------------------------------------------

    def _check_host(self, url: str) -> None:
        if not self.allowed_hosts:
            return
        parsed = globalid.IdUrl.parse(url)
        host = parsed.host.lower()
        if host not in self.allowed_hosts and f"{host}:{parsed.port}" not in self.allowed_hosts:
            raise HostNotAllowed(f"identity server {host}:{parsed.port} is not an allowed one "
                                 "(services/identity/allowed-servers)")

    def _negative(self, url: str) -> Failure | None:
        entry = self._failed.get(url)
        if entry is None:
            return None
        failure, at = entry
        if self._clock.seconds() - at >= self.negative_ttl:
            del self._failed[url]
            return None
        return failure

    def _start(self, url: str, stranger: bool) -> None:
        self._running += 1
        if stranger:
            self._strangers_running += 1
        try:
            d = self._fetch(url)
        except Exception:
            d = fail()
        d.addBoth(self._done, url, stranger)

    def _done(self, result: Any, url: str, stranger: bool) -> None:
        self._running -= 1
        if stranger:
            self._strangers_running -= 1
        waiters = self._in_flight.pop(url, [])
        if isinstance(result, Failure):
            self.counts["failed"] += 1
            self._failed.pop(url, None)
            self._failed[url] = (result, self._clock.seconds())
            while len(self._failed) > self._negative_entries:
                self._failed.popitem(last=False)
        else:
            self.counts["fetched"] += 1
            self._failed.pop(url, None)
        self._next()
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        return None

    def _next(self) -> None:
        while self._queue and self._running < self.max_concurrent:
            url, stranger = self._queue.popleft()
            self._start(url, stranger)

