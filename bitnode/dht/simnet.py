"""An in-memory datagram network for tests, driven by a ``twisted.internet.task.Clock``.

Endpoints get ``(host, port)`` addresses and exchange byte strings. Every
datagram is delivered after ``latency`` +/- ``jitter`` seconds (scheduled on the
clock), unless it is dropped: by the random ``drop_rate``, because either end is
down or closed, or because a partition separates the two hosts. All randomness
comes from the injected ``random.Random``, so a run is reproducible.

:meth:`SimNetwork.run_until` steps the clock from one scheduled call to the next
(an exact discrete-event simulation) until a Deferred fires.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from bitnode.errors import BadRequest, Conflict, Timeout

Address = tuple[str, int]
Receiver = Callable[[bytes, Address], None]


class SimEndpoint:
    """One bound address on a :class:`SimNetwork`; the simulated counterpart of a UDP port."""

    def __init__(self, network: SimNetwork, address: Address) -> None:
        self.network = network
        self.address = address
        self.receiver: Receiver | None = None
        self.closed = False

    def set_receiver(self, receiver: Receiver) -> None:
        """Who gets datagrams addressed to this endpoint."""
        self.receiver = receiver

    def send(self, data: bytes, address: Address) -> None:
        """Send a datagram (fire and forget, like UDP)."""
        if self.closed:
            raise OSError("endpoint closed")
        self.network.transmit(self.address, address, data)

    def close(self) -> None:
        """Unbind: nothing more is sent or received; the address can be bound again."""
        self.closed = True
        self.network.unbind(self)


class SimNetwork:
    """Endpoints plus link behaviour (latency, jitter, loss, partitions, down hosts)."""

    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        latency: float = 0.02,
        jitter: float = 0.01,
        drop_rate: float = 0.0,
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.latency = latency
        self.jitter = jitter
        self.drop_rate = drop_rate
        self.endpoints: dict[Address, SimEndpoint] = {}
        self.down: set[str] = set()
        self._partition: dict[str, int] = {}
        self._next_host = 1
        self.counters: Counter[str] = Counter()

    # -- topology -------------------------------------------------------------------

    def endpoint(self, host: str | None = None, port: int = 7000) -> SimEndpoint:
        """Bind a new endpoint; ``host`` defaults to a fresh ``10.x.y.z`` address."""
        if host is None:
            n = self._next_host
            self._next_host += 1
            host = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        address = (host, port)
        if address in self.endpoints:
            raise Conflict(f"address {host}:{port} already bound")
        ep = SimEndpoint(self, address)
        self.endpoints[address] = ep
        return ep

    def unbind(self, endpoint: SimEndpoint) -> None:
        """Forget ``endpoint`` (called by :meth:`SimEndpoint.close`)."""
        if self.endpoints.get(endpoint.address) is endpoint:
            del self.endpoints[endpoint.address]

    def set_down(self, host: str, down: bool = True) -> None:
        """Take a host off the network (all its datagrams in and out are lost) or bring it back."""
        (self.down.add if down else self.down.discard)(host)

    def partition(self, *groups: Iterable[str]) -> None:
        """Split hosts into groups that cannot reach each other; unlisted hosts reach only unlisted hosts."""
        self._partition = {}
        for i, group in enumerate(groups, start=1):
            for host in group:
                if host in self._partition:
                    raise BadRequest(f"host {host} listed in two partition groups")
                self._partition[host] = i

    def heal(self) -> None:
        """Remove any partition."""
        self._partition = {}

    def can_reach(self, src: str, dst: str) -> bool:
        """True if a datagram from host ``src`` may reach host ``dst`` right now."""
        if src in self.down or dst in self.down:
            return False
        return self._partition.get(src, 0) == self._partition.get(dst, 0)

    # -- delivery -----------------------------------------------------------------

    def transmit(self, src: Address, dst: Address, data: bytes) -> None:
        """Schedule delivery of ``data`` (called by endpoints)."""
        self.counters["sent"] += 1
        if not self.can_reach(src[0], dst[0]) or (self.drop_rate and self.rng.random() < self.drop_rate):
            self.counters["dropped"] += 1
            return
        delay = max(0.0, self.latency + self.rng.uniform(-self.jitter, self.jitter))
        self.clock.callLater(delay, self._deliver, src, dst, data)

    def _deliver(self, src: Address, dst: Address, data: bytes) -> None:
        ep = self.endpoints.get(dst)
        if ep is None or ep.closed or ep.receiver is None or not self.can_reach(src[0], dst[0]):
            self.counters["dropped"] += 1
            return
        self.counters["delivered"] += 1
        ep.receiver(data, src)

    # -- driving the clock ----------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        """Advance the clock by ``seconds``, stopping at every scheduled call on the way."""
        end = self.clock.seconds() + seconds
        while True:
            calls = [c.getTime() for c in self.clock.getDelayedCalls()]
            if not calls or min(calls) > end:
                break
            nxt = min(calls)
            self.clock.advance(max(0.0, nxt - self.clock.seconds()))
        self.clock.advance(max(0.0, end - self.clock.seconds()))

    def run_until(self, d: Deferred, max_seconds: float = 600.0) -> Any:
        """Step the clock until ``d`` fires; return its result or raise its failure.

        Raises :class:`Timeout` if it has not fired after ``max_seconds`` of simulated time.
        """
        box: list[Any] = []
        d.addBoth(box.append)
        end = self.clock.seconds() + max_seconds
        while not box:
            calls = [c.getTime() for c in self.clock.getDelayedCalls()]
            if not calls or min(calls) > end:
                raise Timeout(f"deferred did not fire within {max_seconds:g} simulated seconds")
            self.clock.advance(max(0.0, min(calls) - self.clock.seconds()))
        result = box[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result
