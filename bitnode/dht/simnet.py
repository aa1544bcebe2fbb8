"""An in-memory datagram network for tests, driven by a ``twisted.internet.task.Clock``.

Endpoints get ``(host, port)`` addresses and exchange byte strings. Every
datagram is delivered after ``latency`` +/- ``jitter`` seconds (scheduled on the
clock), unless it is dropped: by the random ``drop_rate``, because either end is
down or closed, or because a partition separates the two hosts. All randomness
comes from the injected ``random.Random``, so a run is reproducible.

:meth:`SimNetwork.run_until` steps the clock from one scheduled call to the next
(an exact discrete-event simulation) until a Deferred fires.

:class:`SimClock` is a ``Clock`` that keeps its calls in a heap. Twisted's
``Clock`` re-sorts every pending call after each call it runs; with fifty nodes
(each with its timers and RPC timeouts) that sort dominates a simulation, so the
network tests use :class:`SimClock`. It behaves like ``Clock`` otherwise;
datagrams in flight on a SimClock are plain heap entries (:meth:`SimClock.call_soon`),
not ``DelayedCall`` s: they are never cancelled, and a large simulation sends millions.

Parsing: an endpoint may send a datagram together with the message it encodes
(:meth:`SimEndpoint.send_message`). With ``parse_every`` = N > 1 the network hands
that message to the receiver beside the bytes, so only one datagram in N is parsed
again (and compared with the message it carried: counters ``parse_checks`` and
``parse_mismatches``; the parsed one is delivered). The default, 1, parses every
datagram, as a real socket would.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from bitnode.dht import messages
from bitnode.errors import BadRequest, Conflict, Timeout

Address = tuple[str, int]
#: called with a datagram and its source, and (if the endpoint takes them) the message it encodes or None
Receiver = Callable[..., None]
_NO_KEYWORDS = MappingProxyType({})


class _HeapCall:
    """A call on :class:`SimClock`'s heap that nobody cancels or lists (see :meth:`SimClock.call_soon`)."""

    __slots__ = ("time", "func", "args")
    cancelled = called = False
    kw = _NO_KEYWORDS

    def __init__(self, time: float, func: Callable[..., object], args: tuple) -> None:
        self.time = time
        self.func = func
        self.args = args

    def getTime(self) -> float:  # noqa: N802 - as DelayedCall
        return self.time


class SimClock(Clock):
    """A ``twisted.internet.task.Clock`` with a heap of pending calls (O(log n) per call).

    ``getDelayedCalls()`` lists the pending calls in no particular order.
    """

    def __init__(self) -> None:
        # Clock.__init__ only creates the ``calls`` list, which this class replaces.
        self._pending: dict[int, DelayedCall] = {}
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._seq = itertools.count()

    @property
    def calls(self) -> list[DelayedCall]:  # type: ignore[override]
        """The pending calls (a snapshot)."""
        return list(self._pending.values())

    def getDelayedCalls(self) -> list[DelayedCall]:
        """See ``IReactorTime.getDelayedCalls``."""
        return self.calls

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> IDelayedCall:
        """Schedule ``callable`` in ``delay`` seconds of simulated time."""
        dc = DelayedCall(self.seconds() + delay, callable, args, kw, self._forget, self._push, self.seconds)
        self._pending[id(dc)] = dc
        self._push(dc)
        return dc

    def call_soon(self, delay: float, callable: Callable[..., object], *args: object) -> None:
        """Like :meth:`callLater` for a call that is never cancelled: cheaper, and not in ``getDelayedCalls``."""
        heapq.heappush(self._heap, (self.rightNow + delay, next(self._seq), _HeapCall(self.rightNow + delay,
                                                                                     callable, args)))

    def _forget(self, dc: DelayedCall) -> None:
        self._pending.pop(id(dc), None)

    def _push(self, dc: DelayedCall) -> None:
        # Also the DelayedCall's resetter: a call moved sooner gets a fresh entry, the old one goes stale.
        heapq.heappush(self._heap, (dc.getTime(), next(self._seq), dc))

    def next_time(self) -> float | None:
        """When the earliest pending call is due, or None if nothing is pending."""
        heap = self._heap
        while heap:
            when, _, dc = heap[0]
            if dc.cancelled or dc.called or dc.getTime() < when:
                heapq.heappop(heap)  # cancelled, run, or superseded by an earlier entry
            elif dc.getTime() > when:
                heapq.heapreplace(heap, (dc.getTime(), next(self._seq), dc))  # delayed
            else:
                return when
        return None

    def advance(self, amount: float) -> None:
        """Move time forward by ``amount`` and run every call that became due, in time order."""
        self.rightNow += amount
        while True:
            when = self.next_time()
            if when is None or when > self.rightNow:
                return
            _, _, dc = heapq.heappop(self._heap)
            if type(dc) is _HeapCall:
                dc.func(*dc.args)
                continue
            self._forget(dc)
            dc.called = 1
            dc.func(*dc.args, **dc.kw)


def same_message(a: messages.Message, b: messages.Message) -> bool:
    """Equal field by field, contacts included with their user text and layers (``Contact ==`` ignores them)."""
    contacts = [c.to_dict() for c in a.body.get("contacts", ())] if a.kind == messages.NODES else None
    return a == b and (contacts is None or contacts == [c.to_dict() for c in b.body.get("contacts", ())])


def next_call_time(clock: Clock) -> float | None:
    """When the earliest pending call of ``clock`` is due (fast for :class:`SimClock`)."""
    if isinstance(clock, SimClock):
        return clock.next_time()
    return min((c.getTime() for c in clock.getDelayedCalls()), default=None)


class SimEndpoint:
    """One bound address on a :class:`SimNetwork`; the simulated counterpart of a UDP port."""

    def __init__(self, network: SimNetwork, address: Address) -> None:
        self.network = network
        self.address = address
        self.receiver: Receiver | None = None
        self.takes_messages = False
        self.closed = False

    def set_receiver(self, receiver: Receiver, takes_messages: bool = False) -> None:
        """Who gets datagrams addressed to this endpoint: ``receiver(data, source)``.

        With ``takes_messages``, ``receiver(data, source, message)`` where message is what the sender said
        ``data`` encodes, or None when the receiver must parse ``data`` itself (see the module docstring).
        """
        self.receiver = receiver
        self.takes_messages = takes_messages

    def send(self, data: bytes, address: Address) -> None:
        """Send a datagram (fire and forget, like UDP)."""
        if self.closed:
            raise OSError("endpoint closed")
        self.network.transmit(self.address, address, data)

    def send_message(self, data: bytes, message: messages.Message, address: Address) -> None:
        """Send a datagram made by ``messages.encode(message)``; the receiver may take ``message`` as parsed."""
        if self.closed:
            raise OSError("endpoint closed")
        self.network.transmit(self.address, address, data, message)

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
        parse_every: int = 1,
    ) -> None:
        if parse_every < 1:
            raise BadRequest("parse_every must be >= 1")
        self.clock = clock
        self.rng = rng
        self.latency = latency
        self.jitter = jitter
        self.drop_rate = drop_rate
        self.parse_every = parse_every
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

    def transmit(self, src: Address, dst: Address, data: bytes, message: messages.Message | None = None) -> None:
        """Schedule delivery of ``data`` (called by endpoints), with the message it encodes if known."""
        self.counters["sent"] += 1
        if not self.can_reach(src[0], dst[0]) or (self.drop_rate and self.rng.random() < self.drop_rate):
            self.counters["dropped"] += 1
            return
        delay = max(0.0, self.latency + self.rng.uniform(-self.jitter, self.jitter))
        if isinstance(self.clock, SimClock):
            self.clock.call_soon(delay, self._deliver, src, dst, data, message)
        else:
            self.clock.callLater(delay, self._deliver, src, dst, data, message)

    def _deliver(self, src: Address, dst: Address, data: bytes, message: messages.Message | None) -> None:
        ep = self.endpoints.get(dst)
        if ep is None or ep.closed or ep.receiver is None or not self.can_reach(src[0], dst[0]):
            self.counters["dropped"] += 1
            return
        self.counters["delivered"] += 1
        if not ep.takes_messages:
            ep.receiver(data, src)
        elif message is None or self.parse_every == 1:
            ep.receiver(data, src, None)
        elif self.counters["delivered"] % self.parse_every:
            ep.receiver(data, src, message)
        else:
            ep.receiver(data, src, self._parse_and_compare(data, message))

    def _parse_and_compare(self, data: bytes, carried: messages.Message) -> messages.Message | None:
        """Parse ``data`` as a receiver would; count whether it gives the message it carried. Returns the parse."""
        self.counters["parse_checks"] += 1
        try:
            parsed = messages.decode(data)
        except messages.MalformedMessage:
            parsed = None
        if parsed is None or not same_message(parsed, carried):
            self.counters["parse_mismatches"] += 1
        return parsed

    # -- driving the clock ----------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        """Advance the clock by ``seconds``, stopping at every scheduled call on the way."""
        end = self.clock.seconds() + seconds
        while True:
            nxt = next_call_time(self.clock)
            if nxt is None or nxt > end:
                break
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
            nxt = next_call_time(self.clock)
            if nxt is None or nxt > end:
                raise Timeout(f"deferred did not fire within {max_seconds:g} simulated seconds")
            self.clock.advance(max(0.0, nxt - self.clock.seconds()))
        result = box[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result
